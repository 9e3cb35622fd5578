package inventory_test

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kms-exporter/kms_exporter/awsclient"
	"github.com/kms-exporter/kms_exporter/internal/kmstest"
	"github.com/kms-exporter/kms_exporter/inventory"
	"github.com/kms-exporter/kms_exporter/model"
	"github.com/kms-exporter/kms_exporter/policy"
)

type verdictMap map[string]policy.Verdict

func verdicts(s *model.Snapshot) verdictMap {
	out := verdictMap{}
	for _, t := range s.Targets {
		for _, k := range t.Keys {
			out[t.Region+"/"+k.ID] = k.Verdict.Get()
		}
	}
	return out
}

// apiErrors sums kms_api_request_errors_total by error code.
func apiErrors(t *testing.T, f *awsclient.Factory) map[string]float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(f)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "kms_api_request_errors_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "error_code" {
					out[l.GetValue()] += m.GetCounter().GetValue()
				}
			}
		}
	}
	return out
}

// TestFaultInjection runs one refresh per fault: healthy keys keep their
// verdicts, affected keys become unknown (never a false noncompliant or
// compliant), the counters say what happened, and once the fault stops the
// next refresh is fully correct.
func TestFaultInjection(t *testing.T) {
	if testing.Short() {
		t.Skip("fault injection against local-kms")
	}
	srv, ids := kmstest.StartMixedT(t, "eu-west-1")
	proxy := kmstest.NewProxy(t, srv.URL)
	factory := awsclient.NewFactory(testConfig(proxy.URL), awsclient.Options{MaxConcurrency: 8, MaxAttempts: 5, Timeout: 300 * time.Millisecond})
	r := inventory.NewRefresher(inventory.StaticTargets{{Region: "eu-west-1", API: factory.KMS(awsclient.Role{}, "eu-west-1")}}, newAuditor(), discard(), nil)
	ctx := ctxT(t)
	baseline := verdicts(r.Refresh(ctx))
	if len(baseline) != len(kmstest.MixedInventory) {
		t.Fatalf("baseline: %d keys", len(baseline))
	}

	scenarios := []struct {
		name   string
		faults []*kmstest.Fault
		// codes: error codes that must have been counted (any of them).
		codes []string
		// unknown: keys that must end unknown.
		unknown []string
	}{
		{name: "throttling bursts on 30% of calls", faults: []*kmstest.Fault{{Code: "ThrottlingException", Rate: 0.3}}, codes: []string{"ThrottlingException"}},
		{name: "5xx on 30% of calls", faults: []*kmstest.Fault{{Code: "KMSInternalException", Status: 500, Rate: 0.3}}, codes: []string{"KMSInternalException"}},
		{name: "slow responses past the client timeout", faults: []*kmstest.Fault{{Delay: time.Second, Rate: 0.2}}, codes: []string{"RequestTimeout"}},
		{name: "connection resets", faults: []*kmstest.Fault{{Reset: true, Rate: 0.3}}, codes: []string{"ConnectionError"}},
		{name: "access denied on one key", codes: []string{"AccessDeniedException"}, unknown: []string{ids["legacy-billing"]},
			faults: []*kmstest.Fault{{Op: "GetKeyRotationStatus", KeyID: ids["legacy-billing"], Code: "AccessDeniedException"}}},
		{name: "every call of one key throttled", codes: []string{"ThrottlingException"}, unknown: []string{ids["payments"]},
			faults: []*kmstest.Fault{{KeyID: ids["payments"], Code: "ThrottlingException"}}},
	}
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			proxy.ClearFaults()
			for _, f := range sc.faults {
				proxy.AddFault(f)
			}
			before := apiErrors(t, factory)
			s := r.Refresh(ctx)
			proxy.ClearFaults()

			got := verdicts(s)
			for key, want := range baseline {
				v, ok := got[key]
				switch {
				case !ok:
					t.Errorf("%s: missing from the snapshot", key)
				case v.Status != want.Status && v.Status != policy.Unknown:
					t.Errorf("%s: %s/%s under the fault, was %s/%s: a wrong verdict", key, v.Status, v.Reason, want.Status, want.Reason)
				}
			}
			for _, id := range sc.unknown {
				if v := got["eu-west-1/"+id]; v.Status != policy.Unknown {
					t.Errorf("%s: %s, want unknown", id, v.Status)
				}
			}
			after := apiErrors(t, factory)
			counted := false
			for _, code := range sc.codes {
				counted = counted || after[code] > before[code]
			}
			if !counted {
				t.Errorf("no error counted as %v: %v", sc.codes, after)
			}

			healed := r.Refresh(ctx)
			if !healed.Targets[0].Success {
				t.Errorf("refresh after the fault failed: %s", healed.Targets[0].Error)
			}
			for key, want := range baseline {
				if v := verdicts(healed)[key]; v != want {
					t.Errorf("%s after the fault: %s/%s, want %s/%s", key, v.Status, v.Reason, want.Status, want.Reason)
				}
			}
		})
	}
}

