package inventory_test

import (
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	prommodel "github.com/prometheus/common/model"

	"github.com/kms-exporter/kms_exporter/awsclient"
	"github.com/kms-exporter/kms_exporter/collector"
	"github.com/kms-exporter/kms_exporter/internal/harness"
	"github.com/kms-exporter/kms_exporter/internal/kmstest"
	"github.com/kms-exporter/kms_exporter/inventory"
	"github.com/kms-exporter/kms_exporter/model"
	"github.com/kms-exporter/kms_exporter/policy"
)

// clock is a settable time for the staleness bound.
type clock = harness.Clock

// exposition is what /metrics shows for a snapshot and the refresher's
// counters: every sample by its series, as `name{label="value",...}`.
type exposition map[string]float64

func scrape(t *testing.T, s *model.Snapshot, r *inventory.Refresher) exposition {
	t.Helper()
	c := collector.New(collector.Options{}, discard())
	c.Publish(s)
	reg := prometheus.NewRegistry()
	reg.MustRegister(r)
	rec := httptest.NewRecorder()
	c.Handler(reg, discard()).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	p := expfmt.NewTextParser(prommodel.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(rec.Body)
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	out := exposition{}
	for name, mf := range mfs {
		for _, m := range mf.GetMetric() {
			labels := make([]string, 0, len(m.GetLabel()))
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+`"`+l.GetValue()+`"`)
			}
			sort.Strings(labels)
			v := m.GetGauge().GetValue() + m.GetCounter().GetValue()
			out[name+"{"+strings.Join(labels, ",")+"}"] = v
		}
	}
	return out
}

// series returns the samples of one metric whose series contain every part.
func (e exposition) series(name string, parts ...string) map[string]float64 {
	out := map[string]float64{}
next:
	for s, v := range e {
		if !strings.HasPrefix(s, name+"{") {
			continue
		}
		for _, p := range parts {
			if !strings.Contains(s, p) {
				continue next
			}
		}
		out[s] = v
	}
	return out
}

// sum adds the samples of one metric whose series contain every part.
func (e exposition) sum(name string, parts ...string) float64 {
	total := 0.0
	for _, v := range e.series(name, parts...) {
		total += v
	}
	return total
}

// compliance is kms_key_compliance: key id -> "status/reason".
func (e exposition) compliance() map[string]string {
	out := map[string]string{}
	for s := range e.series("kms_key_compliance") {
		l := parseLabels(s)
		out[l["key_id"]] = l["status"] + "/" + l["reason"]
	}
	return out
}

func parseLabels(series string) map[string]string {
	out := map[string]string{}
	body := series[strings.IndexByte(series, '{')+1 : len(series)-1]
	for _, kv := range strings.Split(body, ",") {
		k, v, _ := strings.Cut(kv, "=")
		out[k] = strings.Trim(v, `"`)
	}
	return out
}

