package inventory_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kms-exporter/kms_exporter/awsclient"
	"github.com/kms-exporter/kms_exporter/internal/kmstest"
	"github.com/kms-exporter/kms_exporter/inventory"
	"github.com/kms-exporter/kms_exporter/policy"
)

func TestResolverDiscoversRegions(t *testing.T) {
	var fail atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/listRegions" || fail.Load() {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(500)
			fmt.Fprint(w, `{"__type":"InternalServerException","message":"down"}`)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"Regions":[{"RegionName":"eu-west-1","RegionOptStatus":"ENABLED_BY_DEFAULT"},{"RegionName":"me-central-1","RegionOptStatus":"ENABLED"}]}`)
	}))
	defer srv.Close()
	f := awsclient.NewFactory(testConfig(srv.URL), awsclient.Options{MaxConcurrency: 2, MaxAttempts: 1})
	r := &inventory.Resolver{Factory: f, Roles: []awsclient.Role{{}}, DiscoverRegions: true, Logger: discard()}
	regions := func() string {
		s := ""
		for _, tg := range r.Targets(context.Background()) {
			s += tg.Region + " "
		}
		return s
	}
	if got := regions(); got != "eu-west-1 me-central-1 " {
		t.Fatalf("discovered %q", got)
	}
	fail.Store(true)
	if got := regions(); got != "eu-west-1 me-central-1 " {
		t.Errorf("after a failed discovery: %q, want the regions found before", got)
	}
	if n := testutil.ToFloat64(r.Metrics().WithLabelValues("regions")); n != 1 {
		t.Errorf(`kms_discovery_errors_total{kind="regions"} = %v, want 1`, n)
	}
}

func TestResolverStaticRegionsPerRole(t *testing.T) {
	f := awsclient.NewFactory(testConfig("http://127.0.0.1:1"), awsclient.Options{MaxConcurrency: 1, MaxAttempts: 1})
	roles := []awsclient.Role{{}, {ARN: "arn:aws:iam::444455556666:role/audit"}}
	r := &inventory.Resolver{Factory: f, Roles: roles, Regions: []string{"eu-west-1", "us-east-1"}, Logger: discard()}
	targets := r.Targets(context.Background())
	if len(targets) != 4 {
		t.Fatalf("%d targets, want 2 roles x 2 regions", len(targets))
	}
	if targets[0].API == targets[1].API || targets[0].API == targets[2].API {
		t.Error("targets share a client: want one client per (account, region)")
	}
	if again := r.Targets(context.Background()); again[3].API != targets[3].API {
		t.Error("clients are not reused between refreshes")
	}
}

// TestSameAccountTwiceAuditedOnce reaches one account and region by two
// paths, each with its own client: the exporter's own credentials and a role
// in the same account. It is audited once, shown once, and the API counters
// stay one series per (account, region), so /metrics answers.
func TestSameAccountTwiceAuditedOnce(t *testing.T) {
	srv, ids := kmstest.StartMixedT(t, "eu-west-1")
	proxy := kmstest.NewProxy(t, srv.URL)
	role := awsclient.Role{ARN: "arn:aws:iam::" + kmstest.DefaultAccount + ":role/audit"}
	proxy.AllowRole(role.ARN)
	f := newFactory(proxy.URL)
	var log strings.Builder
	logger := slog.New(slog.NewTextHandler(&log, nil))
	targets := inventory.StaticTargets{
		{Region: "eu-west-1", API: f.KMS(awsclient.Role{}, "eu-west-1")},
		{Role: role, Region: "eu-west-1", API: f.KMS(role, "eu-west-1")},
	}
	auditor := newAuditor()
	auditor.MaxStale = time.Hour
	r := inventory.NewRefresher(targets, auditor, logger, nil)
	reg := prometheus.NewRegistry()
	reg.MustRegister(f)
	for refresh := range 2 {
		before := proxy.Calls("DescribeKey")
		s := r.Refresh(ctxT(t))
		if len(s.Targets) != 1 || !s.Targets[0].Success || len(s.Targets[0].Keys) != len(kmstest.MixedInventory) {
			t.Fatalf("refresh %d: %d targets, want the account and region once", refresh, len(s.Targets))
		}
		if n := proxy.Calls("DescribeKey") - before; n != len(kmstest.MixedInventory) {
			t.Errorf("refresh %d: %d DescribeKey calls for %d keys: audited more than once", refresh, n, len(kmstest.MixedInventory))
		}
		if _, err := reg.Gather(); err != nil {
			t.Errorf("refresh %d: gathering the API counters: %v", refresh, err)
		}
	}
	if n := strings.Count(log.String(), "reached twice"); n != 1 || !strings.Contains(log.String(),
		`skipped_role=`+role.ARN+` audited_role="own credentials"`) {
		t.Errorf("%d log lines about the duplicate, want 1, naming both paths, the first configured audited:\n%s", n, log.String())
	}

	// The own credentials fail to list; the role still can: the account is
	// audited through the role, and a key whose read then fails keeps the
	// verdict read through the other path.
	proxy.AddFault(&kmstest.Fault{Op: "ListKeys", AccessKey: "test", Code: "KMSInternalException", Status: 500})
	proxy.AddFault(&kmstest.Fault{Op: "DescribeKey", KeyID: ids["legacy-billing"], AccessKey: "ASIA" + kmstest.DefaultAccount,
		Code: "KMSInternalException", Status: 500})
	before := proxy.Calls("DescribeKey")
	s := r.Refresh(ctxT(t))
	if len(s.Targets) != 1 || s.Targets[0].RoleARN != role.ARN || len(s.Targets[0].Keys) != len(kmstest.MixedInventory) {
		t.Fatalf("own credentials failing: %d targets (%+v), want the account through the role", len(s.Targets), s.Targets)
	}
	if n := proxy.Calls("DescribeKey") - before; n != len(kmstest.MixedInventory)+2 { // the failing key is tried 3 times
		t.Errorf("%d DescribeKey calls for %d keys", n, len(kmstest.MixedInventory))
	}
	_, k := s.Locate(kmstest.DefaultAccount, "eu-west-1", ids["legacy-billing"])
	if k == nil || !k.Stale || k.Verdict.Get().Status != policy.Noncompliant || s.Targets[0].Success {
		t.Errorf("key failing through the role: %+v, target success %v; want its verdict read before, stale", k, s.Targets[0].Success)
	}
}

// TestShardingAuditsEveryTargetOnce: over 3 shards, each (role, region)
// target is audited by exactly one of them, and always the same one.
func TestShardingAuditsEveryTargetOnce(t *testing.T) {
	f := awsclient.NewFactory(testConfig("http://127.0.0.1:1"), awsclient.Options{MaxConcurrency: 1, MaxAttempts: 1})
	roles := []awsclient.Role{{}}
	for i := range 40 {
		roles = append(roles, awsclient.Role{ARN: fmt.Sprintf("arn:aws:iam::%012d:role/audit", 100000000000+i)})
	}
	regions := []string{"eu-west-1", "eu-west-2", "eu-central-1", "us-east-1", "us-west-2", "ap-southeast-1", "ap-northeast-1"}
	const shards = 3
	seen := map[string]int{}
	for shard := range shards {
		r := &inventory.Resolver{Factory: f, Roles: roles, Regions: regions, Shard: shard, TotalShards: shards, Logger: discard()}
		targets := r.Targets(context.Background())
		if len(targets) < len(roles)*len(regions)/shards/2 {
			t.Errorf("shard %d audits only %d of %d targets", shard, len(targets), len(roles)*len(regions))
		}
		for _, tg := range targets {
			seen[tg.Role.ARN+"|"+tg.Region]++
			if inventory.ShardOf(tg.Role, tg.Region, shards) != shard {
				t.Errorf("%s %s in shard %d, hash says %d", tg.Role.ARN, tg.Region, shard, inventory.ShardOf(tg.Role, tg.Region, shards))
			}
		}
	}
	if len(seen) != len(roles)*len(regions) {
		t.Errorf("%d targets audited, want all %d", len(seen), len(roles)*len(regions))
	}
	for target, n := range seen {
		if n != 1 {
			t.Errorf("%s audited by %d shards", target, n)
		}
	}
	// The hash is part of the contract between replicas of different releases.
	if got := inventory.ShardOf(awsclient.Role{ARN: "arn:aws:iam::123456789012:role/audit"}, "eu-west-1", 7); got != inventory.ShardOf(awsclient.Role{ARN: "arn:aws:iam::123456789012:role/audit"}, "eu-west-1", 7) {
		t.Error("ShardOf is not stable")
	}
}

// TestResolverMetrics: the discovery counters start at 0 and the replica
// says which shard it is.
func TestResolverMetrics(t *testing.T) {
	r := &inventory.Resolver{Shard: 2, TotalShards: 3}
	want := `
