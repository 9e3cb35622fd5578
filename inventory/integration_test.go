package inventory_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync/atomic"
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

var testPolicy = policy.Policy{MaxRotationPeriodDays: 365, ExemptionTag: "kms-rotation-exempt"}

func testConfig(url string) aws.Config {
	return aws.Config{
		Region:       "eu-west-1",
		BaseEndpoint: aws.String(url),
		Credentials:  credentials.NewStaticCredentialsProvider("test", "test", ""),
	}
}

func newFactory(url string) *awsclient.Factory {
	return awsclient.NewFactory(testConfig(url), awsclient.Options{MaxConcurrency: 8, MaxAttempts: 3, Timeout: 5 * time.Second})
}

func newAuditor() *inventory.Auditor {
	return &inventory.Auditor{Policy: testPolicy, Workers: 8, Now: time.Now}
}

// counted is a publisher that counts the snapshots it is handed.
type counted struct {
	*model.Latest
	n atomic.Int32
}

func newCounted() *counted { return &counted{Latest: model.NewLatest(nil)} }

func (c *counted) Publish(s *model.Snapshot) { c.n.Add(1); c.Latest.Publish(s) }

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// TestMixedInventoryVerdicts checks the verdict of every kind of key local-kms can create.
func TestMixedInventoryVerdicts(t *testing.T) {
	ctx := ctxT(t)
	srv, ids := kmstest.StartMixedT(t, "eu-west-1")
	f := newFactory(srv.URL)
	account, keys, err := newAuditor().Audit(ctx, inventory.Target{Region: "eu-west-1", API: f.KMS(awsclient.Role{}, "eu-west-1")})
	if err != nil {
		t.Fatalf("Audit: %v", err)
	}
	if account != kmstest.DefaultAccount {
		t.Errorf("account id learnt from the ARNs = %q, want %q", account, kmstest.DefaultAccount)
	}
	if got := f.KMS(awsclient.Role{}, "eu-west-1").AccountID(); got != kmstest.DefaultAccount {
		t.Errorf("client account id = %q", got)
	}
	if len(keys) != len(kmstest.MixedInventory) {
		t.Errorf("audited %d keys, want %d", len(keys), len(kmstest.MixedInventory))
	}
	byID := map[string]*model.Key{}
	for _, k := range keys {
		byID[k.ID] = k
	}
	for _, want := range kmstest.MixedInventory {
		k, ok := byID[ids[want.Name]]
		if !ok {
			t.Errorf("%s: not in the inventory", want.Name)
			continue
		}
		if string(k.Verdict.Get().Status) != want.Status || k.Verdict.Get().Reason != want.Reason {
			t.Errorf("%s: verdict %s/%s, want %s/%s", want.Name, k.Verdict.Get().Status, k.Verdict.Get().Reason, want.Status, want.Reason)
		}
		if len(k.Aliases) != 1 || k.Aliases[0] != "alias/"+want.Name {
			t.Errorf("%s: aliases %v", want.Name, k.Aliases)
		}
		if k.CreationDate.IsZero() {
			t.Errorf("%s: no creation date", want.Name)
		}
	}
	if k := byID[ids["retired"]]; k.DeletionDate == nil {
		t.Error("pending-deletion key without deletion date")
	}
	if k := byID[ids["vendor-appliance"]]; k.Verdict.Get().ExemptionReason == "" || k.Verdict.Get().ExemptionExpiry.IsZero() {
		t.Errorf("exempt key without exemption details: %+v", k.Verdict.Get())
	}

	// Only the calls the verdicts need: no rotation status for keys that
	// cannot rotate, tags only where the verdict depends on them.
	counts := f.Counts()
	wantStatus := 0
	wantTags := 0
	for _, s := range kmstest.MixedInventory {
		switch s.Reason {
		case "rotation_enabled":
			wantStatus++
		case "rotation_disabled", "exemption_tag", "exemption_expired":
			wantStatus++
			wantTags++
		}
	}
	if counts["GetKeyRotationStatus"] != wantStatus || counts["ListResourceTags"] != wantTags ||
		counts["DescribeKey"] != len(kmstest.MixedInventory) || counts["ListKeys"] != 1 || counts["ListAliases"] != 1 {
		t.Errorf("API calls %v, want GetKeyRotationStatus=%d ListResourceTags=%d DescribeKey=%d ListKeys=1 ListAliases=1",
			counts, wantStatus, wantTags, len(kmstest.MixedInventory))
	}
}

