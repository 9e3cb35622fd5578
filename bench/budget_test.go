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

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
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

// router stands for AWS in several accounts and regions: it answers STS
// AssumeRole with temporary keys naming the role's account, and sends each
// KMS request, after a fixed latency, to the local-kms of the account (from
// the access key) and region (from the signature) it is signed for.
func router(b *testing.B, latency time.Duration, upstreams map[string]string) *httptest.Server {
	proxies := map[string]*httputil.ReverseProxy{}
	for key, u := range upstreams {
		target, _ := url.Parse(u)
		proxies[key] = httputil.NewSingleHostReverseProxy(target)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(latency)
		if r.Header.Get("X-Amz-Target") == "" {
			body, _ := io.ReadAll(r.Body)
			form, _ := url.ParseQuery(string(body))
			account := strings.Split(form.Get("RoleArn"), ":")[4]
			w.Header().Set("Content-Type", "text/xml")
			fmt.Fprintf(w, `<AssumeRoleResponse><AssumeRoleResult><Credentials><AccessKeyId>ASIA%s</AccessKeyId><SecretAccessKey>s</SecretAccessKey>
<SessionToken>t</SessionToken><Expiration>2099-01-01T00:00:00Z</Expiration></Credentials>
<AssumedRoleUser><Arn>arn:aws:sts::%s:assumed-role/audit/kms_exporter</Arn><AssumedRoleId>AROA:x</AssumedRoleId></AssumedRoleUser>
</AssumeRoleResult></AssumeRoleResponse>`, account, account)
			return
		}
		_, scope, _ := strings.Cut(r.Header.Get("Authorization"), "Credential=")
		parts := strings.Split(scope, "/")
		if len(parts) < 3 {
			http.Error(w, "unsigned", http.StatusBadRequest)
			return
		}
		account := strings.TrimPrefix(parts[0], "ASIA")
		p := proxies[account+"/"+parts[2]]
		if p == nil {
			http.Error(w, "no such account and region", http.StatusBadRequest)
			return
		}
		p.ServeHTTP(w, r)
	}))
	b.Cleanup(srv.Close)
	return srv
}

// BenchmarkBudget refreshes 2 accounts (assumed roles) x 2 regions of 10,000
// keys each through a 20 ms router with a request budget per (account,
// region), and reports how busy the
// budget was kept and how many calls were made against the minimum the
// verdicts need. KMS_BENCH_KEYS and KMS_BENCH_RPS change the size and budget.
func BenchmarkBudget(b *testing.B) {
	keysPerRegion := envInt("KMS_BENCH_KEYS", 10000)
	rps := float64(envInt("KMS_BENCH_RPS", 250))
	regions := []string{"eu-west-1", "us-east-1"}
	accounts := []string{"444455556666", "777788889999"}
	upstreams := map[string]string{}
	var roles []awsclient.Role
	for _, account := range accounts {
		roles = append(roles, awsclient.Role{ARN: "arn:aws:iam::" + account + ":role/audit"})
		for _, region := range regions {
			srv, err := kmstest.Start(kmstest.Options{Region: region, Account: account})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { srv.Close() })
			if _, err := kmstest.SeedSymmetric(context.Background(), srv.Client(), keysPerRegion, 8); err != nil {
				b.Fatal(err)
			}
			upstreams[account+"/"+region] = srv.URL
		}
	}
	targetCount := len(accounts) * len(regions)
	endpoint := router(b, 20*time.Millisecond, upstreams)
	for b.Loop() {
		f := awsclient.NewFactory(awssdk.Config{Region: regions[0], BaseEndpoint: awssdk.String(endpoint.URL),
			Credentials: credentials.NewStaticCredentialsProvider("x", "x", "")},
			awsclient.Options{RequestsPerSecond: rps, MaxConcurrency: 64, MaxAttempts: 3, Timeout: 30 * time.Second})
		var targets inventory.StaticTargets
		for _, role := range roles {
			for _, region := range regions {
				targets = append(targets, inventory.Target{Role: role, Region: region, API: f.KMS(role, region)})
			}
		}
		a := auditor()
		a.Workers = 64
		r := inventory.NewRefresher(targets, a, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
		start := time.Now()
		s := r.Refresh(context.Background())
		took := time.Since(start)
		if len(s.Targets) != targetCount {
			b.Fatalf("%d targets, want %d", len(s.Targets), targetCount)
		}
		for _, t := range s.Targets {
			if !t.Success || len(t.Keys) != keysPerRegion {
				b.Fatalf("%s %s: success=%v keys=%d %s", t.AccountID, t.Region, t.Success, len(t.Keys), t.Error)
			}
		}
		counts := f.Counts()
		calls := 0
		for _, n := range counts {
			calls += n
		}
		// The least a first refresh makes, per region: the list pages,
		// one DescribeKey, one GetKeyRotationStatus and one ListKeyRotations
		// per key (every key is in scope, and the exporter reads a key's
		// rotation history when it first sees it), tags for the half that
		// does not rotate.
		pages := (keysPerRegion + 999) / 1000
		minimum := targetCount * (pages + 1 + 3*keysPerRegion + keysPerRegion/2)
		ideal := float64(calls) / float64(targetCount) / rps
		b.ReportMetric(took.Seconds(), "s/refresh")
		b.ReportMetric(float64(calls), "calls")
		b.ReportMetric(float64(minimum), "calls-minimum")
		b.ReportMetric(float64(calls)/float64(targetCount)/took.Seconds(), "req/s/target")
		b.ReportMetric(ideal/took.Seconds()*100, "%budget-busy")
		record("budget_refresh_s", took.Seconds())
		record("budget_calls", float64(calls))
		record("budget_minimum", float64(minimum))
		record("budget_rate", float64(calls)/float64(targetCount)/took.Seconds())
		record("budget_rps", rps)
		record("budget_busy", ideal/took.Seconds())
		record("budget_keys", float64(keysPerRegion*targetCount))
		fmt.Fprintf(os.Stderr, "calls by operation: %v\n", counts)
	}
}
