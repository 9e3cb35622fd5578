package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/prometheus/client_golang/prometheus"
	versioncollector "github.com/prometheus/client_golang/prometheus/collectors/version"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/kms-exporter/kms_exporter/awsclient"
	"github.com/kms-exporter/kms_exporter/events"
	"github.com/kms-exporter/kms_exporter/internal/harness"
	"github.com/kms-exporter/kms_exporter/remediate"
)

const dashboardFile = "grafana/kms-rotation.json"

// goldenFamilies parses the golden exposition of the collector's tests.
func goldenFamilies(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	f, err := os.Open("collector/fixtures/snapshot.prom")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(f)
	if err != nil {
		t.Fatal(err)
	}
	return families
}

// exposedMetricNames lists every metric family the exporter serves (besides
// Go and process metrics): the snapshot's, from the golden exposition, and
// the registry's, gathered from the real collectors.
func exposedMetricNames(t *testing.T) map[string]bool {
	t.Helper()
	families := goldenFamilies(t)
	names := map[string]bool{}
	for n := range families {
		names[n] = true
	}
	factory := awsclient.NewFactory(aws.Config{Region: "eu-west-1"}, awsclient.Options{MaxConcurrency: 1, MaxAttempts: 1, Timeout: time.Second})
	factory.KMS(awsclient.Role{}, "eu-west-1")
	rem := &remediate.Remediator{Logger: slog.Default()}
	consumer, err := events.New(events.Options{QueueURLs: []string{"https://sqs.eu-west-1.amazonaws.com/111122223333/kms-events"},
		Clients: func(string) events.SQSAPI { return nil }, Sink: noSink{}})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(factory, rem.Metrics(), versioncollector.NewCollector("kms_exporter"), consumer)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		names[mf.GetName()] = true
		if mf.GetType() == dto.MetricType_HISTOGRAM {
			for _, suffix := range []string{"_bucket", "_count", "_sum"} {
				names[mf.GetName()+suffix] = true
			}
		}
	}
	return names
}

// noSink is a Sink of events never asked to mark anything.
type noSink struct{}

func (noSink) Mark(context.Context, events.KeyRef) (<-chan error, error) { return nil, nil }

var metricName = regexp.MustCompile(`\bkms_[a-z_]+\b`)

func TestDashboardParsesStrictly(t *testing.T) {
	raw, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	plugins.RegisterDefaultPlugins()
	var d dashboard.Dashboard
	if err := d.UnmarshalJSONStrict(raw); err != nil {
		// The SDK returns a typed-nil list of errors on success.
		var errs cog.BuildErrors
		if !errors.As(err, &errs) || len(errs) > 0 {
			t.Fatalf("strict parse: %v", err)
		}
	}
	var vars []string
	for _, v := range d.Templating.List {
		vars = append(vars, v.Name)
	}
	for _, want := range []string{"datasource", "job", "instance", "account_id", "region"} {
		if !slices.Contains(vars, want) {
			t.Errorf("dashboard lacks the $%s variable (has %v)", want, vars)
		}
	}
	if len(d.Panels) < 10 {
		t.Errorf("only %d panels", len(d.Panels))
	}
}

