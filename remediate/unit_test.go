package remediate

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/kms-exporter/kms_exporter/model"
	"github.com/kms-exporter/kms_exporter/policy"
)

// fakeInventory serves a fixed snapshot and counts publications.
type fakeInventory struct {
	snap      *model.Snapshot
	published int
}

func (f *fakeInventory) Snapshot() *model.Snapshot { return f.snap }
func (f *fakeInventory) ApplyRotationChanges(cs ...model.RotationChange) *model.Snapshot {
	f.published++
	for _, c := range cs {
		for _, t := range f.snap.Targets {
			for i := range t.Keys {
				if t.Keys[i].ID == c.KeyID {
					t.Keys[i].Verdict = policy.Verdict{Status: policy.Compliant, Reason: policy.ReasonRotationEnabled}
				}
			}
		}
	}
	return f.snap
}

// fakeKMS enables rotation on request.
type fakeKMS struct{ enabled map[string]int32 }

func (f *fakeKMS) EnableKeyRotation(_ context.Context, in *kms.EnableKeyRotationInput, _ ...func(*kms.Options)) (*kms.EnableKeyRotationOutput, error) {
	f.enabled[*in.KeyId] = *in.RotationPeriodInDays
	return &kms.EnableKeyRotationOutput{}, nil
}

func (f *fakeKMS) GetKeyRotationStatus(_ context.Context, in *kms.GetKeyRotationStatusInput, _ ...func(*kms.Options)) (*kms.GetKeyRotationStatusOutput, error) {
	p, ok := f.enabled[*in.KeyId]
	return &kms.GetKeyRotationStatusOutput{KeyRotationEnabled: ok, RotationPeriodInDays: aws.Int32(p)}, nil
}

func noncompliant(id string) model.Key {
	return model.Key{AccountID: "444455556666", Region: "eu-west-1", ID: id,
		Meta:    policy.Meta{KeyManager: "CUSTOMER", KeySpec: "SYMMETRIC_DEFAULT", KeyState: "Enabled", Origin: "AWS_KMS"},
		Verdict: policy.Verdict{Status: policy.Noncompliant, Reason: policy.ReasonRotationDisabled}}
}

func TestAssumedRoleAndBulkPublishOnce(t *testing.T) {
	role := "arn:aws:iam::444455556666:role/kms-audit"
	inv := &fakeInventory{snap: &model.Snapshot{Targets: []*model.TargetState{{
		AccountID: "444455556666", Region: "eu-west-1", RoleARN: role, Success: true,
		Keys: []model.Key{
			noncompliant("11111111-1111-4111-8111-111111111111"),
			noncompliant("22222222-2222-4222-8222-222222222222"),
			noncompliant("33333333-3333-4333-8333-333333333333"),
		},
	}}}}
	api := &fakeKMS{enabled: map[string]int32{}}
	var roles []string
	r := &Remediator{
		Inventory: inv,
		Client:    func(ro, _ string) KMS { roles = append(roles, ro); return api },
		Policy:    policy.Policy{MaxRotationPeriodDays: 365},
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
		Now:       time.Now,
	}
	results, err := r.RemediateAll(context.Background(), Selector{}, "test")
	if err != nil || len(results) != 3 {
		t.Fatalf("%d results, %v", len(results), err)
	}
	for _, res := range results {
		if res.Outcome != OutcomeEnabled || res.Verdict != "compliant" {
			t.Errorf("%s: %s %s (%s)", res.KeyID, res.Outcome, res.Verdict, res.Reason)
		}
	}
	if inv.published != 1 {
		t.Errorf("published %d snapshots for one bulk request, want 1", inv.published)
	}
	for _, ro := range roles {
		if ro != role {
			t.Errorf("client asked for role %q, want the target's %q", ro, role)
		}
	}
	if len(api.enabled) != 3 || api.enabled["11111111-1111-4111-8111-111111111111"] != 365 {
		t.Errorf("EnableKeyRotation calls: %v", api.enabled)
	}
}

// TestEnableKeyRotationRateLimited: a bulk remediation paces its
// EnableKeyRotation calls per account and region (a lower bound on time,
// which a slow machine cannot break).
func TestEnableKeyRotationRateLimited(t *testing.T) {
	var keys []model.Key
	for i := range 6 {
		keys = append(keys, noncompliant(fmt.Sprintf("%08d-1111-4111-8111-111111111111", i)))
	}
	inv := &fakeInventory{snap: &model.Snapshot{Targets: []*model.TargetState{{
		AccountID: "444455556666", Region: "eu-west-1", Success: true, Keys: keys}}}}
	api := &fakeKMS{enabled: map[string]int32{}}
	r := &Remediator{Inventory: inv, Client: func(string, string) KMS { return api },
		Policy: policy.Policy{MaxRotationPeriodDays: 365}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Now: time.Now, EnablesPerSecond: 10}
	start := time.Now()
	results, err := r.RemediateAll(context.Background(), Selector{}, "test")
	if err != nil || len(results) != 6 || len(api.enabled) != 6 {
		t.Fatalf("%d results, %d enabled, %v", len(results), len(api.enabled), err)
	}
	// One at once, then 5 more at 10/s: at least 0.5 s.
	if took := time.Since(start); took < 450*time.Millisecond {
		t.Errorf("6 enables at 10/s took %s", took)
	}
}
