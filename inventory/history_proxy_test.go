package inventory_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/kms-exporter/kms_exporter/awsclient"
	"github.com/kms-exporter/kms_exporter/internal/harness"
	"github.com/kms-exporter/kms_exporter/internal/kmstest"
	"github.com/kms-exporter/kms_exporter/inventory"
	"github.com/kms-exporter/kms_exporter/model"
	"github.com/kms-exporter/kms_exporter/policy"
)

// historyRefresher audits one region of the KMS at url, every key at every
// refresh (Resync 0), on the clock given.
func historyRefresher(url, region string, now func() time.Time) *inventory.Refresher {
	f := awsclient.NewFactory(aws.Config{Region: region, BaseEndpoint: aws.String(url),
		Credentials: credentials.NewStaticCredentialsProvider("test", "test", "")},
		awsclient.Options{MaxConcurrency: 8, MaxAttempts: 3, Timeout: 5 * time.Second})
	a := &inventory.Auditor{Policy: policy.Policy{MaxRotationPeriodDays: 365, ExemptionTag: "kms-rotation-exempt"}, Workers: 4, Now: now}
	return inventory.NewRefresher(inventory.StaticTargets{{Region: region, API: f.KMS(awsclient.Role{}, region)}}, a,
		slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
}

func historyCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// TestHistoryThroughProxy: the inventory reads a key's rotation history
// through the proxy (which answers ListKeyRotations as AWS does) on first
// sight, and again only where it can have changed: not at a plain re-read;
// after on-demand rotations (DescribeKey's CurrentKeyMaterialId changed);
// after the automatic rotation (its date passed, the material changed); when
// an event says the key rotated (MarkRotated). Each time the published
// History follows: counts by type, the last rotation and its type; keys out
// of scope are never asked.
func TestHistoryThroughProxy(t *testing.T) {
	const region = "eu-west-1"
	ctx := historyCtx(t)
	srv := kmstest.StartT(t, kmstest.Options{Region: region})
	proxy := kmstest.NewProxy(t, srv.URL)
	start := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	clk := harness.NewClock(start) // the proxy, the auditor and the test share it
	proxy.SetClock(clk.Now)
	c := kmstest.Client(proxy.URL, region)
	create := func(in kms.CreateKeyInput) string {
		out, err := c.CreateKey(ctx, &in)
		if err != nil {
			t.Fatal(err)
		}
		return aws.ToString(out.KeyMetadata.KeyId)
	}
	id := create(kms.CreateKeyInput{})
	if _, err := c.EnableKeyRotation(ctx, &kms.EnableKeyRotationInput{KeyId: &id, RotationPeriodInDays: aws.Int32(90)}); err != nil {
		t.Fatal(err)
	}
	create(kms.CreateKeyInput{KeySpec: types.KeySpecRsa2048, KeyUsage: types.KeyUsageTypeSignVerify})
	disabled := create(kms.CreateKeyInput{})
	if _, err := c.DisableKey(ctx, &kms.DisableKeyInput{KeyId: &disabled}); err != nil {
		t.Fatal(err)
	}

	r := historyRefresher(proxy.URL, region, clk.Now)
	lists := proxy.Calls("ListKeyRotations")
	// refresh refreshes at the clock's time and returns the key as
	// published and the ListKeyRotations calls it made.
	refresh := func(step string) (*model.Key, int) {
		t.Helper()
		s := r.Refresh(ctx)
		if st := s.Targets[0]; !st.Success || len(st.Keys) != 3 {
			t.Fatalf("%s: success %v, %d keys (%s)", step, st.Success, len(st.Keys), st.Error)
		}
		_, k := s.Locate(kmstest.DefaultAccount, region, id)
		n := proxy.Calls("ListKeyRotations") - lists
		lists += n
		if k.RotationHistory() == nil {
			t.Fatalf("%s: no rotation history published (%+v)", step, k.History)
		}
		return k, n
	}
	expect := func(step string, k *model.Key, calls, wantCalls int, automatic, onDemand int32, last time.Time, lastType string) {
		t.Helper()
		h := k.RotationHistory()
		if calls != wantCalls {
			t.Errorf("%s: %d ListKeyRotations calls, want %d", step, calls, wantCalls)
		}
		if h.Automatic != automatic || h.OnDemand != onDemand || !h.LastRotation.Equal(last) || h.LastType != lastType {
			t.Errorf("%s: history %d automatic, %d on demand, last %s (%s); want %d, %d, %s (%s)", step,
				h.Automatic, h.OnDemand, h.LastRotation, h.LastType, automatic, onDemand, last, lastType)
		}
	}

	k, n := refresh("first sight")
	expect("first sight", k, n, 1, 0, 0, time.Time{}, "") // the RSA and the disabled key are not asked
	material := k.RotationHistory().Material
	if material == 0 {
		t.Errorf("history read without the CurrentKeyMaterialId the proxy reports (material %x)", material)
	}

	clk.Add(time.Minute)
	describes := proxy.Calls("DescribeKey")
	k, n = refresh("plain re-read")
	expect("plain re-read", k, n, 0, 0, 0, time.Time{}, "")
	if proxy.Calls("DescribeKey") == describes {
		t.Error("the plain re-read did not re-read the key")
	}

	var onDemandAt time.Time
	for range 2 {
		clk.Add(3 * 24 * time.Hour)
		if _, err := c.RotateKeyOnDemand(ctx, &kms.RotateKeyOnDemandInput{KeyId: &id}); err != nil {
			t.Fatal(err)
		}
		onDemandAt = clk.Now()
	}
	clk.Add(time.Minute)
	k, n = refresh("after two on-demand rotations")
	expect("after two on-demand rotations", k, n, 1, 0, 2, onDemandAt, policy.RotationOnDemand)
	if h := k.RotationHistory(); h.Material == material || h.OnDemandLeft() != policy.MaxOnDemandRotations-2 {
		t.Errorf("after on-demand rotations: material %x (was %x), %d on-demand rotations left", h.Material, material, h.OnDemandLeft())
	}

	clk.Add(time.Minute)
	k, n = refresh("plain re-read after the rotations")
	expect("plain re-read after the rotations", k, n, 0, 0, 2, onDemandAt, policy.RotationOnDemand)

	// Past the automatic rotation date, 90 days after rotation was enabled.
	clk.Add(90 * 24 * time.Hour)
	k, n = refresh("after the automatic rotation")
	expect("after the automatic rotation", k, n, 1, 1, 2, start.Add(90*24*time.Hour), policy.RotationAutomatic)
	if next := k.Rotation.NextRotation; !next.Equal(start.Add(180 * 24 * time.Hour)) {
		t.Errorf("next rotation %s, want a period after the last (%s)", next, start.Add(180*24*time.Hour))
	}

	clk.Add(time.Minute)
	k, n = refresh("plain re-read after the automatic rotation")
	expect("plain re-read after the automatic rotation", k, n, 0, 1, 2, start.Add(90*24*time.Hour), policy.RotationAutomatic)

	// An event says the key rotated: its history is read again, at once.
	runAndMarkRotated(t, ctx, r, model.KeyRef{AccountID: kmstest.DefaultAccount, Region: region, KeyID: id})
	// Run's own refresh is a plain re-read; the mark's read asks once.
	if n := proxy.Calls("ListKeyRotations") - lists; n != 1 {
		t.Errorf("a refresh and a read marked rotated: %d ListKeyRotations calls, want 1", n)
	}
}
