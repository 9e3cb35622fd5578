package inventory_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/kms-exporter/kms_exporter/awsclient"
	"github.com/kms-exporter/kms_exporter/internal/harness"
	"github.com/kms-exporter/kms_exporter/internal/kmstest"
	"github.com/kms-exporter/kms_exporter/inventory"
	"github.com/kms-exporter/kms_exporter/model"
	"github.com/kms-exporter/kms_exporter/policy"
)

// waitMark waits for a mark's outcome.
func waitMark(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("a mark was not answered within 10s")
		return nil
	}
}

// TestMarkReadsAKeyAtOnce: with a resync of a day and an hour between
// refreshes, a marked key is re-read and published within moments, and so
// is a key created since the last refresh; a key gone is dropped; a key whose
// read fails stays as it was (stale) and its mark learns the error; a key of
// an account or region not audited is refused.
func TestMarkReadsAKeyAtOnce(t *testing.T) {
	ctx, cancel := context.WithCancel(ctxT(t))
	srv, ids := kmstest.StartMixedT(t, "eu-west-1")
	proxy := kmstest.NewProxy(t, srv.URL)
	a := newAuditor()
	a.Resync, a.MaxStale = 24*time.Hour, 25*time.Hour
	f := newFactory(proxy.URL)
	r := inventory.NewRefresher(inventory.StaticTargets{{Region: "eu-west-1", API: f.KMS(awsclient.Role{}, "eu-west-1")}}, a, discard(), nil)

	// A mark made before the first refresh ends waits for it.
	early, err := r.Mark(ctx, model.KeyRef{AccountID: kmstest.DefaultAccount, Region: "eu-west-1", KeyID: ids["payments"]})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { r.Run(ctx, time.Hour); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	if err := waitMark(t, early); err != nil {
		t.Fatalf("a mark made before the first refresh: %v", err)
	}

	keyOf := func(id string) *model.Key {
		_, k := r.Snapshot().Locate(kmstest.DefaultAccount, "eu-west-1", id)
		return k
	}
	mark := func(id string) error {
		t.Helper()
		ch, err := r.Mark(ctx, model.KeyRef{AccountID: kmstest.DefaultAccount, Region: "eu-west-1", KeyID: id})
		if err != nil {
			t.Fatal(err)
		}
		return waitMark(t, ch)
	}

	// A rotation disabled shows once its key is marked, not before.
	id := ids["payments"]
	if _, err := srv.Client().DisableKeyRotation(ctx, &kms.DisableKeyRotationInput{KeyId: aws.String(id)}); err != nil {
		t.Fatal(err)
	}
	others := r.Snapshot().Targets[0].Keys
	if k := keyOf(id); k.Verdict.Get().Status != policy.Compliant {
		t.Fatalf("before the mark: %s", k.Verdict.Get().Status)
	}
	if err := mark(id); err != nil {
		t.Fatal(err)
	}
	if k := keyOf(id); k.Verdict.Get().Status != policy.Noncompliant {
		t.Fatalf("after the mark: %s, want noncompliant", k.Verdict.Get().Status)
	}
	for i, k := range r.Snapshot().Targets[0].Keys {
		if k.ID != id && k != others[i] {
			t.Errorf("key %s, not marked, changed", k.ID)
		}
	}

	// A key created since the refresh, and its alias.
	created, err := srv.Client().CreateKey(ctx, &kms.CreateKeyInput{})
	if err != nil {
		t.Fatal(err)
	}
	newID := aws.ToString(created.KeyMetadata.KeyId)
	if _, err := srv.Client().CreateAlias(ctx, &kms.CreateAliasInput{AliasName: aws.String("alias/new"), TargetKeyId: &newID}); err != nil {
		t.Fatal(err)
	}
	if err := mark(newID); err != nil {
		t.Fatal(err)
	}
	k := keyOf(newID)
	if k == nil || k.Verdict.Get().Status != policy.Noncompliant || k.ARN != aws.ToString(created.KeyMetadata.Arn) || len(k.Aliases) != 1 || k.Aliases[0] != "alias/new" {
		t.Fatalf("a created key, marked: %+v", k)
	}

	// A read that fails for a transient reason keeps the key, stale.
	proxy.AddFault(&kmstest.Fault{Op: "GetKeyRotationStatus", KeyID: newID, Code: "ThrottlingException"})
	if err := mark(newID); err == nil {
		t.Fatal("a mark whose read was throttled reported success")
	}
	if k := keyOf(newID); k == nil || !k.Stale || k.Verdict.Get().Status != policy.Noncompliant {
		t.Fatalf("a key whose read failed: %+v, want its last verdict, stale", k)
	}
	proxy.ClearFaults()

	// A key gone (AWS answers NotFound) is dropped.
	proxy.AddFault(&kmstest.Fault{KeyID: newID, Code: "NotFoundException"})
	if err := mark(newID); err != nil {
		t.Fatal(err)
	}
	if k := keyOf(newID); k != nil {
		t.Fatalf("a key AWS no longer knows is still published: %+v", k)
	}
	proxy.ClearFaults()

	if _, err := r.Mark(ctx, model.KeyRef{AccountID: kmstest.DefaultAccount, Region: "us-west-2", KeyID: id}); !errors.Is(err, model.ErrNotAudited) {
		t.Errorf("a mark in a region not audited: %v, want ErrNotAudited", err)
	}
	if _, err := r.Mark(ctx, model.KeyRef{AccountID: "999999999999", Region: "eu-west-1", KeyID: id}); !errors.Is(err, model.ErrNotAudited) {
		t.Errorf("a mark in an account not audited: %v, want ErrNotAudited", err)
	}
}

// TestMarkReadsEveryCopyOfAMultiRegionKey: rotation enabled on a
// multi-Region primary (its event names the primary's region) shows on its
// replica in another region too, once the primary is marked.
func TestMarkReadsEveryCopyOfAMultiRegionKey(t *testing.T) {
	ctx, cancel := context.WithCancel(ctxT(t))
	srv := kmstest.StartT(t, kmstest.Options{Region: "eu-west-1"})
	proxy := kmstest.NewProxy(t, srv.URL)
	const id = "mrk-1234abcd12ab34cd56ef1234567890ab"
	proxy.AddFake(kmstest.MultiRegionKey("us-east-1", "us-east-1", kmstest.DefaultAccount, id, false))
	proxy.AddFake(kmstest.MultiRegionKey("eu-west-1", "us-east-1", kmstest.DefaultAccount, id, false))
	a := newAuditor()
	a.Resync, a.MaxStale = 24*time.Hour, 25*time.Hour
	f := newFactory(proxy.URL)
	r := inventory.NewRefresher(inventory.StaticTargets{
		{Region: "eu-west-1", API: f.KMS(awsclient.Role{}, "eu-west-1")},
		{Region: "us-east-1", API: f.KMS(awsclient.Role{}, "us-east-1")},
	}, a, discard(), nil)
	done := make(chan struct{})
	go func() { r.Run(ctx, time.Hour); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	status := func(region string) policy.Status {
		_, k := r.Snapshot().Locate(kmstest.DefaultAccount, region, id)
		if k == nil {
			return "absent"
		}
		return k.Verdict.Get().Status
	}
	harness.Poll(t, 10*time.Second, func() string {
		if s := status("eu-west-1"); s != policy.Noncompliant {
			return "replica before: " + string(s)
		}
		return ""
	})
	if _, err := kmstest.Client(proxy.URL, "us-east-1").EnableKeyRotation(ctx, &kms.EnableKeyRotationInput{KeyId: aws.String(id)}); err != nil {
		t.Fatal(err)
	}
	ch, err := r.Mark(ctx, model.KeyRef{AccountID: kmstest.DefaultAccount, Region: "us-east-1", KeyID: id})
	if err != nil {
		t.Fatal(err)
	}
	if err := waitMark(t, ch); err != nil {
		t.Fatal(err)
	}
	if p, rep := status("us-east-1"), status("eu-west-1"); p != policy.Compliant || rep != policy.Compliant {
		t.Errorf("after the primary's mark: primary %s, replica %s; want both compliant", p, rep)
	}
}

// TestMarkDuringARefresh: a key marked while a refresh is running (held up
// by one slow key) is read and published at once, not after the refresh;
// and the refresh, which read that key before it changed, does not publish
// the older state over it.
func TestMarkDuringARefresh(t *testing.T) {
	ctx, cancel := context.WithCancel(ctxT(t))
	srv, ids := kmstest.StartMixedT(t, "eu-west-1")
	proxy := kmstest.NewProxy(t, srv.URL)
	a := newAuditor()
	a.Resync, a.MaxStale = time.Nanosecond, time.Hour // every key at every refresh
	f := newFactory(proxy.URL)
	r := inventory.NewRefresher(inventory.StaticTargets{{Region: "eu-west-1", API: f.KMS(awsclient.Role{}, "eu-west-1")}}, a, discard(), nil)
	done := make(chan struct{})
	go func() { r.Run(ctx, time.Hour); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	id := ids["payments"]
	harness.Poll(t, 10*time.Second, func() string {
		if _, k := r.Snapshot().Locate("", "eu-west-1", id); k == nil || k.Verdict.Get().Status != policy.Compliant {
			return "first refresh not published"
		}
		return ""
	})

	proxy.AddFault(&kmstest.Fault{Op: "DescribeKey", KeyID: ids["legacy-billing"], Delay: 4 * time.Second, Times: 1})
	refreshed := make(chan struct{})
	go func() { r.Refresh(ctx); close(refreshed) }()
	time.Sleep(time.Second) // the refresh has read the other keys, payments among them
	if _, err := srv.Client().DisableKeyRotation(ctx, &kms.DisableKeyRotationInput{KeyId: aws.String(id)}); err != nil {
		t.Fatal(err)
	}
	ch, err := r.Mark(ctx, model.KeyRef{AccountID: kmstest.DefaultAccount, Region: "eu-west-1", KeyID: id})
	if err != nil {
		t.Fatal(err)
	}
	if err := waitMark(t, ch); err != nil {
		t.Fatal(err)
	}
	select {
	case <-refreshed:
		t.Fatal("the mark was answered only after the refresh ended")
	default:
	}
	if _, k := r.Snapshot().Locate("", "eu-west-1", id); k.Verdict.Get().Status != policy.Noncompliant {
		t.Fatalf("during the refresh, after the mark: %s", k.Verdict.Get().Status)
	}
	<-refreshed
	if _, k := r.Snapshot().Locate("", "eu-west-1", id); k.Verdict.Get().Status != policy.Noncompliant {
		t.Errorf("the refresh published its older read over the mark's: %s", k.Verdict.Get().Status)
	}
}