// TestOutcomesUnderFailure drives one refresher through failures that get
// past the SDK's retries and checks what /metrics shows after each: a key's
// verdict changes only on an answer from AWS, a failed read keeps the last
// good verdict (stale, counted) for at most the staleness bound, and the
// refresh of the region is not a success.
func TestOutcomesUnderFailure(t *testing.T) {
	if testing.Short() {
		t.Skip("fault injection against local-kms")
	}
	const region = "eu-west-1"
	srv, ids := kmstest.StartMixedT(t, region)
	proxy := kmstest.NewProxy(t, srv.URL)
	factory := awsclient.NewFactory(testConfig(proxy.URL), awsclient.Options{MaxConcurrency: 8, MaxAttempts: 2, Timeout: 300 * time.Millisecond})
	clk := harness.NewClock(time.Now())
	auditor := &inventory.Auditor{Policy: testPolicy, Workers: 8, MaxStale: time.Hour, Now: clk.Now}
	var log strings.Builder
	r := inventory.NewRefresher(inventory.StaticTargets{{Region: region, API: factory.KMS(awsclient.Role{}, region)}}, auditor,
		slog.New(slog.NewTextHandler(&log, nil)), nil)
	ctx := ctxT(t)
	baseline := scrape(t, r.Refresh(ctx), r).compliance()
	if len(baseline) != len(kmstest.MixedInventory) {
		t.Fatalf("baseline: %d keys: %v", len(baseline), baseline)
	}
	counts := map[policy.Status]int{}
	for _, k := range kmstest.MixedInventory {
		counts[policy.Status(k.Status)]++
	}
	if got := r.Snapshot().Counts(); !reflect.DeepEqual(got, counts) {
		t.Errorf("counts by verdict: %v, want %v", got, counts)
	}
	// readFailureLog returns the log line of the last refresh's read failures.
	readFailureLog := func() string {
		lines := strings.Split(strings.TrimSpace(log.String()), "\n")
		log.Reset()
		for _, l := range lines {
			if strings.Contains(l, "reading keys failed") {
				return l
			}
		}
		return ""
	}
	perKey := func(f kmstest.Fault) []*kmstest.Fault {
		var out []*kmstest.Fault
		for _, op := range []string{"DescribeKey", "GetKeyRotationStatus", "ListResourceTags"} {
			f := f
			f.Op = op
			out = append(out, &f)
		}
		return out
	}
	target := `account_id="` + kmstest.DefaultAccount + `"`

	// healed checks the refresh after a fault: all as before, nothing stale.
	healed := func(t *testing.T) {
		t.Helper()
		proxy.ClearFaults()
		m := scrape(t, r.Refresh(ctx), r)
		if got := m.compliance(); !maps.Equal(got, baseline) {
			t.Errorf("after recovery: %v, want %v", got, baseline)
		}
		if m.sum("kms_refresh_success", target) != 1 || m.sum("kms_keys_stale", target) != 0 || len(m.series("kms_key_stale")) != 0 {
			t.Errorf("after recovery: success %v, stale %v", m.series("kms_refresh_success"), m.series("kms_keys_stale"))
		}
	}

	outages := []struct {
		name   string
		faults []*kmstest.Fault
		// op and code: what the read failures are counted as.
		op, code string
	}{
		{name: "5xx on every call after listing", faults: perKey(kmstest.Fault{Code: "KMSInternalException", Status: 500}),
			op: "DescribeKey", code: "KMSInternalException"},
		{name: "throttling past the retries on every key", faults: perKey(kmstest.Fault{Code: "ThrottlingException"}),
			op: "DescribeKey", code: "ThrottlingException"},
		{name: "endpoint slower than the timeout after listing", faults: perKey(kmstest.Fault{Delay: 2 * time.Second}),
			op: "DescribeKey", code: "RequestTimeout"},
		{name: "listing fails after every retry", faults: []*kmstest.Fault{{Op: "ListKeys", Code: "KMSInternalException", Status: 500}}},
	}
	for _, o := range outages {
		t.Run(o.name, func(t *testing.T) {
			before := scrape(t, r.Snapshot(), r)
			for _, f := range o.faults {
				proxy.AddFault(f)
			}
			clk.Add(time.Minute)
			log.Reset()
			m := scrape(t, r.Refresh(ctx), r)
			if got := m.compliance(); !maps.Equal(got, baseline) {
				t.Errorf("during the outage the verdicts changed: %v, want %v", got, baseline)
			}
			if line := readFailureLog(); o.code != "" && (!strings.Contains(line, fmt.Sprintf(" stale=%d unknown=0 ", len(baseline))) ||
				strings.Count(regexp.MustCompile(`keys=(\S+)`).FindString(line), ",") != 4) {
				t.Errorf("log of the read failures: %q, want every key stale and 5 of their ids", line)
			}
			if v := m.sum("kms_refresh_success", target); v != 0 {
				t.Errorf("kms_refresh_success = %v during the outage, want 0", v)
			}
			if v := m.sum("kms_keys_stale", target); int(v) != len(baseline) {
				t.Errorf("kms_keys_stale = %v, want %d", v, len(baseline))
			}
			if n := len(m.series("kms_key_stale")); n != len(baseline) {
				t.Errorf("%d kms_key_stale series, want %d", n, len(baseline))
			}
			if m.sum("kms_last_refresh_timestamp_seconds", target) != before.sum("kms_last_refresh_timestamp_seconds", target) {
				t.Error("kms_last_refresh_timestamp_seconds moved although the refresh failed")
			}
			if o.code != "" {
				failures := `error_code="` + o.code + `"`
				if d := m.sum("kms_key_read_failures_total", failures, `operation="`+o.op+`"`) -
					before.sum("kms_key_read_failures_total", failures, `operation="`+o.op+`"`); int(d) != len(baseline) {
					t.Errorf("kms_key_read_failures_total{%s} rose by %v, want %d: %v", failures, d, len(baseline), m.series("kms_key_read_failures_total"))
				}
			}
			healed(t)
		})
	}

	t.Run("the staleness bound passes: unknown with the error code", func(t *testing.T) {
		for _, f := range perKey(kmstest.Fault{Code: "KMSInternalException", Status: 500}) {
			proxy.AddFault(f)
		}
		// Exactly the bound after the last successful read: still kept.
		clk.Add(auditor.MaxStale)
		if m := scrape(t, r.Refresh(ctx), r); !maps.Equal(m.compliance(), baseline) {
			t.Fatalf("at the bound: %v", m.compliance())
		}
		clk.Add(time.Nanosecond)
		m := scrape(t, r.Refresh(ctx), r)
		for id, v := range m.compliance() {
			if v != "unknown/KMSInternalException" {
				t.Errorf("%s: %s past the staleness bound, want unknown/KMSInternalException", id, v)
			}
		}
		if n := len(m.series("kms_key_stale")) + len(m.series("kms_key_rotation_enabled")); n != 0 {
			t.Errorf("past the bound, %d stale or rotation series are still shown", n)
		}
		healed(t)
	})

	t.Run("a status read by a remediation is fresh evidence", func(t *testing.T) {
		for _, f := range perKey(kmstest.Fault{Code: "KMSInternalException", Status: 500}) {
			proxy.AddFault(f)
		}
		clk.Add(time.Minute)
		r.Refresh(ctx)
		id := ids["legacy-billing"]
		m := scrape(t, r.ApplyRotationChanges(model.RotationChange{AccountID: kmstest.DefaultAccount, KeyID: id,
			Rotation: policy.Rotation{Enabled: true, PeriodDays: 365}, At: time.Now()}), r)
		if got := m.compliance()[id]; got != "compliant/rotation_enabled" {
			t.Errorf("after the change: %s", got)
		}
		if n := len(m.series("kms_key_stale", `key_id="`+id+`"`)); n != 0 || int(m.sum("kms_keys_stale", target)) != len(baseline)-1 {
			t.Errorf("the changed key is still stale: %v", m.series("kms_keys_stale"))
		}
		healed(t)
	})

	t.Run("a key never read successfully is unknown, not stale", func(t *testing.T) {
		c := kmstest.Client(srv.URL, region)
		out, err := c.CreateKey(ctx, &kms.CreateKeyInput{})
		if err != nil {
			t.Fatal(err)
		}
		id := aws.ToString(out.KeyMetadata.KeyId)
		proxy.AddFault(&kmstest.Fault{Op: "DescribeKey", KeyID: id, Code: "ThrottlingException"})
		log.Reset()
		m := scrape(t, r.Refresh(ctx), r)
		if line := readFailureLog(); !strings.Contains(line, " stale=0 unknown=1 ") || !strings.Contains(line, "keys="+id) {
			t.Errorf("log of the read failure: %q", line)
		}
		if got := m.compliance()[id]; got != "unknown/ThrottlingException" {
			t.Errorf("new key throttled: %q, want unknown/ThrottlingException", got)
		}
		if m.sum("kms_refresh_success", target) != 0 || m.sum("kms_keys_stale", target) != 0 {
			t.Errorf("success %v, stale %v", m.series("kms_refresh_success"), m.series("kms_keys_stale"))
		}
		proxy.ClearFaults()
		if _, err := c.ScheduleKeyDeletion(ctx, &kms.ScheduleKeyDeletionInput{KeyId: &id, PendingWindowInDays: aws.Int32(7)}); err != nil {
			t.Fatal(err)
		}
		baseline[id] = "not_applicable/pending_deletion"
		healed(t)
	})

	t.Run("access denied on one key is that key's condition, not the region's", func(t *testing.T) {
		proxy.AddFault(&kmstest.Fault{Op: "GetKeyRotationStatus", KeyID: ids["legacy-billing"], Code: "AccessDeniedException"})
		m := scrape(t, r.Refresh(ctx), r)
		if got := m.compliance()[ids["legacy-billing"]]; got != "unknown/AccessDeniedException" {
			t.Errorf("denied key: %q", got)
		}
		if m.sum("kms_refresh_success", target) != 1 || m.sum("kms_keys_stale", target) != 0 {
			t.Errorf("access denied on one key failed the region: %v", m.series("kms_refresh_success"))
		}
		healed(t)
	})

	for _, op := range []string{"DescribeKey", "GetKeyRotationStatus"} {
		t.Run("a key deleted before "+op+" leaves the inventory", func(t *testing.T) {
			id := ids["legacy-billing"]
			proxy.AddFault(&kmstest.Fault{Op: op, KeyID: id, Code: "NotFoundException"})
			m := scrape(t, r.Refresh(ctx), r)
			if got, ok := m.compliance()[id]; ok {
				t.Errorf("deleted key still shown: %s", got)
			}
			if m.sum("kms_refresh_success", target) != 1 || len(m.compliance()) != len(baseline)-1 {
				t.Errorf("success %v, %d keys", m.series("kms_refresh_success"), len(m.compliance()))
			}
			healed(t)
		})
	}
}