// TestPaginationPastOneThousandKeys lists more keys than one ListKeys page holds.
func TestPaginationPastOneThousandKeys(t *testing.T) {
	if testing.Short() {
		t.Skip("seeds 1,050 keys")
	}
	ctx := ctxT(t)
	srv := kmstest.StartT(t, kmstest.Options{Region: "eu-west-1"})
	const n = 1050
	if _, err := kmstest.SeedSymmetric(ctx, srv.Client(), n, 8); err != nil {
		t.Fatal(err)
	}
	f := newFactory(srv.URL)
	_, keys, err := newAuditor().Audit(ctx, inventory.Target{Region: "eu-west-1", API: f.KMS(awsclient.Role{}, "eu-west-1")})
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != n {
		t.Fatalf("audited %d keys, want %d", len(keys), n)
	}
	if c := f.Counts()["ListKeys"]; c != 2 {
		t.Errorf("ListKeys pages = %d, want 2 (Limit 1000)", c)
	}
	seen := map[string]bool{}
	compliant := 0
	for _, k := range keys {
		if seen[k.ID] {
			t.Fatalf("key %s listed twice", k.ID)
		}
		seen[k.ID] = true
		if k.Verdict.Get().Status == policy.Compliant {
			compliant++
		}
	}
	if compliant != n/2 {
		t.Errorf("%d compliant keys, want %d", compliant, n/2)
	}
}

// TestRotationChangeSeenOnNextRefresh enables rotation between two refreshes.
func TestRotationChangeSeenOnNextRefresh(t *testing.T) {
	ctx := ctxT(t)
	srv, ids := kmstest.StartMixedT(t, "eu-west-1")
	f := newFactory(srv.URL)
	r := inventory.NewRefresher(inventory.StaticTargets{{Region: "eu-west-1", API: f.KMS(awsclient.Role{}, "eu-west-1")}}, newAuditor(), discard(), nil)
	id := ids["legacy-billing"]
	if _, k := r.Refresh(ctx).Locate("", "eu-west-1", id); k == nil || k.Verdict.Get().Status != policy.Noncompliant {
		t.Fatalf("before: %+v", k)
	}
	if _, err := srv.Client().EnableKeyRotation(ctx, &kms.EnableKeyRotationInput{KeyId: aws.String(id)}); err != nil {
		t.Fatal(err)
	}
	if _, k := r.Snapshot().Locate("", "eu-west-1", id); k.Verdict.Get().Status != policy.Noncompliant {
		t.Fatalf("the published snapshot changed without a refresh: %s", k.Verdict.Get().Status)
	}
	_, k := r.Refresh(ctx).Locate(kmstest.DefaultAccount, "eu-west-1", id)
	if k == nil || k.Verdict.Get().Status != policy.Compliant || k.Rotation == nil || !k.Rotation.Enabled {
		t.Fatalf("after: %+v", k)
	}
}

// TestUnchangedKeysAreShared: a key read the same as at the last refresh is
// the same *model.Key (what makes a refresh of an unchanged inventory cost
// no new snapshot memory, and lets the exposition reuse its encoding); a
// changed key, and only it, is new.
func TestUnchangedKeysAreShared(t *testing.T) {
	ctx := ctxT(t)
	srv, ids := kmstest.StartMixedT(t, "eu-west-1")
	f := newFactory(srv.URL)
	r := inventory.NewRefresher(inventory.StaticTargets{{Region: "eu-west-1", API: f.KMS(awsclient.Role{}, "eu-west-1")}}, newAuditor(), discard(), nil)
	first := r.Refresh(ctx).Targets[0].Keys
	second := r.Refresh(ctx).Targets[0].Keys
	if len(first) != len(kmstest.MixedInventory) || len(second) != len(first) {
		t.Fatalf("%d then %d keys, want %d", len(first), len(second), len(kmstest.MixedInventory))
	}
	for i := range first {
		if first[i] != second[i] {
			t.Errorf("key %s read the same is a new *model.Key", first[i].ID)
		}
	}
	id := ids["legacy-billing"]
	if _, err := srv.Client().EnableKeyRotation(ctx, &kms.EnableKeyRotationInput{KeyId: aws.String(id)}); err != nil {
		t.Fatal(err)
	}
	third := r.Refresh(ctx).Targets[0].Keys
	for i := range second {
		changed := second[i].ID == id
		if (third[i] != second[i]) != changed {
			t.Errorf("key %s: new *model.Key = %v, want %v", second[i].ID, third[i] != second[i], changed)
		}
		if changed && (second[i].Verdict.Get().Status != policy.Noncompliant || third[i].Verdict.Get().Status != policy.Compliant) {
			t.Errorf("changed key: %s then %s", second[i].Verdict.Get().Status, third[i].Verdict.Get().Status)
		}
	}
}

