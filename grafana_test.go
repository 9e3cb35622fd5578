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

// exposedMetricNames lists every metric family the exporter serves (besides
// Go and process metrics): the snapshot's, from the golden exposition, and
// the registry's, gathered from the real collectors.
func exposedMetricNames(t *testing.T) map[string]bool {
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
