package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/kms-exporter/kms_exporter/awsclient"
	"github.com/kms-exporter/kms_exporter/internal/kmstest"
	"github.com/kms-exporter/kms_exporter/inventory"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// regionRouter sends each request to the local-kms of the region it is
// signed for, after a fixed latency, as a distant AWS endpoint would answer.
func regionRouter(b *testing.B, latency time.Duration, upstreams map[string]string) *httptest.Server {
	proxies := map[string]*httputil.ReverseProxy{}
	for region, u := range upstreams {
		target, _ := url.Parse(u)
		proxies[region] = httputil.NewSingleHostReverseProxy(target)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, scope, _ := strings.Cut(r.Header.Get("Authorization"), "Credential=")
		parts := strings.Split(scope, "/")
		if len(parts) < 3 || proxies[parts[2]] == nil {
			http.Error(w, "no such region", http.StatusBadRequest)
			return
		}
		time.Sleep(latency)
		proxies[parts[2]].ServeHTTP(w, r)
	}))
	b.Cleanup(srv.Close)
	return srv
}

// BenchmarkBudget refreshes several regions of 10,000 keys each through a
// 20 ms router with a request budget per region, and reports how busy the
// budget was kept and how many calls were made against the minimum the
// verdicts need. KMS_BENCH_KEYS and KMS_BENCH_RPS change the size and budget.
func BenchmarkBudget(b *testing.B) {
	keysPerRegion := envInt("KMS_BENCH_KEYS", 10000)
	rps := float64(envInt("KMS_BENCH_RPS", 500))
	regions := []string{"eu-west-1", "us-east-1"}
	upstreams := map[string]string{}
	for _, region := range regions {
		srv, err := kmstest.Start(kmstest.Options{Region: region})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { srv.Close() })
		if _, err := kmstest.SeedSymmetric(context.Background(), srv.Client(), keysPerRegion, 8); err != nil {
			b.Fatal(err)
		}
		upstreams[region] = srv.URL
	}
	router := regionRouter(b, 20*time.Millisecond, upstreams)
	for b.Loop() {
		f := awsclient.NewFactory(aws.Config{Region: regions[0], BaseEndpoint: aws.String(router.URL),
			Credentials: credentials.NewStaticCredentialsProvider("x", "x", "")},
			awsclient.Options{RequestsPerSecond: rps, MaxConcurrency: 64, MaxAttempts: 3, Timeout: 30 * time.Second})
		var targets inventory.StaticTargets
		for _, region := range regions {
			targets = append(targets, inventory.Target{Region: region, API: f.KMS(awsclient.Role{}, region)})
		}
		a := auditor()
		a.Workers = 64
		r := inventory.NewRefresher(targets, a, slog.New(slog.NewTextHandler(io.Discard, nil)))
		start := time.Now()
		s := r.Refresh(context.Background())
		took := time.Since(start)
		for _, t := range s.Targets {
			if !t.Success || len(t.Keys) != keysPerRegion {
				b.Fatalf("%s: success=%v keys=%d", t.Region, t.Success, len(t.Keys))
			}
		}
		counts := f.Counts()
		calls := 0
		for _, n := range counts {
			calls += n
		}
		// The least the verdicts need, per region: the list pages, one
		// DescribeKey and one GetKeyRotationStatus per key, tags for the
		// half that does not rotate.
		pages := (keysPerRegion + 999) / 1000
		minimum := len(regions) * (pages + 1 + 2*keysPerRegion + keysPerRegion/2)
		ideal := float64(calls) / float64(len(regions)) / rps
		b.ReportMetric(took.Seconds(), "s/refresh")
		b.ReportMetric(float64(calls), "calls")
		b.ReportMetric(float64(minimum), "calls-minimum")
		b.ReportMetric(float64(calls)/float64(len(regions))/took.Seconds(), "req/s/region")
		b.ReportMetric(ideal/took.Seconds()*100, "%budget-busy")
		record("budget_refresh_s", took.Seconds())
		record("budget_calls", float64(calls))
		record("budget_minimum", float64(minimum))
		record("budget_rate", float64(calls)/float64(len(regions))/took.Seconds())
		record("budget_rps", rps)
		record("budget_busy", ideal/took.Seconds())
		record("budget_keys", float64(keysPerRegion*len(regions)))
		fmt.Fprintf(os.Stderr, "calls by operation: %v\n", counts)
	}
}