# HELP kms_discovery_errors_total Failed discoveries of accounts (organizations) or regions (regions); the targets found before are kept.
# TYPE kms_discovery_errors_total counter
kms_discovery_errors_total{kind="organizations"} 0
kms_discovery_errors_total{kind="regions"} 0
# HELP kms_exporter_shard_ordinal This replica's shard (--shard).
# TYPE kms_exporter_shard_ordinal gauge
kms_exporter_shard_ordinal 2
# HELP kms_exporter_total_shards Number of shards the (account, region) targets are split into (--total-shards).
# TYPE kms_exporter_total_shards gauge
kms_exporter_total_shards 3
`
	if err := testutil.CollectAndCompare(r, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
	if problems, err := testutil.CollectAndLint(r); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}

func TestParseShard(t *testing.T) {
	for in, want := range map[string]int{"0": 0, "3": 3, "kms-exporter-2": 2, "kms-exporter-0": 0, "a-b-12": 12} {
		if got, err := inventory.ParseShard(in); err != nil || got != want {
			t.Errorf("ParseShard(%q) = %d, %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "-1", "kms-exporter", "x-", "1.5", "-+1"} {
		if _, err := inventory.ParseShard(bad); err == nil {
			t.Errorf("ParseShard(%q) accepted", bad)
		}
	}
}

// FuzzParseShard checks ParseShard against what --shard promises: a plain
// non-negative number is that shard; a name ending in -N (a StatefulSet pod's)
// is shard N; nothing else is accepted with a negative result; and an
// accepted shard, written back as a number or as a pod name, reads back the
// same. The reference parser below is written independently of ParseShard
// (digits only, with its own overflow check).
func FuzzParseShard(f *testing.F) {
	for _, s := range []string{"0", "7", "007", "kms-exporter-2", "kms-exporter-0", "a-b-12", "x--5", "12-3",
		"-1", "-0", "+3", "x-", "-", "kms-exporter", "1.5", " 1", "x-+4", "x-0x1",
		"9223372036854775807", "9223372036854775808", "x-9223372036854775807", "9999999999999999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := inventory.ParseShard(s)
		if err == nil && n < 0 {
			t.Fatalf("ParseShard(%q) = %d: a negative shard", s, n)
		}
		// A plain non-negative decimal number is that shard.
		if want, ok := decimal(s); ok && (err != nil || n != want) {
			t.Fatalf("ParseShard(%q) = %d, %v; want %d", s, n, err, want)
		}
		// A name ending in -N is shard N.
		if i := strings.LastIndexByte(s, '-'); i > 0 {
			if want, ok := decimal(s[i+1:]); ok && (err != nil || n != want) {
				t.Fatalf("ParseShard(%q) = %d, %v; want %d (the number after the last -)", s, n, err, want)
			}
		}
		if err != nil {
			return
		}
		// An accepted shard, written as a number or a pod name, reads back the same.
		for _, again := range []string{fmt.Sprint(n), "kms-exporter-" + fmt.Sprint(n), s + "-" + fmt.Sprint(n)} {
			if m, err := inventory.ParseShard(again); err != nil || m != n {
				t.Fatalf("ParseShard(%q) = %d; ParseShard(%q) = %d, %v", s, n, again, m, err)
			}
		}
	})
}

// decimal reads s as a non-empty string of ASCII digits that fits in an int;
// ok is false for anything else.
func decimal(s string) (n int, ok bool) {
	if s == "" {
		return 0, false
	}
	const maxInt = int(^uint(0) >> 1)
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := int(c - '0')
		if n > (maxInt-d)/10 {
			return 0, false
		}
		n = n*10 + d
	}
	return n, true
}

// fakeOrganization answers sts:GetCallerIdentity and
// organizations:ListAccounts (two pages) as AWS does.
func fakeOrganization(t *testing.T, fail *atomic.Bool) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		switch {
		case r.Header.Get("X-Amz-Target") == "AWSOrganizationsV20161128.ListAccounts":
			w.Header().Set("Content-Type", "application/x-amz-json-1.1")
			if fail.Load() {
				w.WriteHeader(400)
				fmt.Fprint(w, `{"__type":"AWSOrganizationsNotInUseException","Message":"not in an organization"}`)
				return
			}
			if !strings.Contains(string(body), "page2") {
				fmt.Fprint(w, `{"NextToken":"page2","Accounts":[
{"Id":"111122223333","Arn":"arn:aws:organizations::111122223333:account/o-x/111122223333","Name":"management","State":"ACTIVE"},
{"Id":"444455556666","Arn":"arn:aws:organizations::111122223333:account/o-x/444455556666","Name":"payments","State":"ACTIVE"}]}`)
				return
			}
			fmt.Fprint(w, `{"Accounts":[
{"Id":"777788889999","Arn":"arn:aws:organizations::111122223333:account/o-x/777788889999","Name":"closed","State":"SUSPENDED"},
{"Id":"222233334444","Arn":"arn:aws:organizations::111122223333:account/o-x/222233334444","Name":"data","State":"ACTIVE"}]}`)
		case strings.Contains(string(body), "Action=GetCallerIdentity"):
			w.Header().Set("Content-Type", "text/xml")
			fmt.Fprint(w, `<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><GetCallerIdentityResult>
