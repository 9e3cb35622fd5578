package bench

import (
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kms-exporter/kms_exporter/collector"
	"github.com/kms-exporter/kms_exporter/model"
	"github.com/kms-exporter/kms_exporter/policy"
)

// syntheticSnapshot is n keys spread over regions, shaped like a real
// inventory: most symmetric and rotating, some not, aliases, dates.
func syntheticSnapshot(n int) *model.Snapshot {
	regions := []string{"eu-west-1", "eu-central-1", "us-east-1", "us-west-2", "ap-southeast-2"}
	s := &model.Snapshot{}
	per := n / len(regions)
	created := time.Date(2023, 5, 1, 0, 0, 0, 0, time.UTC)
	for _, region := range regions {
		t := &model.TargetState{AccountID: "111122223333", Region: region, Success: true,
			Duration: 40 * time.Second, LastSuccess: time.Now(), Keys: make([]*model.Key, per)}
		for i := range t.Keys {
			id := fmt.Sprintf("%08x-1111-4222-8333-%012x", i, i)
			k := model.Key{AccountID: t.AccountID, Region: region, ID: id,
				ARN:          "arn:aws:kms:" + region + ":111122223333:key/" + id,
				Aliases:      []string{fmt.Sprintf("alias/service-%d/data", i%500)},
				Meta:         policy.Meta{KeyManager: "CUSTOMER", KeySpec: "SYMMETRIC_DEFAULT", KeyUsage: "ENCRYPT_DECRYPT", KeyState: "Enabled", Origin: "AWS_KMS"},
				CreationDate: created.Add(time.Duration(i) * time.Minute)}
			switch i % 10 {
			case 0:
				k.Rotation = &policy.Rotation{}
				k.Verdict = policy.Verdict{Status: policy.Noncompliant, Reason: policy.ReasonRotationDisabled}
			case 1:
				k.Meta.KeySpec = "RSA_2048"
				k.Verdict = policy.Verdict{Status: policy.NotApplicable, Reason: policy.ReasonAsymmetric}
			default:
				k.Rotation = &policy.Rotation{Enabled: true, PeriodDays: 365, NextRotation: created.AddDate(1, 0, i%365)}
				k.Verdict = policy.Verdict{Status: policy.Compliant, Reason: policy.ReasonRotationEnabled}
			}
			t.Keys[i] = &k
		}
		s.Targets = append(s.Targets, t)
	}
	return s
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// BenchmarkScale reports, at 10k and 100k keys: the scrape time (gzip, as
// Prometheus asks), the time to build and encode the metrics once per
// refresh, and the memory the snapshot and its metrics keep, per key.
func BenchmarkScale(b *testing.B) {
	for _, n := range []int{10000, 100000} {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			base := heapInUse()
			s := syntheticSnapshot(n)
			snapshotBytes := heapInUse() - base
			c := collector.New(collector.Options{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
			start := time.Now()
			c.Publish(s)
			update := time.Since(start)
			total := heapInUse() - base
			reg := prometheus.NewRegistry()
			ts := httptest.NewServer(c.Handler(reg, slog.Default()))
			defer ts.Close()
			b.ResetTimer()
			ms, _ := scrapeLoop(b, ts.URL, "gzip")
			b.ReportMetric(ms, "ms/scrape")
			b.ReportMetric(update.Seconds(), "s-update")
			b.ReportMetric(float64(snapshotBytes)/float64(n), "B/key-snapshot")
			b.ReportMetric(float64(total)/float64(n), "B/key-total")
			record(fmt.Sprintf("scale_%d_scrape_ms", n), ms)
			record(fmt.Sprintf("scale_%d_update_s", n), update.Seconds())
			record(fmt.Sprintf("scale_%d_bytes_per_key", n), float64(total)/float64(n))
			record(fmt.Sprintf("scale_%d_snapshot_bytes_per_key", n), float64(snapshotBytes)/float64(n))
			runtime.KeepAlive(s)
		})
	}
}