// TestConnectionFaults puts toxiproxy, a real TCP fault proxy, between the
// exporter and local-kms: responses far slower than the client timeout,
// connections reset, connections that stall, responses cut off. None is an
// answer from AWS: every verdict stays, stale, the refresh fails, and once
// the fault is gone the next refresh is as before.
func TestConnectionFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("runs toxiproxy and local-kms")
	}
	const region = "eu-west-1"
	srv, _ := kmstest.StartMixedT(t, region)
	toxi := kmstest.StartToxiproxy(t)
	url := toxi.Proxy(t, "kms", srv.URL)
	factory := awsclient.NewFactory(testConfig(url), awsclient.Options{MaxConcurrency: 8, MaxAttempts: 2, Timeout: 300 * time.Millisecond})
	auditor := &inventory.Auditor{Policy: testPolicy, Workers: 8, MaxStale: time.Hour, Now: time.Now}
	r := inventory.NewRefresher(inventory.StaticTargets{{Region: region, API: factory.KMS(awsclient.Role{}, region)}}, auditor, discard(), nil)
	ctx := ctxT(t)
	baseline := scrape(t, r.Refresh(ctx), r).compliance()
	if len(baseline) != len(kmstest.MixedInventory) {
		t.Fatalf("baseline: %d keys", len(baseline))
	}
	target := `account_id="` + kmstest.DefaultAccount + `"`
	for _, c := range []struct {
		name, typ string
		attrs     map[string]any
	}{
		{"responses slower than the timeout", "latency", map[string]any{"latency": 1000}},
		{"connections reset", "reset_peer", map[string]any{"timeout": 0}},
		{"connections stall", "timeout", map[string]any{"timeout": 0}},
		{"responses cut off", "limit_data", map[string]any{"bytes": 64}},
	} {
		t.Run(c.name, func(t *testing.T) {
			toxi.AddToxic(t, "kms", "fault", c.typ, c.attrs)
			m := scrape(t, r.Refresh(ctx), r)
			toxi.RemoveToxic(t, "kms", "fault")
			if got := m.compliance(); !maps.Equal(got, baseline) {
				t.Errorf("verdicts changed under the fault: %v, want %v", got, baseline)
			}
			if m.sum("kms_refresh_success", target) != 0 || int(m.sum("kms_keys_stale", target)) != len(baseline) {
				t.Errorf("under the fault: success %v, stale %v", m.series("kms_refresh_success"), m.series("kms_keys_stale"))
			}
			m = scrape(t, r.Refresh(ctx), r)
			if got := m.compliance(); !maps.Equal(got, baseline) || m.sum("kms_refresh_success", target) != 1 || m.sum("kms_keys_stale", target) != 0 {
				t.Errorf("after the fault: %v, success %v, stale %v", got, m.series("kms_refresh_success"), m.series("kms_keys_stale"))
			}
		})
	}
}