<Arn>arn:aws:sts::111122223333:assumed-role/kms-exporter/pod</Arn><UserId>AROA:pod</UserId><Account>111122223333</Account>
</GetCallerIdentityResult><ResponseMetadata><RequestId>1</RequestId></ResponseMetadata></GetCallerIdentityResponse>`)
		default:
			http.Error(w, "unexpected request", 400)
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func TestOrganizationsDiscovery(t *testing.T) {
	var fail atomic.Bool
	f := awsclient.NewFactory(testConfig(fakeOrganization(t, &fail)), awsclient.Options{MaxConcurrency: 1, MaxAttempts: 1})
	r := &inventory.Resolver{Factory: f, Roles: []awsclient.Role{{}}, Regions: []string{"eu-west-1"},
		OrganizationsRoleName: "kms-exporter-audit", OrganizationsExternalID: "org-ext", Logger: discard()}
	describe := func() string {
		var s []string
		for _, tg := range r.Targets(context.Background()) {
			s = append(s, tg.Role.ARN+"|"+tg.Role.ExternalID)
		}
		return strings.Join(s, " ")
	}
	// Own account with its own credentials; active members through the role;
	// the caller's account and suspended accounts not assumed into.
	want := "| arn:aws:iam::444455556666:role/kms-exporter-audit|org-ext arn:aws:iam::222233334444:role/kms-exporter-audit|org-ext"
	if got := describe(); got != want {
		t.Fatalf("targets\n got %s\nwant %s", got, want)
	}
	fail.Store(true)
	if got := describe(); got != want {
		t.Errorf("after a failed listing: %s, want the accounts found before", got)
	}
	if n := testutil.ToFloat64(r.Metrics().WithLabelValues("organizations")); n != 1 {
		t.Errorf(`kms_discovery_errors_total{kind="organizations"} = %v, want 1`, n)
	}
}
