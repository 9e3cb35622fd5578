package main

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"golang.org/x/crypto/bcrypt"

	"github.com/kms-exporter/kms_exporter/internal/harness"
	"github.com/kms-exporter/kms_exporter/internal/kmstest"
)

// hostileReason is an exemption reason written to break out of the HTML
// report and to run as a spreadsheet formula.
const hostileReason = `=HYPERLINK("http://attacker.example/") <script>alert(1)</script>" onmouseover="alert(2)`

// startReportInventory starts local-kms with the mixed inventory and one key
// more, exempt with hostileReason; it returns the server and the key ids.
func startReportInventory(t *testing.T) (*kmstest.Server, map[string]string) {
	t.Helper()
	srv, ids := kmstest.StartMixedT(t, "eu-west-1")
	ctx := context.Background()
	c := srv.Client()
	out, err := c.CreateKey(ctx, &kms.CreateKeyInput{})
	if err != nil {
		t.Fatal(err)
	}
	id := aws.ToString(out.KeyMetadata.KeyId)
	if _, err := c.TagResource(ctx, &kms.TagResourceInput{KeyId: &id, Tags: []types.Tag{
		{TagKey: aws.String("kms-rotation-exempt"), TagValue: aws.String(hostileReason)}}}); err != nil {
		t.Fatal(err)
	}
	ids["hostile"] = id
	return srv, ids
}

// csvRows parses a CSV report into rows by key id, each cell by column.
func csvRows(t *testing.T, body string) map[string]map[string]string {
	t.Helper()
	rows, err := csv.NewReader(strings.NewReader(body)).ReadAll()
	if err != nil || len(rows) == 0 {
		t.Fatalf("not a CSV report (%v):\n%s", err, body)
	}
	out := map[string]map[string]string{}
	for _, row := range rows[1:] {
		cells := map[string]string{}
		for i, name := range rows[0] {
			cells[name] = row[i]
		}
		out[cells["key_id"]] = cells
	}
	return out
}

// checkCSVReport checks the CSV report of startReportInventory's keys.
func checkCSVReport(t *testing.T, body string, ids map[string]string) {
	t.Helper()
	rows := csvRows(t, body)
	if len(rows) != len(kmstest.MixedInventory)+1 {
		t.Errorf("%d keys in the CSV report, want %d:\n%s", len(rows), len(kmstest.MixedInventory)+1, body)
	}
	for _, k := range kmstest.MixedInventory {
		row := rows[ids[k.Name]]
		if row["status"] != k.Status || row["reason"] != k.Reason || row["aliases"] != "alias/"+k.Name {
			t.Errorf("%s: %v, want %s %s", k.Name, row, k.Status, k.Reason)
		}
	}
	if got := rows[ids["hostile"]]; got["status"] != "exempt" || got["exemption_reason"] != "'"+hostileReason {
		t.Errorf("the hostile exemption: %q, want it quoted (%q)", got["exemption_reason"], "'"+hostileReason)
	}
}

// checkHTMLReport checks the page holds every key, and the hostile
// exemption reason only as text.
func checkHTMLReport(t *testing.T, body string, ids map[string]string) {
	t.Helper()
	for name, id := range ids {
		if !strings.Contains(body, "<td>"+id+"</td>") {
			t.Errorf("the page has no row for %s (%s)", name, id)
		}
	}
	if strings.Count(body, "<script") != 1 || strings.Contains(body, `" onmouseover="`) {
		t.Errorf("the hostile exemption reason is markup in the page:\n%s", body)
	}
	if !strings.Contains(body, "&lt;script&gt;alert(1)&lt;/script&gt;") {
		t.Errorf("the page does not show the hostile exemption reason as text")
	}
}

func TestAuditReport(t *testing.T) {
	srv, ids := startReportInventory(t)
	out, errOut, code := runCLI(t, srv.URL, "audit", "--output=csv")
	if code != 1 {
		t.Errorf("csv audit with noncompliant keys: exit %d, want 1\n%s", code, errOut)
	}
	checkCSVReport(t, out, ids)

	out, errOut, code = runCLI(t, srv.URL, "audit", "--output=html")
	if code != 1 {
		t.Errorf("html audit with noncompliant keys: exit %d, want 1\n%s", code, errOut)
	}
	checkHTMLReport(t, out, ids)

	// KMS unreachable: an error, whatever the format.
	for _, format := range []string{"csv", "html"} {
		if _, _, code := runCLI(t, "http://127.0.0.1:1", "audit", "--aws.max-attempts=1", "--output="+format); code != 2 {
			t.Errorf("%s audit against a dead endpoint: exit %d, want 2", format, code)
		}
	}
}

