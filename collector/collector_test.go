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
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"

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
		Meta: meta, Verdict: v, CreationDate: time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)}
}

// goldenSnapshot has one key of every shape the collector renders.
func goldenSnapshot() *model.Snapshot {
	rotating := key("eu-west-1", "k-rotating", symMeta("Enabled"), policy.Verdict{Status: policy.Compliant, Reason: policy.ReasonRotationEnabled})
	rotating.Aliases = []string{"alias/a", "alias/b"}
	rotating.Rotation = &policy.Rotation{Enabled: true, PeriodDays: 365, NextRotation: time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)}
	rotating.TagValues = []string{"payments"}

	off := key("eu-west-1", "k-off", symMeta("Enabled"), policy.Verdict{Status: policy.Noncompliant, Reason: policy.ReasonRotationDisabled})
	off.Rotation = &policy.Rotation{}

	exempt := key("eu-west-1", "k-exempt", symMeta("Enabled"), policy.Verdict{Status: policy.Exempt, Reason: policy.ReasonExemptionTag,
		ExemptionReason: "vendor appliance", ExemptionExpiry: time.Date(2027, 4, 1, 0, 0, 0, 0, time.UTC)})
	exempt.Rotation = &policy.Rotation{}

	retired := key("eu-west-1", "k-retired", symMeta("PendingDeletion"), policy.Verdict{Status: policy.NotApplicable, Reason: policy.ReasonPendingDeletion})
	retired.DeletionDate = time.Date(2026, 12, 4, 0, 0, 0, 0, time.UTC)

	denied := model.Key{AccountID: account, Region: "eu-west-1", ID: "k-denied", ARN: "arn:aws:kms:eu-west-1:" + account + ":key/k-denied",
		Verdict: policy.Verdict{Status: policy.Unknown, Reason: "AccessDeniedException"}}

	replica := key("us-east-1", "mrk-1", symMeta("Enabled"), policy.Verdict{Status: policy.Compliant, Reason: policy.ReasonRotationEnabled})
	replica.MultiRegionType = "REPLICA"
	replica.Rotation = &policy.Rotation{Enabled: true}
	// Its region could not be listed since: it shows its last good verdict.
	replica.ReadError, replica.Stale = "RequestTimeout", true

	last := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	return &model.Snapshot{
		TagLabels: []string{"team"},
		Targets: []*model.TargetState{
			{AccountID: account, Region: "eu-west-1", Success: true, Duration: 1500 * time.Millisecond, LastSuccess: last,
				Keys: []model.Key{denied, exempt, off, retired, rotating}},
			{AccountID: account, Region: "us-east-1", Success: false, Error: "ListKeys: RequestTimeout", Duration: 10 * time.Second,
				LastSuccess: last.Add(-time.Hour), Keys: []model.Key{replica}},
			{AccountID: "444455556666", Region: "eu-west-1", Success: false, Error: "ListKeys: AccessDeniedException"},
		},
	}
}

func goldenCollector() *Collector {
	c := New([]string{"team"}, slog.Default())
	c.Publish(goldenSnapshot())
	return c
}

func TestGoldenExposition(t *testing.T) {
	const golden = "fixtures/snapshot.prom"
	c := goldenCollector()
	if *update {
		reg := prometheus.NewPedanticRegistry()
		reg.MustRegister(c)
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		for _, mf := range mfs {
			if _, err := expfmt.MetricFamilyToText(&buf, mf); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(golden, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.Open(golden)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := testutil.CollectAndCompare(c, f); err != nil {
		t.Error(err)
	}
}

func TestExpositionLint(t *testing.T) {
	problems, err := testutil.CollectAndLint(goldenCollector())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

// TestPromtoolCheckMetrics runs the real promtool (Debian's prometheus
// package, installed by `make test`) on the exposition.
func TestPromtoolCheckMetrics(t *testing.T) {
	promtool := harness.Tool(t, "promtool")
	out, err := os.ReadFile("fixtures/snapshot.prom")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(out)
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
	c := New(s.TagLabels, slog.Default())
	c.Publish(s)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	if n, err := testutil.GatherAndCount(reg, "kms_key_compliance"); err != nil || n != keys {
		t.Errorf("kms_key_compliance series = %d (%v), want one per key (%d)", n, err, keys)
	}
	if n, _ := testutil.GatherAndCount(reg, "kms_key_info"); n != keys {
		t.Errorf("kms_key_info series = %d, want %d", n, keys)
	}
}

func TestHelpSaysCached(t *testing.T) {
	ch := make(chan *prometheus.Desc, 32)
	New(nil, slog.Default()).Describe(ch)
	close(ch)
	for d := range ch {
		if !strings.Contains(d.String(), "Cached") {
			t.Errorf("HELP of %s does not say the value is cached", d)
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