// TestFailingRegionKeepsOthers stops one region's emulator: the other region
// keeps fresh data and the failed one keeps its last good keys.
func TestFailingRegionKeepsOthers(t *testing.T) {
	ctx := ctxT(t)
	west, _ := kmstest.StartMixedT(t, "eu-west-1")
	east := kmstest.StartT(t, kmstest.Options{Region: "us-east-1"})
	if _, err := kmstest.SeedSymmetric(ctx, east.Client(), 4, 2); err != nil {
		t.Fatal(err)
	}
	targets := inventory.StaticTargets{
		{Region: "eu-west-1", API: newFactory(west.URL).KMS(awsclient.Role{}, "eu-west-1")},
		{Region: "us-east-1", API: newFactory(east.URL).KMS(awsclient.Role{}, "us-east-1")},
	}
	r := inventory.NewRefresher(targets, newAuditor(), discard(), nil)
	first := r.Refresh(ctx)
	for _, st := range first.Targets {
		if !st.Success {
			t.Fatalf("first refresh of %s failed: %s", st.Region, st.Error)
		}
	}
	east.Close()
	second := r.Refresh(ctx)
	if len(second.Targets) != 2 {
		t.Fatalf("targets after failure: %d", len(second.Targets))
	}
	// Targets are sorted by account, then region: eu-west-1 first.
	for i, st := range second.Targets {
		switch st.Region {
		case "us-east-1":
			if st.Success || st.Error == "" {
				t.Errorf("stopped region reported success")
			}
			if len(st.Keys) != 4 || !st.LastSuccess.Equal(first.Targets[i].LastSuccess) {
				t.Errorf("stopped region lost its last good data: %d keys, last success %v", len(st.Keys), st.LastSuccess)
			}
			if st.AccountID != kmstest.DefaultAccount {
				t.Errorf("stopped region lost its account id: %q", st.AccountID)
			}
		case "eu-west-1":
			if !st.Success || len(st.Keys) != len(kmstest.MixedInventory) || !st.LastSuccess.After(first.Targets[i].LastSuccess) {
				t.Errorf("healthy region: success=%v keys=%d", st.Success, len(st.Keys))
			}
		}
	}
}

