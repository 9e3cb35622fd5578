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
	"github.com/kms-exporter/kms_exporter/internal/kmstest"
	"github.com/kms-exporter/kms_exporter/inventory"
	"github.com/kms-exporter/kms_exporter/model"
	"github.com/kms-exporter/kms_exporter/policy"
)

// TestHistoryOnMoto is the second check of the rotation history, on moto, an
// emulator independent of the proxy: a symmetric key rotated on demand three
// times is published with three on-demand rotations, none automatic, the
// last at the date moto lists. Where moto differs from AWS
// (docs/aws-semantics.md, "Where local-kms and moto differ from AWS") the
// exporter follows AWS:
//   - moto rotates asymmetric and disabled keys on demand (AWS refuses):
//     keys out of scope have no history and are never asked for one;
//   - moto allows a 26th on-demand rotation (AWS: LimitExceededException):
//     the rotations left are 0, never fewer;
//   - moto's entries lack KeyMaterialId and KeyMaterialState, its
//     DescribeKey CurrentKeyMaterialId, and its GetKeyRotationStatus the
//     next rotation date: a plain re-read does not ask for the history again
//     (on AWS, the material id changing would), and the event AWS sends for
//     a rotation (MarkRotated) does.
func TestHistoryOnMoto(t *testing.T) {
	const region = "eu-west-1"
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	m := kmstest.StartMoto(t)
	c := kms.New(kms.Options{Region: region, BaseEndpoint: aws.String(m.URL),
		Credentials: credentials.NewStaticCredentialsProvider("test", "test", "")})
	create := func(in kms.CreateKeyInput) string {
		out, err := c.CreateKey(ctx, &in)
		if err != nil {
			t.Fatal(err)
		}
		return aws.ToString(out.KeyMetadata.KeyId)
	}
	rotate := func(id string, times int) {
		for range times {
			if _, err := c.RotateKeyOnDemand(ctx, &kms.RotateKeyOnDemandInput{KeyId: aws.String(id)}); err != nil {
				t.Fatalf("RotateKeyOnDemand %s on moto: %v", id, err)
			}
		}
	}
	id := create(kms.CreateKeyInput{KeyUsage: types.KeyUsageTypeEncryptDecrypt})
	if _, err := c.EnableKeyRotation(ctx, &kms.EnableKeyRotationInput{KeyId: &id}); err != nil {
		t.Fatal(err)
	}
	rotate(id, 3)
	asymmetric := create(kms.CreateKeyInput{KeySpec: types.KeySpecRsa2048, KeyUsage: types.KeyUsageTypeSignVerify})
	rotate(asymmetric, 2)
	disabled := create(kms.CreateKeyInput{KeyUsage: types.KeyUsageTypeEncryptDecrypt})
	if _, err := c.DisableKey(ctx, &kms.DisableKeyInput{KeyId: &disabled}); err != nil {
		t.Fatal(err)
	}
	rotate(disabled, 1)
	spent := create(kms.CreateKeyInput{KeyUsage: types.KeyUsageTypeEncryptDecrypt})
	rotate(spent, policy.MaxOnDemandRotations+1)

	// The last rotation as moto lists it.
	listed, err := c.ListKeyRotations(ctx, &kms.ListKeyRotationsInput{KeyId: &id})
	if err != nil || len(listed.Rotations) != 3 {
		t.Fatalf("moto lists %+v, %v; want 3 rotations", listed, err)
	}
	last := aws.ToTime(listed.Rotations[2].RotationDate)

	f := awsclient.NewFactory(aws.Config{Region: region, BaseEndpoint: aws.String(m.URL),
		Credentials: credentials.NewStaticCredentialsProvider("test", "test", "")},
		awsclient.Options{MaxConcurrency: 8, MaxAttempts: 3, Timeout: 10 * time.Second})
	a := &inventory.Auditor{Policy: policy.Policy{MaxRotationPeriodDays: 365, ExemptionTag: "kms-rotation-exempt"}, Workers: 4, Now: time.Now}
	r := inventory.NewRefresher(inventory.StaticTargets{{Region: region, API: f.KMS(awsclient.Role{}, region)}}, a, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	lists := func() int { return f.Counts()["ListKeyRotations"] }
	keyOf := func(s *model.Snapshot, key string) *model.Key {
		t.Helper()
		_, k := s.Locate("", region, key)
		if k == nil {
			t.Fatalf("key %s not published", key)
		}
		return k
	}

	s := r.Refresh(ctx)
	if st := s.Targets[0]; !st.Success {
		t.Fatalf("refresh of moto failed: %s", st.Error)
	}
	k := keyOf(s, id)
	h := k.RotationHistory()
	if h == nil || h.OnDemand != 3 || h.Automatic != 0 || !h.LastRotation.Equal(last) || h.LastType != policy.RotationOnDemand {
		t.Fatalf("published history %+v (%+v), want 3 on demand, none automatic, last at %s", h, k.History, last)
	}
	if since := time.Since(h.LastRotation); since < 0 || since > time.Minute {
		t.Errorf("last rotation %s, %s ago; want the minute the test rotated the key", h.LastRotation, since)
	}
	if h.Material != 0 {
		t.Errorf("material %x read from moto, which reports no material id", h.Material)
	}
	for _, key := range []string{asymmetric, disabled} {
		if k := keyOf(s, key); k.History != nil || k.Verdict.Get().Status != policy.NotApplicable {
			t.Errorf("key %s out of scope, rotated on moto: verdict %s, history %+v; want not_applicable and none", key, k.Verdict.Get().Status, k.History)
		}
	}
	if h := keyOf(s, spent).RotationHistory(); h == nil {
		t.Errorf("key rotated %d times on moto: no history", policy.MaxOnDemandRotations+1)
	} else if h.OnDemand != policy.MaxOnDemandRotations+1 || h.OnDemandLeft() != 0 {
		t.Errorf("key rotated %d times on moto: history %+v, %d left; want them counted and 0 left", policy.MaxOnDemandRotations+1, h, h.OnDemandLeft())
	}
	// Asked for the two keys in scope only.
	if n := lists(); n != 2 {
		t.Errorf("%d ListKeyRotations calls on first sight, want 2 (the keys in scope)", n)
	}

	rotate(id, 1)
	s = r.Refresh(ctx)
	if h := keyOf(s, id).RotationHistory(); h == nil || h.OnDemand != 3 || lists() != 2 {
		t.Errorf("a plain re-read: history %+v, %d ListKeyRotations calls; want the history as read, no call", h, lists())
	}

	// The rotation's event (KMS CMK Rotation, RotateKeyOnDemand) reaches the
	// exporter: the history is read again.
	runAndMarkRotated(t, ctx, r, model.KeyRef{AccountID: k.AccountID, Region: region, KeyID: id})
	if h := keyOf(r.Snapshot(), id).RotationHistory(); h == nil || h.OnDemand != 4 || lists() != 3 {
		t.Errorf("marked rotated: history %+v, %d ListKeyRotations calls; want 4 on demand, one more call", h, lists())
	}
}