// TestDashboardQueries: every query parses as PromQL (promtool checks them as
// recording rules) and names only metrics the exporter exposes.
func TestDashboardQueries(t *testing.T) {
	exprs := harness.DashboardQueries(t, dashboardFile, "5m", "1h")
	exposed := exposedMetricNames(t)
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	i := 0
	for where, expr := range exprs {
		for _, name := range metricName.FindAllString(expr, -1) {
			if !exposed[name] {
				t.Errorf("%s: %s is not a metric the exporter exposes", where, name)
			}
		}
		i++
		quoted, _ := json.Marshal(expr)
		fmt.Fprintf(&rules, "      - record: dashboard:query_%d\n        expr: %s\n", i, quoted)
	}
	path := filepath.Join(t.TempDir(), "dashboard-queries.yml")
	if err := os.WriteFile(path, []byte(rules.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, ".", "promtool", "check", "rules", path)
}

// The golden exposition's dates (collector/fixtures/snapshot.prom): the
// dashboard is evaluated at its last refresh.
const (
	goldenNow          = 1795780800 // kms_last_refresh_timestamp_seconds, eu-west-1
	goldenCreated      = 1704164645 // kms_key_creation_timestamp_seconds of every key
	goldenLastRotation = 1767225600 // kms_key_last_rotation_timestamp_seconds of k-rotating
	goldenDeletion     = 1796342400 // kms_key_deletion_timestamp_seconds of k-retired
)

// goldenPanels are what the panels of the rotation evidence return from the
// golden exposition, by panel: the samples of each target, as promtool
// writes them. The end-to-end test cannot check them all (local-kms answers
// ListKeyRotations with 501, see e2e/e2e_test.go): these do. Material ages
// are those of the keys whose history was read (k-off: never rotated, from
// its creation; k-rotating: from its last rotation), not k-exempt's, in
// scope but not read.
var goldenPanels = map[string][][]promSample{
	"Oldest key material": {{{`{}`, goldenNow - goldenCreated}}},
	"Key material age": {{
		{`{account_id="111122223333", key_id="k-off", region="eu-west-1"}`, float64(goldenNow-goldenCreated) / 86400},
		{`{account_id="111122223333", key_id="k-rotating", region="eu-west-1"}`, float64(goldenNow-goldenLastRotation) / 86400},
	}},
	"Rotations by type": {{{`{rotation_type="automatic"}`, 3}, {`{rotation_type="on_demand"}`, 2}}},
	"Keys with the oldest key material": {{
		{`{account_id="111122223333", key_id="k-off", region="eu-west-1"}`, goldenNow - goldenCreated},
		{`{account_id="111122223333", alias="alias/a,alias/b", key_id="k-rotating", region="eu-west-1"}`, goldenNow - goldenLastRotation},
	}},
	"Last rotations": {{{`{account_id="111122223333", alias="alias/a,alias/b", key_id="k-rotating", region="eu-west-1"}`, goldenLastRotation * 1000}}},
	"On-demand rotations left": {{
		{`{account_id="111122223333", key_id="k-off", region="eu-west-1"}`, 25},
		{`{account_id="111122223333", alias="alias/a,alias/b", key_id="k-rotating", region="eu-west-1"}`, 23},
	}},
	"Keys pending deletion": {{{`{account_id="111122223333", key_id="k-retired", region="eu-west-1"}`, goldenDeletion * 1000}}},
}

type promSample struct {
	labels string
	value  float64
}

// TestDashboardOnGoldenExposition evaluates the dashboard's queries with
// promtool on the series of the golden exposition, at its last refresh:
// every query that names only metrics of the inventory returns data, and
// the panels of goldenPanels return exactly their samples.
func TestDashboardOnGoldenExposition(t *testing.T) {
	families := goldenFamilies(t)
	var b strings.Builder
	// Two samples per series, at 0 and at goldenNow; an evaluation interval
	// as long, so that promtool does not step through 57 years.
	fmt.Fprintf(&b, "rule_files: []\nevaluation_interval: %ds\ntests:\n  - interval: %ds\n    input_series:\n", goldenNow, goldenNow)
	for name, mf := range families {
		for _, m := range mf.GetMetric() {
			series := model.Metric{model.MetricNameLabel: model.LabelValue(name)}
			for _, l := range m.GetLabel() {
				if l.GetValue() != "" { // as Prometheus stores them
					series[model.LabelName(l.GetName())] = model.LabelValue(l.GetValue())
				}
			}
			v := strconv.FormatFloat(m.GetGauge().GetValue(), 'f', -1, 64)
			quoted, _ := json.Marshal(series.String())
			fmt.Fprintf(&b, "      - series: %s\n        values: '%s %s'\n", quoted, v, v)
		}
	}
	b.WriteString("    promql_expr_test:\n")
	exprTest := func(where, expr string, samples []promSample) {
		// The comment names the query in promtool's report.
		quoted, _ := json.Marshal("# " + where + "\n" + expr)
		fmt.Fprintf(&b, "      - expr: %s\n        eval_time: %ds\n        exp_samples:\n", quoted, goldenNow)
		for _, s := range samples {
			fmt.Fprintf(&b, "          - labels: '%s'\n            value: %s\n", s.labels, strconv.FormatFloat(s.value, 'g', -1, 64))
		}
	}
	checked := map[string]bool{}
	exprs := harness.DashboardQueries(t, dashboardFile, "5m", "1h")
	for where, expr := range exprs {
		names := metricName.FindAllString(expr, -1)
		inventory := len(names) > 0
		for _, n := range names {
			inventory = inventory && families[n] != nil
		}
		if inventory {
			exprTest(where, "count("+expr+") > bool 0", []promSample{{`{}`, 1}})
		}
		for title, targets := range goldenPanels {
			for i, samples := range targets {
				if where == fmt.Sprintf("panel %q, target %d", title, i) {
					exprTest(where, expr, samples)
					checked[where] = true
				}
			}
		}
	}
	for title, targets := range goldenPanels {
		for i := range targets {
			if where := fmt.Sprintf("panel %q, target %d", title, i); !checked[where] {
				t.Errorf("%s: no such query in %s", where, dashboardFile)
			}
		}
	}
	path := filepath.Join(t.TempDir(), "dashboard-golden.test.yml")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, filepath.Dir(path), "promtool", "test", "rules", filepath.Base(path))
}