// fetch sends a request, with basic auth when user is not empty.
func fetch(t *testing.T, method, url, user, password string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if user != "" {
		req.SetBasicAuth(user, password)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

// reason returns the error of a JSON refusal, or "" with its status when it is not one.
func reason(resp *http.Response, body string) string {
	var v struct{ Error string }
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") || json.Unmarshal([]byte(body), &v) != nil {
		return ""
	}
	return v.Error
}

// TestReportBeforeTheFirstRefresh: while the first refresh is under way the
// report answers 503, not an empty report an auditor could take for "no
// keys"; once it has finished, the keys.
func TestReportBeforeTheFirstRefresh(t *testing.T) {
	srv, _ := kmstest.StartMixedT(t, "eu-west-1")
	target, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	// KMS answers nothing until released: the first refresh cannot finish.
	release := make(chan struct{})
	proxy := httputil.NewSingleHostReverseProxy(target)
	gate := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(gate.Close)
	var once sync.Once
	open := func() { once.Do(func() { close(release) }) }
	t.Cleanup(open)
	// The held request must not time out into a failed (finished) refresh.
	p := start(t, gate.URL, "--aws.region=eu-west-1", "--web.enable-report", "--aws.timeout=10m")
	base := "http://" + p.addr
	harness.Poll(t, 30*time.Second, func() string {
		if resp, err := http.Get(base + "/-/healthy"); err != nil {
			return err.Error()
		} else if resp.Body.Close(); resp.StatusCode != http.StatusOK {
			return resp.Status
		}
		return ""
	})
	for _, path := range []string{"/report", "/report?format=csv"} {
		resp, body := fetch(t, http.MethodGet, base+path, "", "")
		if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(reason(resp, body), "no refresh has finished") {
			t.Errorf("GET %s during the first refresh: %s %q", path, resp.Status, body)
		}
	}
	open()
	harness.Poll(t, 60*time.Second, func() string {
		resp, body := fetch(t, http.MethodGet, base+"/report?format=csv", "", "")
		if resp.StatusCode != http.StatusOK {
			return resp.Status
		}
		if rows := csvRows(t, body); len(rows) != len(kmstest.MixedInventory) {
			return fmt.Sprintf("%d keys in the report, want %d", len(rows), len(kmstest.MixedInventory))
		}
		return ""
	})
}

func TestServeReport(t *testing.T) {
	srv, ids := startReportInventory(t)
	hash, err := bcrypt.GenerateFromPassword([]byte("evidence"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	webConfig := filepath.Join(t.TempDir(), "web.yml")
	if err := os.WriteFile(webConfig, []byte("basic_auth_users:\n  auditor: "+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := start(t, srv.URL, "--aws.region=eu-west-1", "--web.enable-report", "--web.config.file="+webConfig)
	base := "http://" + p.addr
	get := func(method, path string) (*http.Response, string) {
		return fetch(t, method, base+path, "auditor", "evidence")
	}
	ready := func() string {
		req, _ := http.NewRequest(http.MethodGet, base+"/-/ready", nil)
		req.SetBasicAuth("auditor", "evidence")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err.Error()
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return "/-/ready: " + resp.Status
		}
		return ""
	}
	harness.Poll(t, 30*time.Second, ready)
	// The report is behind the web configuration's authentication, as the metrics are.
	for _, path := range []string{"/report", "/report?format=csv", "/metrics"} {
		if resp, _ := fetch(t, http.MethodGet, base+path, "", ""); resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s without credentials: %d, want 401", path, resp.StatusCode)
		}
		if resp, _ := fetch(t, http.MethodGet, base+path, "auditor", "wrong"); resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s with a wrong password: %d, want 401", path, resp.StatusCode)
		}
	}

	resp, body := get(http.MethodGet, "/report")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/html; charset=utf-8" {
		t.Fatalf("GET /report: %s %q\n%s", resp.Status, resp.Header.Get("Content-Type"), body)
	}
	for name, want := range map[string]string{"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"} {
		if got := resp.Header.Get(name); got != want {
			t.Errorf("%s: %q, want %q", name, got, want)
		}
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.HasPrefix(csp, "default-src 'none'; script-src 'sha256-") {
		t.Errorf("Content-Security-Policy: %q", csp)
	}
	checkHTMLReport(t, body, ids)

	resp, body = get(http.MethodGet, "/report?format=csv")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/csv; charset=utf-8" ||
		!strings.HasPrefix(resp.Header.Get("Content-Disposition"), `attachment; filename="kms-key-rotation-report-`) {
		t.Fatalf("GET /report?format=csv: %s %q %q", resp.Status, resp.Header.Get("Content-Type"), resp.Header.Get("Content-Disposition"))
	}
	checkCSVReport(t, body, ids)

	resp, body = get(http.MethodPost, "/report")
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET, HEAD" || reason(resp, body) == "" {
		t.Errorf("POST /report: %s, Allow %q: %s", resp.Status, resp.Header.Get("Allow"), body)
	}
	if resp, body = get(http.MethodGet, "/report?format=pdf"); resp.StatusCode != http.StatusBadRequest || !strings.Contains(reason(resp, body), "csv") {
		t.Errorf("GET /report?format=pdf: %s: %s", resp.Status, body)
	}
	if resp, body = get(http.MethodGet, "/"); !strings.Contains(body, `href="/report"`) {
		t.Errorf("the landing page does not link the report: %s\n%s", resp.Status, body)
	}
	_, body = get(http.MethodGet, "/metrics")
	if !strings.Contains(body, `kms_report_requests_total{code="200"} 2`) || !strings.Contains(body, `kms_report_requests_total{code="405"} 1`) {
		t.Errorf("the report's requests are not counted:\n%s", grepLines(body, "kms_report_requests_total"))
	}
}

func TestReportOffByDefault(t *testing.T) {
	srv, _ := kmstest.StartMixedT(t, "eu-west-1")
	p := start(t, srv.URL, "--aws.region=eu-west-1")
	p.waitReady(t)
	base := "http://" + p.addr
	for _, method := range []string{http.MethodGet, http.MethodPost} {
		resp, body := fetch(t, method, base+"/report", "", "")
		if resp.StatusCode != http.StatusNotFound || !strings.Contains(reason(resp, body), "--web.enable-report") {
			t.Errorf("%s /report, not enabled: %s: %s", method, resp.Status, body)
		}
	}
	if _, body := fetch(t, http.MethodGet, base+"/", "", ""); strings.Contains(body, "/report") {
		t.Errorf("the landing page links the report, which is not enabled:\n%s", body)
	}
}

func grepLines(body, word string) string {
	return strings.Join(slices.DeleteFunc(strings.Split(body, "\n"), func(l string) bool { return !strings.Contains(l, word) }), "\n")
}
