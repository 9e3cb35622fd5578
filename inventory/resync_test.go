package inventory_test

import (
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kms-exporter/kms_exporter/awsclient"
	"github.com/kms-exporter/kms_exporter/internal/fastkms"
	"github.com/kms-exporter/kms_exporter/internal/harness"
	"github.com/kms-exporter/kms_exporter/internal/kmstest"
	"github.com/kms-exporter/kms_exporter/inventory"
	"github.com/kms-exporter/kms_exporter/policy"
)

// TestResyncSpreadsReads: with --refresh.resync-interval ten times the
// refresh interval, the first refresh reads every key, and then each
// refresh lists every key but re-reads about a tenth of them, every key
// exactly once over the ten refreshes: the KMS calls grow with the resync
// rate, not with the refresh rate, and come evenly, not in a burst.
func TestResyncSpreadsReads(t *testing.T) {
	const keys, ticks = 3000, 10
	srv, err := fastkms.Start(keys, fastkms.Options{Region: "eu-west-1"})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	clk := harness.NewClock(time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC))
	a := newAuditor()
	a.Now, a.Resync = clk.Now, ticks*time.Minute
	f := newFactory(srv.URL)
	r := inventory.NewRefresher(inventory.StaticTargets{{Region: "eu-west-1", API: f.KMS(awsclient.Role{}, "eu-west-1")}}, a, discard(), nil)

	calls := func() map[string]int64 { return srv.Calls() }
	before := calls()
	first := r.Refresh(ctxT(t))
	after := calls()
	if n := len(first.Targets[0].Keys); n != keys {
		t.Fatalf("%d keys, want %d", n, keys)
	}
	if d := after["DescribeKey"] - before["DescribeKey"]; d != keys {
		t.Fatalf("first refresh: %d DescribeKey, want %d (every key)", d, keys)
	}
	readAt := map[string]int64{}
	for i, k := range first.Targets[0].Keys {
		readAt[k.ID] = first.Targets[0].ReadAt[i]
	}

	// Counted from the read times, not from the calls the fake answered: the
	// SDK may retry a call it could not read the answer of.
	var total int
	for tick := 1; tick <= ticks; tick++ {
		clk.Add(time.Minute)
		before := calls()
		s := r.Refresh(ctxT(t))
		after := calls()
		if lists := after["ListKeys"] - before["ListKeys"]; lists < keys/1000 {
			t.Errorf("refresh %d: %d ListKeys pages, want %d (every refresh lists)", tick, lists, keys/1000)
		}
		st := s.Targets[0]
		if len(st.Keys) != keys || len(st.ReadAt) != keys {
			t.Fatalf("refresh %d: %d keys, %d read times", tick, len(st.Keys), len(st.ReadAt))
		}
		reread := 0
		for i, k := range st.Keys {
			if at := st.ReadAt[i]; at != readAt[k.ID] {
				if at != clk.Now().UnixNano() {
					t.Fatalf("key %s read at %d, neither its last read nor this refresh", k.ID, at)
				}
				readAt[k.ID] = at
				reread++
			}
		}
		total += reread
		// Evenly: a tenth each, give or take what a hash of 3,000 ids spreads.
		if reread < keys/ticks*6/10 || reread > keys/ticks*14/10 {
			t.Errorf("refresh %d re-read %d keys, want about %d", tick, reread, keys/ticks)
		}
		if d := after["DescribeKey"] - before["DescribeKey"]; d < int64(reread) || d > int64(reread)+5 {
			t.Errorf("refresh %d: %d DescribeKey calls for %d keys re-read", tick, d, reread)
		}
	}
	if total != keys {
		t.Errorf("%d keys re-read over the resync interval, want each of the %d exactly once", total, keys)
	}
	for id, at := range readAt {
		if at <= first.Targets[0].ReadAt[0] {
			t.Fatalf("key %s was not re-read within the resync interval", id)
		}
	}
}

