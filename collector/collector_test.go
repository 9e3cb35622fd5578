package collector

import (
	"bytes"
	"flag"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	pmodel "github.com/prometheus/common/model"

	"github.com/kms-exporter/kms_exporter/internal/harness"
	"github.com/kms-exporter/kms_exporter/model"
	"github.com/kms-exporter/kms_exporter/policy"
)

var update = flag.Bool("update", false, "rewrite the golden files in fixtures/")

const account = "111122223333"

func symMeta(state string) policy.Meta {
	return policy.Meta{KeyManager: "CUSTOMER", KeySpec: "SYMMETRIC_DEFAULT", KeyUsage: "ENCRYPT_DECRYPT", KeyState: state, Origin: "AWS_KMS"}
}

func key(region, id string, meta policy.Meta, v policy.Verdict) model.Key {
	return model.Key{AccountID: account, Region: region, ID: id,
		ARN:  "arn:aws:kms:" + region + ":" + account + ":key/" + id,
		Meta: model.MetaOf(meta), Verdict: model.VerdictOf(v), CreationDate: time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)}
}

// goldenSnapshot has one key of every shape the collector renders.
func goldenSnapshot() *model.Snapshot {
	rotating := key("eu-west-1", "k-rotating", symMeta("Enabled"), policy.Verdict{Status: policy.Compliant, Reason: policy.ReasonRotationEnabled})
	rotating.Aliases = []string{"alias/a", "alias/b"}
	rotating.Rotation = &policy.Rotation{Enabled: true, PeriodDays: 365, NextRotation: time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)}
	rotating.TagValues = []string{"payments"}
	rotating.History = &policy.History{LastRotation: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), LastType: policy.RotationAutomatic, Automatic: 3, OnDemand: 2}

	off := key("eu-west-1", "k-off", symMeta("Enabled"), policy.Verdict{Status: policy.Noncompliant, Reason: policy.ReasonRotationDisabled})
	off.Rotation = &policy.Rotation{}
	off.History = &policy.History{} // never rotated: counts, no last rotation

	exempt := key("eu-west-1", "k-exempt", symMeta("Enabled"), policy.Verdict{Status: policy.Exempt, Reason: policy.ReasonExemptionTag,
		ExemptionReason: "vendor appliance", ExemptionExpiry: time.Date(2027, 4, 1, 0, 0, 0, 0, time.UTC)})
	exempt.Rotation = &policy.Rotation{}
	exempt.History = &policy.History{Error: "AccessDeniedException"} // not shown

	retired := key("eu-west-1", "k-retired", symMeta("PendingDeletion"), policy.Verdict{Status: policy.NotApplicable, Reason: policy.ReasonPendingDeletion})
	retired.DeletionDate = new(time.Date(2026, 12, 4, 0, 0, 0, 0, time.UTC))

	denied := model.Key{AccountID: account, Region: "eu-west-1", ID: "k-denied", ARN: "arn:aws:kms:eu-west-1:" + account + ":key/k-denied",
		Verdict: model.VerdictOf(policy.Verdict{Status: policy.Unknown, Reason: "AccessDeniedException"})}

	replica := key("us-east-1", "mrk-1", symMeta("Enabled"), policy.Verdict{Status: policy.Compliant, Reason: policy.ReasonRotationEnabled})
	replica.MultiRegion = &model.MultiRegion{Type: "REPLICA"}
	replica.Rotation = &policy.Rotation{Enabled: true}
	// Its region could not be listed since: it shows its last good verdict.
	replica.ReadError, replica.Stale = "RequestTimeout", true

	last := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	return &model.Snapshot{
		TagLabels: []string{"team"},
		Targets: []*model.TargetState{
			{AccountID: account, Region: "eu-west-1", Success: true, Duration: 1500 * time.Millisecond, LastSuccess: last,
				Keys: harness.Keys(denied, exempt, off, retired, rotating)},
			{AccountID: account, Region: "us-east-1", Success: false, Error: "ListKeys: RequestTimeout", Duration: 10 * time.Second,
				LastSuccess: last.Add(-time.Hour), Keys: harness.Keys(replica)},
			{AccountID: "444455556666", Region: "eu-west-1", Success: false, Error: "ListKeys: AccessDeniedException"},
		},
	}
}

func goldenCollector() *Collector {
	return publishedWith(Options{TagLabels: []string{"team"}}, goldenSnapshot())
}

func publishedWith(o Options, s *model.Snapshot) *Collector {
	c := New(o, slog.Default())
	c.Publish(s)
	return c
}

// body is what a plain scrape of c serves of the inventory.
func body(t *testing.T, c *Collector) []byte {
	t.Helper()
	resp, b := scrape(t, c.Handler(prometheus.NewRegistry(), slog.Default()), "")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	return b
}

// parse reads a text exposition, failing the test where it is not valid.
func parse(t *testing.T, b []byte) map[string]*dto.MetricFamily {
	t.Helper()
	parser := expfmt.NewTextParser(pmodel.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("the exposition does not parse: %v\n%s", err, b)
	}
	return families
}

func TestGoldenExposition(t *testing.T) {
	const golden = "fixtures/snapshot.prom"
	got := body(t, goldenCollector())
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("exposition differs from %s (go test ./collector -run TestGoldenExposition -update rewrites it):\n%s", golden, got)
	}
}

// TestPromtoolCheckMetrics runs the real promtool (Debian's prometheus
// package, installed by `make test`) on the exposition: it parses it and
// applies Prometheus's naming and HELP lint.
func TestPromtoolCheckMetrics(t *testing.T) {
	promtool := harness.Tool(t, "promtool")
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(body(t, goldenCollector()))
	res, err := cmd.CombinedOutput()
	if err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, res)
	}
}

func TestOneComplianceSeriesPerKey(t *testing.T) {
	s := goldenSnapshot()
	keys := 0
	for _, tg := range s.Targets {
		keys += len(tg.Keys)
	}
	families := parse(t, body(t, goldenCollector()))
	if n := len(families["kms_key_compliance"].GetMetric()); n != keys {
		t.Errorf("kms_key_compliance series = %d, want one per key (%d)", n, keys)
	}
	if n := len(families["kms_key_info"].GetMetric()); n != keys {
		t.Errorf("kms_key_info series = %d, want %d", n, keys)
	}
}

func TestHelpSaysCached(t *testing.T) {
	families := parse(t, body(t, goldenCollector()))
	if len(families) != len(FamilyNames()) {
		t.Errorf("%d families served, want every one of %v", len(families), FamilyNames())
	}
	for name, f := range families {
		if !strings.Contains(f.GetHelp(), "Cached") || f.GetType() != dto.MetricType_GAUGE {
			t.Errorf("%s: HELP %q (type %s) does not say the value is cached", name, f.GetHelp(), f.GetType())
		}
	}
}

func TestTagLabelName(t *testing.T) {
	for in, want := range map[string]string{"team": "tag_team", "cost-center": "tag_cost_center", "aws:cloudformation:stack-name": "tag_aws_cloudformation_stack_name"} {
		if got := TagLabelName(in); got != want {
			t.Errorf("TagLabelName(%q) = %q, want %q", in, got, want)
		}
	}
}

func labelValue(labels []*dto.LabelPair, name string) string {
	for _, l := range labels {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}
