// Package inventory lists every KMS key of each (account, region), reads what
// the verdict needs, decides the verdict, and keeps the result as an
// immutable Snapshot refreshed in the background.
package inventory

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/arn"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/kms-exporter/kms_exporter/awsclient"
	"github.com/kms-exporter/kms_exporter/policy"
)

// KMS is the part of the KMS API the inventory calls; *kms.Client implements it.
type KMS interface {
	ListKeys(context.Context, *kms.ListKeysInput, ...func(*kms.Options)) (*kms.ListKeysOutput, error)
	ListAliases(context.Context, *kms.ListAliasesInput, ...func(*kms.Options)) (*kms.ListAliasesOutput, error)
	DescribeKey(context.Context, *kms.DescribeKeyInput, ...func(*kms.Options)) (*kms.DescribeKeyOutput, error)
	GetKeyRotationStatus(context.Context, *kms.GetKeyRotationStatusInput, ...func(*kms.Options)) (*kms.GetKeyRotationStatusOutput, error)
	ListResourceTags(context.Context, *kms.ListResourceTagsInput, ...func(*kms.Options)) (*kms.ListResourceTagsOutput, error)
}

// accountLearner is implemented by clients that label their metrics with the
// account id once the inventory has read it from an ARN.
type accountLearner interface {
	LearnAccountID(string)
}

// Target is one (account, region) to audit.
type Target struct {
	Role   awsclient.Role
	Region string
	API    KMS
}

// Auditor reads the keys of one target and decides their verdicts.
type Auditor struct {
	Policy policy.Policy
	// TagLabels are tag keys whose values are exposed as labels; keys are
	// then read for every customer-managed key.
	TagLabels []string
	// Workers is the number of keys audited at once per target (the requests
	// in flight are bounded again by the client factory).
	Workers int
	// Now returns the time verdicts are decided at.
	Now func() time.Time
}

// listError marks a failure of a listing call: the target as a whole failed.
type listError struct {
	op  string
	err error
}

func (e *listError) Error() string { return e.op + ": " + e.err.Error() }
func (e *listError) Unwrap() error { return e.err }

// Audit lists and audits every key of the target. An error means the target
// could not be listed; failures on single keys only make those keys unknown.
func (a *Auditor) Audit(ctx context.Context, t Target) (accountID string, keys []Key, err error) {
	listed, accountID, err := listKeys(ctx, t.API)
	if err != nil {
		return "", nil, &listError{"ListKeys", err}
	}
	aliases, aliasAccount, err := listAliases(ctx, t.API)
	if err != nil {
		return "", nil, &listError{"ListAliases", err}
	}
	if accountID == "" {
		accountID = aliasAccount
	}
	if accountID == "" {
		accountID = t.Role.AccountID()
	}
	if l, ok := t.API.(accountLearner); ok {
		l.LearnAccountID(accountID)
	}

	keys = make([]Key, len(listed))
	found := make([]bool, len(listed))
	work := make(chan int)
	var wg sync.WaitGroup
	for range max(1, min(a.Workers, len(listed))) {
		wg.Go(func() {
			for i := range work {
				k := Key{AccountID: accountID, Region: t.Region, ID: listed[i].id, ARN: listed[i].arn, Aliases: aliases[listed[i].id]}
				found[i] = a.auditKey(ctx, t.API, &k)
				keys[i] = k
			}
		})
	}
	for i := range listed {
		work <- i
	}
	close(work)
	wg.Wait()

	kept := keys[:0]
	for i := range keys {
		if found[i] {
			kept = append(kept, keys[i])
		}
	}
	sort.Slice(kept, func(i, j int) bool { return kept[i].ID < kept[j].ID })
	// A key listed twice (pages shifting while keys are created) is kept once.
	kept = slices.CompactFunc(kept, func(a, b Key) bool { return a.ID == b.ID })
	return accountID, kept, ctx.Err()
}

type listedKey struct{ id, arn string }

func listKeys(ctx context.Context, api KMS) ([]listedKey, string, error) {
	var out []listedKey
	account := ""
	p := kms.NewListKeysPaginator(api, &kms.ListKeysInput{Limit: aws.Int32(1000)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, "", err
		}
		for _, k := range page.Keys {
			out = append(out, listedKey{aws.ToString(k.KeyId), aws.ToString(k.KeyArn)})
			if account == "" {
				account = accountOf(aws.ToString(k.KeyArn))
			}
		}
	}
	return out, account, nil
}

