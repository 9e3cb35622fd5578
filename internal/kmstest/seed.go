package kmstest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
)

// SampleKey describes one key of the mixed sample inventory and the verdict
// the exporter must reach for it.
type SampleKey struct {
	Name   string // also its alias, alias/<Name>
	Status string
	Reason string
	create func(ctx context.Context, c *kms.Client, id string) error
	input  kms.CreateKeyInput
}

func symmetric() kms.CreateKeyInput { return kms.CreateKeyInput{} }

func tags(kv ...string) func(ctx context.Context, c *kms.Client, id string) error {
	return func(ctx context.Context, c *kms.Client, id string) error {
		var t []types.Tag
		for i := 0; i+1 < len(kv); i += 2 {
			t = append(t, types.Tag{TagKey: aws.String(kv[i]), TagValue: aws.String(kv[i+1])})
		}
		_, err := c.TagResource(ctx, &kms.TagResourceInput{KeyId: aws.String(id), Tags: t})
		return err
	}
}

func rotate(ctx context.Context, c *kms.Client, id string) error {
	_, err := c.EnableKeyRotation(ctx, &kms.EnableKeyRotationInput{KeyId: aws.String(id)})
	return err
}

func steps(fs ...func(ctx context.Context, c *kms.Client, id string) error) func(ctx context.Context, c *kms.Client, id string) error {
	return func(ctx context.Context, c *kms.Client, id string) error {
		for _, f := range fs {
			if err := f(ctx, c, id); err != nil {
				return err
			}
		}
		return nil
	}
}

// MixedInventory is the sample inventory of the demo and the integration
// tests: one key of every kind local-kms can create, with the verdict each must get.
var MixedInventory = []SampleKey{
	{Name: "payments", Status: "compliant", Reason: "rotation_enabled", input: symmetric(), create: rotate},
	{Name: "legacy-billing", Status: "noncompliant", Reason: "rotation_disabled", input: symmetric()},
	{Name: "vendor-appliance", Status: "exempt", Reason: "exemption_tag", input: symmetric(),
		create: tags("kms-rotation-exempt", "appliance cannot re-encrypt, ticket SEC-142", "kms-rotation-exempt-until", "2099-12-31")},
	{Name: "old-exemption", Status: "noncompliant", Reason: "exemption_expired", input: symmetric(),
		create: tags("kms-rotation-exempt", "migration window", "kms-rotation-exempt-until", "2024-01-31")},
	{Name: "rotating-with-exemption", Status: "compliant", Reason: "rotation_enabled", input: symmetric(),
		create: steps(rotate, tags("kms-rotation-exempt", "no longer needed"))},
	{Name: "signing-rsa", Status: "not_applicable", Reason: "asymmetric",
		input: kms.CreateKeyInput{KeySpec: types.KeySpecRsa2048, KeyUsage: types.KeyUsageTypeSignVerify}},
	{Name: "signing-ecc", Status: "not_applicable", Reason: "asymmetric",
		input: kms.CreateKeyInput{KeySpec: types.KeySpecEccNistP256, KeyUsage: types.KeyUsageTypeSignVerify}},
	{Name: "webhook-hmac", Status: "not_applicable", Reason: "hmac",
		input: kms.CreateKeyInput{KeySpec: types.KeySpecHmac256, KeyUsage: types.KeyUsageTypeGenerateVerifyMac}},
	{Name: "imported-material", Status: "not_applicable", Reason: "external_origin",
		input: kms.CreateKeyInput{Origin: types.OriginTypeExternal}},
	{Name: "disabled", Status: "not_applicable", Reason: "disabled", input: symmetric(),
		create: func(ctx context.Context, c *kms.Client, id string) error {
			_, err := c.DisableKey(ctx, &kms.DisableKeyInput{KeyId: aws.String(id)})
			return err
		}},
	{Name: "retired", Status: "not_applicable", Reason: "pending_deletion", input: symmetric(),
		create: steps(rotate, func(ctx context.Context, c *kms.Client, id string) error {
			_, err := c.ScheduleKeyDeletion(ctx, &kms.ScheduleKeyDeletionInput{KeyId: aws.String(id), PendingWindowInDays: aws.Int32(7)})
			return err
		})},
}

// SeedMixed creates MixedInventory and returns the key id of each sample by name.
func SeedMixed(ctx context.Context, c *kms.Client) (map[string]string, error) {
	ids := map[string]string{}
	for _, k := range MixedInventory {
		in := k.input
		in.Description = aws.String("kms_exporter sample: " + k.Name)
		out, err := c.CreateKey(ctx, &in)
		if err != nil {
			return nil, fmt.Errorf("creating sample key %s: %w", k.Name, err)
		}
		id := aws.ToString(out.KeyMetadata.KeyId)
		ids[k.Name] = id
		if _, err := c.CreateAlias(ctx, &kms.CreateAliasInput{AliasName: aws.String("alias/" + k.Name), TargetKeyId: &id}); err != nil {
			return nil, fmt.Errorf("aliasing sample key %s: %w", k.Name, err)
		}
		if k.create != nil {
			if err := k.create(ctx, c, id); err != nil {
				return nil, fmt.Errorf("preparing sample key %s: %w", k.Name, err)
			}
		}
	}
	return ids, nil
}

// SeedSymmetric creates n symmetric keys, rotation enabled on every other
// one, with workers requests at once, and returns their ids.
func SeedSymmetric(ctx context.Context, c *kms.Client, n, workers int) ([]string, error) {
	ids := make([]string, n)
	errs := make(chan error, workers)
	work := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := range work {
				out, err := c.CreateKey(ctx, &kms.CreateKeyInput{})
				if err == nil {
					ids[i] = aws.ToString(out.KeyMetadata.KeyId)
					if i%2 == 0 {
						err = rotate(ctx, c, ids[i])
					}
				}
				if err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		})
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errs:
		return nil, fmt.Errorf("seeding %d keys: %w", n, err)
	default:
		return ids, nil
	}
}

// StartMixedT starts local-kms for a test, seeded with MixedInventory, and
// returns it with the sample key ids by name.
func StartMixedT(t testing.TB, region string) (*Server, map[string]string) {
	t.Helper()
	s := StartT(t, Options{Region: region})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ids, err := SeedMixed(ctx, s.Client())
	if err != nil {
		t.Fatal(err)
	}
	return s, ids
}