// TestAWSOnlyBehaviour covers what local-kms cannot show, through the proxy
// that makes it answer as AWS does.
func TestAWSOnlyBehaviour(t *testing.T) {
	ctx := ctxT(t)
	srv, ids := kmstest.StartMixedT(t, "eu-west-1")
	proxy := kmstest.NewProxy(t, srv.URL)
	c := kmstest.Client(proxy.URL, "eu-west-1")
	long, err := c.CreateKey(ctx, &kms.CreateKeyInput{})
	if err != nil {
		t.Fatal(err)
	}
	longID := aws.ToString(long.KeyMetadata.KeyId)
	if _, err := c.EnableKeyRotation(ctx, &kms.EnableKeyRotationInput{KeyId: &longID, RotationPeriodInDays: aws.Int32(730)}); err != nil {
		t.Fatal(err)
	}
	const (
		managed       = "0b1f5c7e-aaaa-4bbb-8ccc-000000000001"
		managedDenied = "0b1f5c7e-aaaa-4bbb-8ccc-000000000002"
		replica       = "mrk-1234abcd12ab34cd56ef1234567890ab"
	)
	proxy.AddFake(kmstest.AWSManagedKey("eu-west-1", kmstest.DefaultAccount, managed, "s3"))
	denied := kmstest.AWSManagedKey("eu-west-1", kmstest.DefaultAccount, managedDenied, "backup")
	denied.RotationError = "AccessDeniedException"
	proxy.AddFake(denied)
	proxy.AddFake(kmstest.MultiRegionKey("eu-west-1", "us-east-1", kmstest.DefaultAccount, replica, false))
	// AccessDenied on one key's status; two throttles on another's description.
	proxy.AddFault(&kmstest.Fault{Op: "GetKeyRotationStatus", KeyID: ids["payments"], Code: "AccessDeniedException"})
	proxy.AddFault(&kmstest.Fault{Op: "DescribeKey", KeyID: ids["legacy-billing"], Code: "ThrottlingException", Times: 2})
	// Throttled past every attempt: unknown, never noncompliant.
	proxy.AddFault(&kmstest.Fault{Op: "GetKeyRotationStatus", KeyID: ids["old-exemption"], Code: "ThrottlingException"})
	// Deleted between ListKeys and DescribeKey.
	proxy.AddFault(&kmstest.Fault{Op: "DescribeKey", KeyID: ids["webhook-hmac"], Code: "NotFoundException"})

	f := awsclient.NewFactory(testConfig(proxy.URL), awsclient.Options{MaxConcurrency: 8, MaxAttempts: 3, Timeout: 5 * time.Second})
	_, keys, err := newAuditor().Audit(ctx, inventory.Target{Region: "eu-west-1", API: f.KMS(awsclient.Role{}, "eu-west-1")})
	// Only the key throttled past every attempt fails the refresh; AccessDenied
	// is that key's own condition.
	var readErrs inventory.ReadErrors
	if !errors.As(err, &readErrs) || len(readErrs) != 1 || readErrs[inventory.ReadError{Op: "GetKeyRotationStatus", Code: "ThrottlingException"}] != 1 {
		t.Fatalf("Audit error = %v, want one key throttled at GetKeyRotationStatus", err)
	}
	byID := map[string]*model.Key{}
	for _, k := range keys {
		byID[k.ID] = k
	}
	check := func(name, id string, status policy.Status, reason string) *model.Key {
		t.Helper()
		k, ok := byID[id]
		if !ok {
			t.Errorf("%s: missing", name)
			return &model.Key{}
		}
		if k.Verdict.Get().Status != status || k.Verdict.Get().Reason != reason {
			t.Errorf("%s: %s/%s, want %s/%s", name, k.Verdict.Get().Status, k.Verdict.Get().Reason, status, reason)
		}
		return k
	}
	if k := check("730-day period", longID, policy.Noncompliant, policy.ReasonPeriodExceedsPolicy); k.Rotation == nil ||
		k.Rotation.PeriodDays != 730 || k.Rotation.NextRotation.IsZero() {
		t.Errorf("730-day key rotation: %+v", k.Rotation)
	}
	if k := check("aws managed", managed, policy.NotApplicable, policy.ReasonAWSManaged); k.Rotation == nil || !k.Rotation.Enabled ||
		len(k.Aliases) != 1 || k.Aliases[0] != "alias/aws/s3" || k.Meta.Get().KeyManager != "AWS" {
		t.Errorf("aws managed key: %+v", k)
	}
	if k := check("aws managed, status denied", managedDenied, policy.NotApplicable, policy.ReasonAWSManaged); k.Rotation != nil {
		t.Errorf("denied status must not be shown: %+v", k.Rotation)
	}
	if k := check("replica", replica, policy.Noncompliant, policy.ReasonRotationDisabled); k.MultiRegionType() != "REPLICA" ||
		k.PrimaryRegion() != "us-east-1" || k.MultiRegion.PrimaryARN == "" {
		t.Errorf("replica metadata: %+v", k)
	}
	check("status denied", ids["payments"], policy.Unknown, "AccessDeniedException")
	check("throttled twice then answered", ids["legacy-billing"], policy.Noncompliant, policy.ReasonRotationDisabled)
	check("throttled past retries", ids["old-exemption"], policy.Unknown, "ThrottlingException")
	if _, ok := byID[ids["webhook-hmac"]]; ok {
		t.Error("a key deleted between ListKeys and DescribeKey is still listed")
	}
	check("pending deletion (AWS reports false)", ids["retired"], policy.NotApplicable, policy.ReasonPendingDeletion)
	if k := byID[ids["retired"]]; k.Rotation != nil {
		t.Errorf("pending-deletion key: rotation status read although it cannot matter: %+v", k.Rotation)
	}
	check("rotating", ids["rotating-with-exemption"], policy.Compliant, policy.ReasonRotationEnabled)
	if k := byID[ids["rotating-with-exemption"]]; k.Rotation == nil || k.Rotation.PeriodDays != 365 {
		t.Errorf("default period not reported: %+v", k.Rotation)
	}
	if got := proxy.Calls("DescribeKey"); got < len(keys)+2 {
		t.Errorf("DescribeKey calls %d: throttled calls were not retried", got)
	}
}

// TestTagLabels reads tags for every customer-managed key when tag labels are configured.
func TestTagLabels(t *testing.T) {
	ctx := ctxT(t)
	srv, ids := kmstest.StartMixedT(t, "eu-west-1")
	if _, err := srv.Client().TagResource(ctx, &kms.TagResourceInput{KeyId: aws.String(ids["payments"]),
		Tags: []types.Tag{{TagKey: aws.String("team"), TagValue: aws.String("payments-platform")}}}); err != nil {
		t.Fatal(err)
	}
	f := newFactory(srv.URL)
	a := newAuditor()
	a.TagLabels = []string{"team", "cost-center"}
	_, keys, err := a.Audit(ctx, inventory.Target{Region: "eu-west-1", API: f.KMS(awsclient.Role{}, "eu-west-1")})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		want := []string{"", ""}
		if k.ID == ids["payments"] {
			want[0] = "payments-platform"
		}
		if len(k.TagValues) != 2 || k.TagValues[0] != want[0] || k.TagValues[1] != want[1] {
			t.Errorf("%s: tag values %q, want %q", k.Aliases, k.TagValues, want)
		}
	}
	if got := f.Counts()["ListResourceTags"]; got != len(kmstest.MixedInventory) {
		t.Errorf("ListResourceTags calls = %d, want one per customer-managed key (%d)", got, len(kmstest.MixedInventory))
	}
}