// TestFailingTargetsDoNotBlankOthers: an unreachable region and an account
// whose role cannot be assumed (STS AssumeRole denied) fail alone, and
// /metrics says so while it shows the healthy account's keys.
func TestFailingTargetsDoNotBlankOthers(t *testing.T) {
	srv, _ := kmstest.StartMixedT(t, "eu-west-1")
	proxy := kmstest.NewProxy(t, srv.URL)
	// STS goes to the proxy too, which denies AssumeRole.
	factory := awsclient.NewFactory(testConfig(proxy.URL), awsclient.Options{MaxConcurrency: 8, MaxAttempts: 2, Timeout: time.Second})
	denied := awsclient.Role{ARN: "arn:aws:iam::444455556666:role/kms-audit"}
	targets := inventory.StaticTargets{
		{Region: "eu-west-1", API: factory.KMS(awsclient.Role{}, "eu-west-1")},
		{Role: denied, Region: "eu-west-1", API: factory.KMS(denied, "eu-west-1")},
		{Region: "us-east-1", API: newFactory("http://127.0.0.1:1").KMS(awsclient.Role{}, "us-east-1")},
	}
	var log strings.Builder
	r := inventory.NewRefresher(targets, newAuditor(), slog.New(slog.NewTextHandler(&log, nil)), nil)
	s := r.Refresh(ctxT(t))
	m := scrape(t, s, r)
	for _, want := range []string{`account_id=444455556666 region=eu-west-1 role=` + denied.ARN, `account_id="" region=us-east-1 role="own credentials"`} {
		if !strings.Contains(log.String(), `msg="listing the keys of a region failed; its keys keep their last good verdicts (stale) for up to the staleness bound" `+want) {
			t.Errorf("no log line for the failing target %s:\n%s", want, log.String())
		}
	}
	for _, c := range []struct {
		series string
		want   float64
	}{
		{`kms_refresh_success{account_id="` + kmstest.DefaultAccount + `",region="eu-west-1"}`, 1},
		{`kms_refresh_success{account_id="444455556666",region="eu-west-1"}`, 0},
		{`kms_refresh_success{account_id="",region="us-east-1"}`, 0},
	} {
		if got, ok := m[c.series]; !ok || got != c.want {
			t.Errorf("%s = %v (shown: %v), want %v", c.series, got, ok, c.want)
		}
	}
	if n := len(m.compliance()); n != len(kmstest.MixedInventory) {
		t.Errorf("/metrics shows %d keys, want the healthy account's %d", n, len(kmstest.MixedInventory))
	}
	if len(s.Targets) != 3 {
		t.Fatalf("%d targets", len(s.Targets))
	}
	for _, st := range s.Targets {
		switch {
		case st.RoleARN == denied.ARN:
			if st.Success || !strings.Contains(st.Error, "AccessDenied") || st.AccountID != "444455556666" {
				t.Errorf("denied role: success=%v error=%q account=%q", st.Success, st.Error, st.AccountID)
			}
		case st.Region == "us-east-1":
			if st.Success || st.Error == "" {
				t.Errorf("unreachable region: success=%v error=%q", st.Success, st.Error)
			}
		default:
			if !st.Success || len(st.Keys) != len(kmstest.MixedInventory) {
				t.Errorf("healthy target: success=%v keys=%d", st.Success, len(st.Keys))
			}
		}
	}
}
