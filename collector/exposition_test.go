package collector

import (
	"bytes"
	"compress/gzip"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

func scrape(t *testing.T, h http.Handler, acceptEncoding string) (*http.Response, []byte) {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	if acceptEncoding != "" {
		req.Header.Set("Accept-Encoding", acceptEncoding)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	resp := rec.Result()
	body, _ := io.ReadAll(resp.Body)
	return resp, body
}

func TestHandlerServesRegistryAndSnapshot(t *testing.T) {
	reg := prometheus.NewRegistry()
	own := prometheus.NewCounter(prometheus.CounterOpts{Name: "kms_exporter_test_total", Help: "A metric of the exporter's own registry."})
	own.Add(3)
	reg.MustRegister(own)
	h := goldenCollector().Handler(reg, slog.Default())

	resp, plain := scrape(t, h, "")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Encoding") != "" {
		t.Fatalf("plain scrape: %d %v", resp.StatusCode, resp.Header)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Errorf("Content-Type %q", ct)
	}
	golden, err := os.ReadFile("fixtures/snapshot.prom")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasSuffix(plain, golden) || !bytes.HasPrefix(plain, []byte("# HELP kms_exporter_test_total")) {
		t.Errorf("plain body is not the registry's metrics followed by the snapshot's:\n%s", plain)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(plain))
	if err != nil {
		t.Fatalf("body does not parse: %v", err)
	}
	if _, ok := families["kms_key_compliance"]; !ok || families["kms_exporter_test_total"].GetMetric()[0].GetCounter().GetValue() != 3 {
		t.Errorf("families: %v", families)
	}

	for _, enc := range []string{"gzip", "deflate, gzip;q=0.5", "br, GZIP"} {
		resp, compressed := scrape(t, h, enc)
		if resp.Header.Get("Content-Encoding") != "gzip" {
			t.Errorf("%q: not gzip-encoded", enc)
			continue
		}
		if n, err := strconv.Atoi(resp.Header.Get("Content-Length")); err != nil || n != len(compressed) {
			t.Errorf("%q: Content-Length %q for %d bytes", enc, resp.Header.Get("Content-Length"), len(compressed))
		}
		br := bytes.NewReader(compressed)
		zr, err := gzip.NewReader(br)
		if err != nil {
			t.Fatal(err)
		}
		// One gzip member holds it all (readers that stop after the first,
		// as zlib-based ones do, see everything), and its CRC and length
		// check out (the reader verifies them at the end).
		zr.Multistream(false)
		unzipped, err := io.ReadAll(zr)
		if err != nil || !bytes.Equal(unzipped, plain) {
			t.Errorf("%q: gzip body differs from the plain one (%v)", enc, err)
		}
		if br.Len() != 0 {
			t.Errorf("%q: %d bytes after the first gzip member", enc, br.Len())
		}
	}
	if n, err := strconv.Atoi(resp.Header.Get("Content-Length")); err != nil || n != len(plain) {
		t.Errorf("plain: Content-Length %q for %d bytes", resp.Header.Get("Content-Length"), len(plain))
	}
	if resp, _ := scrape(t, h, "gzip;q=0"); resp.Header.Get("Content-Encoding") != "" {
		t.Error("gzip;q=0 must not be gzip-encoded")
	}
}

func TestHandlerBeforeFirstRefresh(t *testing.T) {
	resp, body := scrape(t, New(Options{}, slog.Default()).Handler(prometheus.NewRegistry(), slog.Default()), "gzip")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	zr, err := gzip.NewReader(bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(zr); err != nil || len(b) != 0 {
		t.Errorf("body %q, %v", b, err)
	}
}