// TestResyncSeesChanges: between resyncs a refresh reads new keys at once
// and drops deleted ones; a change to a known key shows by the end of the
// resync interval, when its turn comes.
func TestResyncSeesChanges(t *testing.T) {
	ctx := ctxT(t)
	srv, ids := kmstest.StartMixedT(t, "eu-west-1")
	clk := harness.NewClock(time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC))
	a := newAuditor()
	a.Now, a.Resync = clk.Now, time.Hour
	f := newFactory(srv.URL)
	r := inventory.NewRefresher(inventory.StaticTargets{{Region: "eu-west-1", API: f.KMS(awsclient.Role{}, "eu-west-1")}}, a, discard(), nil)
	r.Refresh(ctx)

	id := ids["legacy-billing"]
	if _, err := srv.Client().EnableKeyRotation(ctx, &kms.EnableKeyRotationInput{KeyId: aws.String(id)}); err != nil {
		t.Fatal(err)
	}
	created, err := srv.Client().CreateKey(ctx, &kms.CreateKeyInput{})
	if err != nil {
		t.Fatal(err)
	}
	newID := aws.ToString(created.KeyMetadata.KeyId)

	clk.Add(time.Minute)
	s := r.Refresh(ctx)
	if _, k := s.Locate("", "eu-west-1", newID); k == nil || k.Verdict.Get().Status != policy.Noncompliant {
		t.Fatalf("a key created since the last refresh: %+v, want it read at once (noncompliant)", k)
	}
	seen := false
	for range 60 {
		_, k := r.Snapshot().Locate("", "eu-west-1", id)
		if k.Verdict.Get().Status == policy.Compliant {
			seen = true
			break
		}
		clk.Add(time.Minute)
		r.Refresh(ctx)
	}
	if !seen {
		t.Fatal("a rotation enabled was not seen within the resync interval")
	}
	// The resync found one change (the key created was new, not a change).
	reg := prometheus.NewRegistry()
	reg.MustRegister(r)
	if n, err := testutil.GatherAndCount(reg, "kms_key_resync_changes_total"); err != nil || n != 1 {
		t.Fatalf("kms_key_resync_changes_total: %d series, %v", n, err)
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`# HELP kms_key_resync_changes_total Keys a refresh found changed when it re-read them in their turn of --refresh.resync-interval (only keys re-read by their turn: not with a resync as short as the refresh interval, nor for a failed read, an unknown verdict or an ended exemption). With --events.sqs-queue-url, each is a change whose event did not reach the exporter.
# TYPE kms_key_resync_changes_total counter
kms_key_resync_changes_total{account_id="111122223333",region="eu-west-1"} 1
`), "kms_key_resync_changes_total"); err != nil {
		t.Error(err)
	}
}

// TestResyncRereadsWhatNoEventAnnounces: with a resync of a day, a key whose
// exemption ends is re-read at the next refresh (a date passing makes no KMS
// event), and so is an unknown key (an access denied fixed in IAM makes none
// either).
func TestResyncRereadsWhatNoEventAnnounces(t *testing.T) {
	ctx := ctxT(t)
	srv, ids := kmstest.StartMixedT(t, "eu-west-1")
	proxy := kmstest.NewProxy(t, srv.URL)
	// vendor-appliance is exempt until 2099-12-31: its exemption ends at 2100-01-01T00:00Z.
	clk := harness.NewClock(time.Date(2099, 12, 31, 23, 59, 30, 0, time.UTC))
	a := newAuditor()
	a.Now, a.Resync = clk.Now, 24*time.Hour
	f := newFactory(proxy.URL)
	r := inventory.NewRefresher(inventory.StaticTargets{{Region: "eu-west-1", API: f.KMS(awsclient.Role{}, "eu-west-1")}}, a, discard(), nil)
	denied := ids["payments"]
	proxy.AddFault(&kmstest.Fault{Op: "GetKeyRotationStatus", KeyID: denied, Code: "AccessDeniedException"})
	s := r.Refresh(ctx)
	if _, k := s.Locate("", "eu-west-1", ids["vendor-appliance"]); k.Verdict.Get().Status != policy.Exempt {
		t.Fatalf("before its end: %s", k.Verdict.Get().Status)
	}
	if _, k := s.Locate("", "eu-west-1", denied); k.Verdict.Get().Status != policy.Unknown {
		t.Fatalf("denied: %s", k.Verdict.Get().Status)
	}
	proxy.ClearFaults()

	clk.Add(time.Minute)
	s = r.Refresh(ctx)
	if _, k := s.Locate("", "eu-west-1", ids["vendor-appliance"]); k.Verdict.Get().Status != policy.Noncompliant || k.Verdict.Get().Reason != policy.ReasonExemptionExpired {
		t.Errorf("a minute after its exemption ended: %s (%s), want noncompliant (exemption_expired)", k.Verdict.Get().Status, k.Verdict.Get().Reason)
	}
	if _, k := s.Locate("", "eu-west-1", denied); k.Verdict.Get().Status != policy.Compliant {
		t.Errorf("access allowed again: %s, want compliant at the next refresh", k.Verdict.Get().Status)
	}
}