// listAliases returns the sorted alias names per target key id.
func listAliases(ctx context.Context, api KMS) (map[string][]string, string, error) {
	out := map[string][]string{}
	account := ""
	p := kms.NewListAliasesPaginator(api, &kms.ListAliasesInput{Limit: aws.Int32(100)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, "", err
		}
		for _, al := range page.Aliases {
			if account == "" {
				account = accountOf(aws.ToString(al.AliasArn))
			}
			if id := aws.ToString(al.TargetKeyId); id != "" {
				out[id] = append(out[id], aws.ToString(al.AliasName))
			}
		}
	}
	for _, names := range out {
		sort.Strings(names)
	}
	return out, account, nil
}

func accountOf(s string) string {
	a, err := arn.Parse(s)
	if err != nil {
		return ""
	}
	return a.AccountID
}

// auditKey fills in one key. It returns false when the key no longer exists
// (deleted between ListKeys and DescribeKey).
func (a *Auditor) auditKey(ctx context.Context, api KMS, k *Key) bool {
	in := policy.Input{}
	defer func() { k.Verdict = policy.Decide(in, a.Policy, a.Now()) }()

	d, err := api.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(k.ID)})
	if err != nil {
		if isNotFound(err) {
			return false
		}
		in.DescribeError = awsclient.ErrorCode(err)
		return true
	}
	setMetadata(k, d.KeyMetadata)
	in.Meta = k.Meta

	if policy.NeedsRotationStatus(k.Meta) {
		r, err := api.GetKeyRotationStatus(ctx, &kms.GetKeyRotationStatusInput{KeyId: aws.String(k.ID)})
		switch {
		case isNotFound(err):
			return false
		case err != nil:
			in.RotationError = awsclient.ErrorCode(err)
		default:
			k.Rotation = &policy.Rotation{
				Enabled:      r.KeyRotationEnabled,
				PeriodDays:   aws.ToInt32(r.RotationPeriodInDays),
				NextRotation: aws.ToTime(r.NextRotationDate),
			}
			in.Rotation = k.Rotation
		}
	}

	needTags := policy.NeedsExemptionTags(k.Meta, k.Rotation, a.Policy)
	if needTags || (len(a.TagLabels) > 0 && k.Meta.KeyManager == policy.ManagerCustomer) {
		tags, err := listTags(ctx, api, k.ID)
		switch {
		case isNotFound(err):
			return false
		case err != nil:
			in.TagsError = awsclient.ErrorCode(err)
		default:
			in.Tags = tags
			k.Tags = tags
			if len(a.TagLabels) > 0 {
				k.TagValues = make([]string, len(a.TagLabels))
				for i, l := range a.TagLabels {
					k.TagValues[i] = tags[l]
				}
			}
		}
	}
	return true
}

func setMetadata(k *Key, m *types.KeyMetadata) {
	if m == nil {
		return
	}
	k.Meta = policy.Meta{
		KeyManager:       string(m.KeyManager),
		KeySpec:          string(m.KeySpec),
		KeyUsage:         string(m.KeyUsage),
		KeyState:         string(m.KeyState),
		Origin:           string(m.Origin),
		CustomKeyStoreID: aws.ToString(m.CustomKeyStoreId),
	}
	if k.Meta.Origin == "" {
		k.Meta.Origin = policy.OriginAWSKMS
	}
	if k.Meta.KeySpec == "" {
		k.Meta.KeySpec = string(m.CustomerMasterKeySpec) //nolint:staticcheck // older responses carry only this field
	}
	if arn := aws.ToString(m.Arn); arn != "" {
		k.ARN = arn
	}
	k.Description = aws.ToString(m.Description)
	k.CreationDate = aws.ToTime(m.CreationDate)
	k.DeletionDate = aws.ToTime(m.DeletionDate)
	if mrc := m.MultiRegionConfiguration; aws.ToBool(m.MultiRegion) && mrc != nil {
		k.MultiRegionType = string(mrc.MultiRegionKeyType)
		if mrc.PrimaryKey != nil {
			k.PrimaryARN = aws.ToString(mrc.PrimaryKey.Arn)
			k.PrimaryRegion = aws.ToString(mrc.PrimaryKey.Region)
		}
	}
}

func listTags(ctx context.Context, api KMS, keyID string) (map[string]string, error) {
	tags := map[string]string{}
	p := kms.NewListResourceTagsPaginator(api, &kms.ListResourceTagsInput{KeyId: aws.String(keyID), Limit: aws.Int32(50)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, err
		}
		for _, t := range page.Tags {
			tags[aws.ToString(t.TagKey)] = aws.ToString(t.TagValue)
		}
	}
	return tags, nil
}

func isNotFound(err error) bool {
	var nf *types.NotFoundException
	return errors.As(err, &nf)
}

// describeTargetError gives a short text for a failed target, without
// request ids or other noise.
func describeTargetError(err error) string {
	var le *listError
	if errors.As(err, &le) {
		return fmt.Sprintf("%s: %s", le.op, awsclient.ErrorCode(le.err))
	}
	return awsclient.ErrorCode(err)
}
