package report

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kms-exporter/kms_exporter/model"
)

// enabled returns a report handler serving snapshot() at now.
func enabled() *Handler {
	return &Handler{Snapshot: snapshot, Now: func() time.Time { return now }}
}

type answer struct {
	code   int
	header http.Header
	body   string
}

func request(t *testing.T, h http.Handler, method, target string) answer {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, target, nil))
	body, _ := io.ReadAll(rec.Result().Body)
	return answer{rec.Code, rec.Result().Header, string(body)}
}

// refusal checks a JSON answer with its reason.
func (a answer) refusal(t *testing.T, code int, reason string) {
	t.Helper()
	var body struct{ Error string }
	if a.code != code || a.header.Get("Content-Type") != "application/json; charset=utf-8" || json.Unmarshal([]byte(a.body), &body) != nil ||
		!strings.Contains(body.Error, reason) {
		t.Errorf("want %d with a JSON reason naming %q, got %d %q: %s", code, reason, a.code, a.header.Get("Content-Type"), a.body)
	}
}

// secured checks the headers every answer of the route carries.
func (a answer) secured(t *testing.T) {
	t.Helper()
	for name, want := range map[string]string{"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
		"Content-Security-Policy": headerPolicy, "Referrer-Policy": "no-referrer"} {
		if got := a.header.Get(name); got != want {
			t.Errorf("%s: %q, want %q", name, got, want)
		}
	}
	if !strings.HasPrefix(a.header.Get("Content-Security-Policy"), "default-src 'none';") {
		t.Errorf("the policy does not refuse by default: %q", a.header.Get("Content-Security-Policy"))
	}
}

func TestHandlerDisabled(t *testing.T) {
	h := &Handler{}
	for _, method := range []string{http.MethodGet, http.MethodPost} {
		a := request(t, h, method, "/report")
		a.refusal(t, http.StatusNotFound, "--web.enable-report")
		a.secured(t)
	}
	if got := testutil.ToFloat64(h.Metrics().WithLabelValues("404")); got != 2 {
		t.Errorf("kms_report_requests_total{code=\"404\"} = %v, want 2", got)
	}
}

func TestHandlerBeforeTheFirstRefresh(t *testing.T) {
	ready := false
	h := enabled()
	h.Ready = func() bool { return ready }
	for _, target := range []string{"/report", "/report?format=csv"} {
		a := request(t, h, http.MethodGet, target)
		a.refusal(t, http.StatusServiceUnavailable, "no refresh has finished")
		a.secured(t)
		if a.header.Get("Retry-After") == "" {
			t.Errorf("%s: 503 without Retry-After", target)
		}
	}
	ready = true
	if a := request(t, h, http.MethodGet, "/report?format=csv"); a.code != http.StatusOK || !strings.Contains(a.body, "account_id") {
		t.Errorf("after the first refresh: %d %q", a.code, a.body)
	}
	for code, want := range map[string]float64{"200": 1, "503": 2} {
		if got := testutil.ToFloat64(h.Metrics().WithLabelValues(code)); got != want {
			t.Errorf("kms_report_requests_total{code=%q} = %v, want %v", code, got, want)
		}
	}
}

func TestHandlerRefuses(t *testing.T) {
	h := enabled()
	for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch, http.MethodOptions} {
		a := request(t, h, method, "/report")
		a.refusal(t, http.StatusMethodNotAllowed, "GET and HEAD")
		a.secured(t)
		if got := a.header.Get("Allow"); got != "GET, HEAD" {
			t.Errorf("%s: Allow %q", method, got)
		}
	}
	for _, format := range []string{"xml", "json", "CSV", "%3Cscript%3E"} {
		a := request(t, h, http.MethodGet, "/report?format="+format)
		a.refusal(t, http.StatusBadRequest, "unknown format")
		a.secured(t)
	}
	if strings.Contains(request(t, h, http.MethodGet, "/report?format=%3Cscript%3E").body, "<script>") {
		t.Error("the reason repeats the format unescaped")
	}
	for code, want := range map[string]float64{"200": 0, "400": 5, "404": 0, "405": 5} {
		if got := testutil.ToFloat64(h.Metrics().WithLabelValues(code)); got != want {
			t.Errorf("kms_report_requests_total{code=%q} = %v, want %v", code, got, want)
		}
	}
}

func TestHandlerServes(t *testing.T) {
	h := enabled()
	page := request(t, h, http.MethodGet, "/report")
	page.secured(t)
	if page.code != http.StatusOK || page.header.Get("Content-Type") != "text/html; charset=utf-8" {
		t.Fatalf("GET /report: %d %q", page.code, page.header.Get("Content-Type"))
	}
	if want := string(render(t, snapshot(), FormatHTML)); page.body != want {
		t.Errorf("the served page is not the audit command's:\n%s", page.body)
	}
	if got := request(t, h, http.MethodGet, "/report?format=html").body; got != page.body {
		t.Error("?format=html is not the page")
	}

	sheet := request(t, h, http.MethodGet, "/report?format=csv")
	sheet.secured(t)
	if sheet.code != http.StatusOK || sheet.header.Get("Content-Type") != "text/csv; charset=utf-8" ||
		sheet.header.Get("Content-Disposition") != `attachment; filename="kms-key-rotation-report-20260301T120000Z.csv"` {
		t.Errorf("GET /report?format=csv: %d %q %q", sheet.code, sheet.header.Get("Content-Type"), sheet.header.Get("Content-Disposition"))
	}
	if want := string(render(t, snapshot(), FormatCSV)); sheet.body != want {
		t.Errorf("the served CSV is not the audit command's:\n%s", sheet.body)
	}

	head := request(t, h, http.MethodHead, "/report?format=csv")
	if head.code != http.StatusOK || head.body != "" || head.header.Get("Content-Disposition") == "" {
		t.Errorf("HEAD: %d %q, body %q", head.code, head.header, head.body)
	}
	if got := testutil.ToFloat64(h.Metrics().WithLabelValues("200")); got != 4 {
		t.Errorf("kms_report_requests_total{code=\"200\"} = %v, want 4", got)
	}
}

// The report shows the snapshot current at each request, never a copy.
func TestHandlerFollowsTheSnapshot(t *testing.T) {
	latest := model.NewLatest(nil)
	h := &Handler{Snapshot: latest.Snapshot}
	if body := request(t, h, http.MethodGet, "/report").body; !strings.Contains(body, `id="no-targets"`) {
		t.Errorf("before the first refresh:\n%s", body)
	}
	latest.Publish(snapshot())
	if body := request(t, h, http.MethodGet, "/report?format=csv").body; !strings.Contains(body, staleKey.ID) {
		t.Errorf("after a refresh:\n%s", body)
	}
}
