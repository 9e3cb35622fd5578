package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/kms-exporter/kms_exporter/awsclient"
	"github.com/kms-exporter/kms_exporter/collector"
	"github.com/kms-exporter/kms_exporter/inventory"
	"github.com/kms-exporter/kms_exporter/model"
)

var (
	wrkLatency  = regexp.MustCompile(`Latency\s+(\S+)\s+(\S+)\s+(\S+)`)
	wrkPercent  = regexp.MustCompile(`(?m)^\s+(50|90|99)%\s+(\S+)`)
	wrkRequests = regexp.MustCompile(`(\d+) requests in`)
	wrkErrors   = regexp.MustCompile(`(?m)^\s+(Socket errors|Non-2xx or 3xx responses):.*$`)
)

// BenchmarkLoad scrapes /metrics at 10,000 keys with 50 concurrent clients
// for 30 s (wrk, gzip as Prometheus asks) while refreshes run back to back
// against local-kms, and reports the latency and any error.
func BenchmarkLoad(b *testing.B) {
	wrk, err := exec.LookPath("wrk")
	if err != nil {
		b.Skip("wrk not installed (make bench installs it)")
	}
	srv := emulator(b)
	f := factory(srv.URL)
	c := collector.New(collector.Options{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	published := &countingPublisher{Collector: c}
	r := inventory.NewRefresher(inventory.StaticTargets{{Region: region, API: f.KMS(awsclient.Role{}, region)}},
		auditor(), slog.New(slog.NewTextHandler(io.Discard, nil)), published)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r.Refresh(ctx)
	before := published.n.Load()
	refreshes := make(chan struct{})
	go func() { r.Run(ctx, time.Millisecond); close(refreshes) }()
	reg := prometheus.NewRegistry()
	reg.MustRegister(f)
	ts := httptest.NewServer(promhttp.InstrumentMetricHandler(reg, c.Handler(reg, slog.Default())))
	defer ts.Close()
	duration := os.Getenv("KMS_BENCH_LOAD_DURATION")
	if duration == "" {
		duration = "30s"
	}
	for b.Loop() {
		out, err := exec.Command(wrk, "-t2", "-c50", "-d"+duration, "--latency", "-H", "Accept-Encoding: gzip", ts.URL+"/metrics").CombinedOutput()
		if err != nil {
			b.Fatalf("wrk: %v\n%s", err, out)
		}
		fmt.Fprintf(os.Stderr, "%s", out)
		if e := wrkErrors.FindAllString(string(out), -1); len(e) > 0 {
			b.Errorf("errors under load: %v", e)
		}
		if m := wrkLatency.FindStringSubmatch(string(out)); m != nil {
			record("load_latency_avg", parseWrkMillis(m[1]))
			record("load_latency_max", parseWrkMillis(m[3]))
		}
		for _, m := range wrkPercent.FindAllStringSubmatch(string(out), -1) {
			record("load_latency_p"+m[1], parseWrkMillis(m[2]))
		}
		if m := wrkRequests.FindStringSubmatch(string(out)); m != nil {
			n, _ := strconv.ParseFloat(m[1], 64)
			record("load_requests", n)
		}
	}
	cancel()
	<-refreshes
	record("load_refreshes", float64(published.n.Load()-before))
}

// parseWrkMillis reads wrk's durations (850.00us, 12.34ms, 1.02s) in milliseconds.
func parseWrkMillis(s string) float64 {
	for _, u := range []struct {
		suffix string
		factor float64
	}{{"us", 0.001}, {"ms", 1}, {"s", 1000}, {"m", 60000}} {
		if v, ok := trimSuffix(s, u.suffix); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f * u.factor
		}
	}
	return 0
}

func trimSuffix(s, suffix string) (string, bool) {
	if len(s) > len(suffix) && s[len(s)-len(suffix):] == suffix {
		if _, err := strconv.ParseFloat(s[:len(s)-len(suffix)], 64); err == nil {
			return s[:len(s)-len(suffix)], true
		}
	}
	return "", false
}

// countingPublisher counts the snapshots published to the collector.
type countingPublisher struct {
	*collector.Collector
	n atomic.Int32
}

func (p *countingPublisher) Publish(s *model.Snapshot) { p.n.Add(1); p.Collector.Publish(s) }
