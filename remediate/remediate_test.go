package remediate_test

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/time/rate"

	"github.com/kms-exporter/kms_exporter/awsclient"
	"github.com/kms-exporter/kms_exporter/collector"
	"github.com/kms-exporter/kms_exporter/internal/harness"
	"github.com/kms-exporter/kms_exporter/internal/kmstest"
	"github.com/kms-exporter/kms_exporter/inventory"
	"github.com/kms-exporter/kms_exporter/policy"
	"github.com/kms-exporter/kms_exporter/remediate"
)

const (
	token   = "test-token-0123456789"
	region  = "eu-west-1"
	replica = "mrk-5ca1ab1e000000000000000000000001"
	account = kmstest.DefaultAccount
)

// hookedKMS runs the env's hook before each call reaches KMS.
type hookedKMS struct {
	remediate.KMS
	e *env
}

func (h hookedKMS) EnableKeyRotation(ctx context.Context, in *kms.EnableKeyRotationInput, opts ...func(*kms.Options)) (*kms.EnableKeyRotationOutput, error) {
	h.e.runHook(ctx, "EnableKeyRotation")
	return h.KMS.EnableKeyRotation(ctx, in, opts...)
}

func (h hookedKMS) GetKeyRotationStatus(ctx context.Context, in *kms.GetKeyRotationStatusInput, opts ...func(*kms.Options)) (*kms.GetKeyRotationStatusOutput, error) {
	h.e.runHook(ctx, "GetKeyRotationStatus")
	return h.KMS.GetKeyRotationStatus(ctx, in, opts...)
}

type env struct {
	t          *testing.T
	srv        *kmstest.Server
	proxy      *kmstest.Proxy
	ids        map[string]string
	refresher  *inventory.Refresher
	collector  *collector.Collector
	remediator *remediate.Remediator
	api        *remediate.API
	server     *httptest.Server
	logs       *remediate.LogBuffer

	mu   sync.Mutex
	hook func(ctx context.Context, op string)
}

func (e *env) setHook(h func(ctx context.Context, op string)) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.hook = h
}

func (e *env) runHook(ctx context.Context, op string) {
	e.mu.Lock()
	h := e.hook
	e.mu.Unlock()
	if h != nil {
		h(ctx, op)
	}
}

// setup runs local-kms with the mixed inventory behind the AWS-faithful
// proxy, a multi-Region replica (primary in us-east-1), one key whose status
// is unreadable, and the remediation API in front of an inventory refreshed once.
func setup(t *testing.T, configure func(*remediate.API)) *env {
	t.Helper()
	srv, ids := kmstest.StartMixedT(t, region)
	proxy := kmstest.NewProxy(t, srv.URL)
	proxy.AddFake(kmstest.MultiRegionKey(region, "us-east-1", account, replica, false))
	proxy.AddFake(kmstest.MultiRegionKey("us-east-1", "us-east-1", account, replica, false))
	c := kmstest.Client(proxy.URL, region)
	out, err := c.CreateKey(context.Background(), &kms.CreateKeyInput{})
	if err != nil {
		t.Fatal(err)
	}
	ids["unreadable"] = aws.ToString(out.KeyMetadata.KeyId)
	proxy.AddFault(&kmstest.Fault{Op: "GetKeyRotationStatus", KeyID: ids["unreadable"], Code: "AccessDeniedException"})

	factory := awsclient.NewFactory(aws.Config{Region: region, BaseEndpoint: aws.String(proxy.URL),
		Credentials: credentials.NewStaticCredentialsProvider("x", "x", "")},
		awsclient.Options{MaxConcurrency: 4, MaxAttempts: 2, Timeout: 5 * time.Second})
	logs := &remediate.LogBuffer{}
	logger := slog.New(slog.NewJSONHandler(logs, nil))
	pol := policy.Policy{MaxRotationPeriodDays: 365, ExemptionTag: "kms-rotation-exempt"}
	coll := collector.New(collector.Options{}, logger)
	refresher := inventory.NewRefresher(
		inventory.StaticTargets{{Region: region, API: factory.KMS(awsclient.Role{}, region)}},
		&inventory.Auditor{Policy: pol, Workers: 4, Now: time.Now}, logger, coll)
	refresher.Refresh(context.Background())
	e := &env{t: t, srv: srv, proxy: proxy, ids: ids, refresher: refresher, collector: coll, logs: logs}
	e.remediator = &remediate.Remediator{
		Inventory: refresher,
		Client:    func(arn, r string) remediate.KMS { return hookedKMS{factory.KMS(factory.Role(arn), r), e} },
		Policy:    pol, Logger: logger, Now: time.Now,
	}
	e.api = &remediate.API{Remediator: e.remediator, TokenHash: sha256.Sum256([]byte(token)), Timeout: 30 * time.Second, Logger: logger}
	if configure != nil {
		configure(e.api)
	}
	mux := http.NewServeMux()
	e.api.Register(mux)
	e.server = httptest.NewServer(mux)
	t.Cleanup(e.server.Close)
	return e
}

// send posts a JSON body with the token (or the given headers); it returns
// the status, the headers and the decoded answer. Safe in any goroutine.
func (e *env) send(path, body string, headers ...string) (int, http.Header, map[string]any, error) {
	req, err := http.NewRequest(http.MethodPost, e.server.URL+path, strings.NewReader(body))
	if err != nil {
		return 0, nil, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil || resp.Header.Get("Content-Type") != "application/json" {
		return resp.StatusCode, resp.Header, nil, fmt.Errorf("%s: answer is not JSON: %q", path, raw)
	}
	return resp.StatusCode, resp.Header, out, nil
}

// post is send for the test's goroutine.
func (e *env) post(path, body string, headers ...string) (int, map[string]any) {
	e.t.Helper()
	status, _, out, err := e.send(path, body, headers...)
	if err != nil {
		e.t.Fatal(err)
	}
	return status, out
}

func (e *env) request(name string, extra string) string {
	return `{"region":"` + region + `","key_id":"` + e.ids[name] + `"` + extra + `}`
}

func (e *env) verdict(id string) policy.Status {
	_, k := e.refresher.Snapshot().Locate(account, region, id)
	if k == nil {
		return ""
	}
	return k.Verdict.Get().Status
}

// rotation reads a key's rotation status from KMS with the SDK (through the
// proxy, which reports the period as AWS does).
func (e *env) rotation(id string) (bool, int32) {
	e.t.Helper()
	st, err := kmstest.Client(e.proxy.URL, region).GetKeyRotationStatus(context.Background(), &kms.GetKeyRotationStatusInput{KeyId: aws.String(id)})
	if err != nil {
		e.t.Fatalf("GetKeyRotationStatus %s: %v", id, err)
	}
	return st.KeyRotationEnabled, aws.ToInt32(st.RotationPeriodInDays)
}

func (e *env) enabled(id string) bool {
	e.t.Helper()
	on, _ := e.rotation(id)
	return on
}

func (e *env) counted(outcome string) float64 {
	return testutil.ToFloat64(e.remediator.Metrics().WithLabelValues(outcome))
}

func TestRefusedRequestsNeverCallAWS(t *testing.T) {
	e := setup(t, nil)
	legacy := e.ids["legacy-billing"]
	legacyARN := "arn:aws:kms:eu-west-1:" + account + ":key/" + legacy
	tests := []struct {
		name, body string
		status     int
		outcome    string
		reason     string
	}{
		{"invalid key id", `{"region":"eu-west-1","key_id":"not a key"}`, 400, "invalid_request", "not a KMS key id"},
		{"invalid region", `{"region":"mars","key_id":"` + legacy + `"}`, 400, "invalid_request", "not an AWS region"},
		{"invalid account", `{"account_id":"12345","region":"eu-west-1","key_id":"` + legacy + `"}`, 400, "invalid_request", "12-digit"},
		{"missing key id", `{"region":"eu-west-1"}`, 400, "", "key_id is required"},
		{"missing region", `{"key_id":"` + legacy + `"}`, 400, "", "region is required"},
		{"unknown field", `{"region":"eu-west-1","key_id":"` + legacy + `","force":true}`, 400, "", "unknown field"},
		{"not JSON", `{"region":`, 400, "", "invalid JSON"},
		{"null", `null`, 400, "", "JSON object"},
		{"two JSON values", e.request("legacy-billing", "") + `{"region":"eu-west-1"}`, 400, "", "more than one value"},
		{"JSON then a brace", e.request("legacy-billing", "") + ` }`, 400, "", "more than one value"},
		{"ARN of another service", `{"key_id":"arn:aws:s3:::bucket"}`, 400, "invalid_request", "not a KMS key ARN"},
		{"ARN of an alias", `{"key_id":"arn:aws:kms:eu-west-1:` + account + `:alias/legacy-billing"}`, 400, "invalid_request", "not a KMS key ARN"},
		{"ARN contradicting region", `{"region":"us-west-2","key_id":"` + legacyARN + `"}`, 400, "invalid_request", "contradicts"},
		{"ARN contradicting account", `{"account_id":"999999999999","key_id":"` + legacyARN + `"}`, 400, "invalid_request", "contradicts"},
		{"ARN in another partition", `{"key_id":"arn:aws-cn:kms:eu-west-1:` + account + `:key/` + legacy + `"}`, 404, "not_found", legacyARN},
		{"period below KMS minimum", e.request("legacy-billing", `,"rotation_period_days":30`), 400, "invalid_request", "outside KMS's 90..2560"},
		{"period above KMS maximum", e.request("legacy-billing", `,"rotation_period_days":2561`), 400, "invalid_request", "outside KMS's 90..2560"},
		{"period above policy", e.request("legacy-billing", `,"rotation_period_days":730`), 422, "ineligible", "exceeds the policy's 365"},
		{"period KMS's maximum, above policy", e.request("legacy-billing", `,"rotation_period_days":2560`), 422, "ineligible", "exceeds the policy's 365"},
		{"unknown key", `{"region":"eu-west-1","key_id":"00000000-0000-4000-8000-000000000000"}`, 404, "not_found", "no such key"},
		{"key in another region", `{"region":"us-west-2","key_id":"` + legacy + `"}`, 404, "not_found", "no such key"},
		{"asymmetric", e.request("signing-rsa", ""), 422, "ineligible", "not applicable: asymmetric"},
		{"ecc", e.request("signing-ecc", ""), 422, "ineligible", "not applicable: asymmetric"},
		{"hmac", e.request("webhook-hmac", ""), 422, "ineligible", "not applicable: hmac"},
		{"imported material", e.request("imported-material", ""), 422, "ineligible", "not applicable: external_origin"},
		{"disabled key", e.request("disabled", ""), 422, "ineligible", "not applicable: disabled"},
		{"pending deletion", e.request("retired", ""), 422, "ineligible", "not applicable: pending_deletion"},
		{"already compliant", e.request("payments", ""), 409, "no_action_needed", "already compliant"},
		{"exempt", e.request("vendor-appliance", ""), 409, "ineligible", "exempt: appliance cannot re-encrypt"},
		{"status unknown", e.request("unreadable", ""), 409, "ineligible", "verdict unknown (AccessDeniedException)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := e.post(remediate.PathRemediate, tt.body)
			if status != tt.status {
				t.Errorf("status %d, want %d: %v", status, tt.status, body)
			}
			if tt.outcome != "" && body["outcome"] != tt.outcome {
				t.Errorf("outcome %v, want %s: %v", body["outcome"], tt.outcome, body)
			}
			if reason := fmt.Sprint(body["error"], body["reason"]); !strings.Contains(reason, tt.reason) {
				t.Errorf("reason %q, want it to say %q", reason, tt.reason)
			}
		})
	}
	if n := e.proxy.Calls("EnableKeyRotation"); n != 0 {
		t.Errorf("EnableKeyRotation called %d times for refused requests", n)
	}
	if e.verdict(legacy) != policy.Noncompliant {
		t.Error("a refused request changed the inventory")
	}
	if got := e.counted(remediate.OutcomeInvalid); got != 16 {
		t.Errorf(`kms_remediations_total{result="invalid_request"} = %v, want 16`, got)
	}
}

func TestGuard(t *testing.T) {
	e := setup(t, func(a *remediate.API) {
		a.Limiter = rate.NewLimiter(rate.Every(time.Hour), 5)
		a.AuthFailures = rate.NewLimiter(rate.Every(time.Hour), 10)
	})
	body := e.request("legacy-billing", `,"dry_run":true`)
	do := func(method, contentType, auth, body string) (int, http.Header, string) {
		req, _ := http.NewRequest(method, e.server.URL+remediate.PathRemediate, strings.NewReader(body))
		if contentType != "" {
			req.Header.Set("Content-Type", contentType)
		}
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		if !json.Valid(raw) || resp.Header.Get("Content-Type") != "application/json" {
			t.Errorf("%s %s: answer is not JSON: %q", method, auth, raw)
		}
		return resp.StatusCode, resp.Header, string(raw)
	}
	if code, h, _ := do(http.MethodGet, "", "Bearer "+token, ""); code != 405 || h.Get("Allow") != "POST" {
		t.Errorf("GET: %d, Allow %q", code, h.Get("Allow"))
	}
	if code, h, _ := do(http.MethodPost, "application/json", "", body); code != 401 || h.Get("WWW-Authenticate") == "" {
		t.Errorf("no token: %d", code)
	}
	for _, bad := range []string{"Bearer wrong", "Bearer " + token + "x", "Basic " + token, token, "Bearer" + token, "Bearer"} {
		if code, _, _ := do(http.MethodPost, "application/json", bad, body); code != 401 {
			t.Errorf("%q: %d, want 401", bad, code)
		}
	}
	if strings.Contains(e.logs.String(), token) {
		t.Error("the token appears in the logs")
	}
	if code, _, _ := do(http.MethodPost, "text/plain", "Bearer "+token, body); code != 415 {
		t.Errorf("text/plain: %d, want 415", code)
	}
	big := `{"region":"eu-west-1","key_id":"` + strings.Repeat("a", remediate.MaxBodyBytes) + `"}`
	if code, _, _ := do(http.MethodPost, "application/json", "Bearer "+token, big); code != 413 {
		t.Errorf("large body: %d, want 413", code)
	}
	// The scheme's name is case-insensitive (RFC 9110, 11.1).
	for _, auth := range []string{"Bearer " + token, "bearer " + token, "BEARER  " + token} {
		if code, _, b := do(http.MethodPost, "application/json; charset=utf-8", auth, body); code != 200 {
			t.Errorf("%q: %d %s", strings.Replace(auth, token, "<token>", 1), code, b)
		}
	}
	// The limiter allowed 5 requests (text/plain, large body and the three above); the next is refused.
	if code, h, b := do(http.MethodPost, "application/json", "Bearer "+token, body); code != 429 || h.Get("Retry-After") == "" || !strings.Contains(b, "too many remediation requests") {
		t.Errorf("beyond the rate limit: %d %s", code, b)
	}
	if n := e.proxy.Calls("EnableKeyRotation"); n != 0 {
		t.Errorf("EnableKeyRotation called %d times", n)
	}
	if got := e.counted(remediate.OutcomeUnauthorized); got != 7 {
		t.Errorf(`kms_remediations_total{result="unauthorized"} = %v, want 7`, got)
	}
}

// TestFailedAuthenticationIsLimited: wrong tokens have their own budget:
// beyond it they are answered 429 and not logged one by one, always counted,
// and never spend the budget of the right token.
func TestFailedAuthenticationIsLimited(t *testing.T) {
	failures := rate.NewLimiter(rate.Every(time.Hour), 3)
	e := setup(t, func(a *remediate.API) {
		a.Limiter = rate.NewLimiter(rate.Every(time.Hour), 1)
		a.AuthFailures = failures
	})
	const refused = "remediation request refused: missing or wrong bearer token"
	for i := range 10 {
		status, h, body, err := e.send(remediate.PathRemediate, e.request("legacy-billing", `,"dry_run":true`), "Authorization", fmt.Sprintf("Bearer guess-%d", i))
		switch {
		case err != nil:
			t.Fatal(err)
		case i < 3 && status != 401:
			t.Errorf("failure %d: %d %v, want 401", i+1, status, body)
		case i >= 3 && (status != 429 || h.Get("Retry-After") == "" || !strings.Contains(fmt.Sprint(body["error"]), "too many failed authentication attempts")):
			t.Errorf("failure %d, beyond the failures' budget: %d %v", i+1, status, body)
		}
	}
	if n := len(e.logs.Lines(refused)); n != 3 {
		t.Errorf("%d log lines for 10 failures, want 3 (the failures' budget)", n)
	}
	if got := e.counted(remediate.OutcomeUnauthorized); got != 10 {
		t.Errorf(`kms_remediations_total{result="unauthorized"} = %v, want 10`, got)
	}
	// The right token still has its whole budget.
	if status, body := e.post(remediate.PathRemediate, e.request("legacy-billing", `,"dry_run":true`)); status != 200 {
		t.Errorf("the right token after 10 failures: %d %v", status, body)
	}
	if got := e.counted(remediate.OutcomeRateLimited); got != 0 {
		t.Errorf(`kms_remediations_total{result="rate_limited"} = %v, want 0`, got)
	}
	// Once the budget allows, the next line says how many were not logged.
	failures.SetLimit(rate.Inf)
	if status, _ := e.post(remediate.PathRemediate, e.request("legacy-billing", ""), "Authorization", "Bearer guess"); status != 401 {
		t.Errorf("failure within the budget again: %d", status)
	}
	lines := e.logs.Lines(refused)
	if last := lines[len(lines)-1]; last["failures_not_logged_before"] != 7.0 {
		t.Errorf("the next line: %v, want failures_not_logged_before 7", last)
	}
}

func TestDisabledAnswers403AndChangesNothing(t *testing.T) {
	e := setup(t, func(a *remediate.API) { a.Remediator = nil })
	for _, path := range []string{remediate.PathRemediate, remediate.PathBulk, remediate.PathAlertmanager} {
		status, body := e.post(path, e.request("legacy-billing", ""))
		if status != 403 || !strings.Contains(body["error"].(string), "not enabled") {
			t.Errorf("%s: %d %v", path, status, body)
		}
	}
	if n := e.proxy.Calls("EnableKeyRotation"); n != 0 {
		t.Errorf("EnableKeyRotation called %d times while disabled", n)
	}
}

func TestDryRunChangesNothing(t *testing.T) {
	e := setup(t, nil)
	id := e.ids["legacy-billing"]
	status, body := e.post(remediate.PathRemediate, e.request("legacy-billing", `,"dry_run":true`))
	if status != 200 || body["outcome"] != "dry_run" || body["dry_run"] != true || body["reason"] != "would enable rotation every 365 days" {
		t.Fatalf("dry run: %d %v", status, body)
	}
	// KMS's shortest period.
	if status, body := e.post(remediate.PathRemediate, e.request("legacy-billing", `,"rotation_period_days":90,"dry_run":true`)); status != 200 || body["reason"] != "would enable rotation every 90 days" {
		t.Errorf("dry run, 90 days: %d %v", status, body)
	}
	// By ARN, with the account and region it names.
	byARN := `{"account_id":"` + account + `","region":"eu-west-1","key_id":"arn:aws:kms:eu-west-1:` + account + `:key/` + id + `","dry_run":true}`
	if status, body := e.post(remediate.PathRemediate, byARN); status != 200 || body["outcome"] != "dry_run" || body["key_id"] != id {
		t.Errorf("dry run by ARN: %d %v", status, body)
	}
	if n := e.proxy.Calls("EnableKeyRotation"); n != 0 {
		t.Errorf("EnableKeyRotation called %d times in a dry run", n)
	}
	if e.enabled(id) {
		t.Error("KMS says rotation is enabled after a dry run")
	}
	if e.verdict(id) != policy.Noncompliant {
		t.Error("the inventory changed after a dry run")
	}
}

func TestRemediateVerifiesAndUpdatesSnapshot(t *testing.T) {
	e := setup(t, nil)
	id := e.ids["legacy-billing"]
	status, body := e.post(remediate.PathRemediate, e.request("legacy-billing", ""))
	if status != 200 || body["outcome"] != "enabled" || body["rotation_enabled"] != true || body["rotation_period_days"] != 365.0 ||
		body["verdict"] != "compliant" || body["next_rotation"] == nil {
		t.Fatalf("remediate: %d %v", status, body)
	}
	if on, days := e.rotation(id); !on || days != 365 {
		t.Errorf("KMS says rotation %v, every %d days", on, days)
	}
	// Shown at once, before any refresh.
	if v := e.verdict(id); v != policy.Compliant {
		t.Errorf("snapshot verdict %s, want compliant without waiting for a refresh", v)
	}
	rec := httptest.NewRecorder()
	e.collector.Handler(prometheus.NewRegistry(), slog.Default()).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	want := `kms_key_compliance{account_id="` + account + `",key_id="` + id + `",reason="rotation_enabled",region="eu-west-1",status="compliant"} 1`
	if !strings.Contains(rec.Body.String(), want) {
		t.Errorf("metrics do not show the key compliant: no %s", want)
	}
	// The next refresh agrees.
	e.refresher.Refresh(context.Background())
	if v := e.verdict(id); v != policy.Compliant {
		t.Errorf("after the next refresh: %s", v)
	}
	// A chosen period, below the policy, is set and verified (the proxy keeps it as AWS does).
	status, body = e.post(remediate.PathRemediate, e.request("old-exemption", `,"rotation_period_days":180`))
	if status != 200 || body["rotation_period_days"] != 180.0 {
		t.Errorf("period 180: %d %v", status, body)
	}
	if _, days := e.rotation(e.ids["old-exemption"]); days != 180 {
		t.Errorf("KMS says every %d days, want 180", days)
	}
	// One structured line per decision, counted.
	if n := len(e.logs.Lines("remediation")); n != 2 {
		t.Errorf("%d remediation log lines, want 2:\n%s", n, e.logs)
	}
	if got := e.counted(remediate.OutcomeEnabled); got != 2 {
		t.Errorf(`kms_remediations_total{result="enabled"} = %v, want 2`, got)
	}
}

// TestAWSCLISeesRemediation: Debian's AWS CLI, asking local-kms itself,
// agrees with the answers.
func TestAWSCLISeesRemediation(t *testing.T) {
	e := setup(t, nil)
	rotating := func(id string) bool {
		t.Helper()
		out := harness.AWSCLI(t, e.srv.URL, region, "kms", "get-key-rotation-status", "--key-id", id)
		var st struct{ KeyRotationEnabled bool }
		if err := json.Unmarshal(out, &st); err != nil {
			t.Fatalf("aws output %q: %v", out, err)
		}
		return st.KeyRotationEnabled
	}
	if status, body := e.post(remediate.PathRemediate, e.request("legacy-billing", "")); status != 200 {
		t.Fatalf("remediate: %d %v", status, body)
	}
	if status, body := e.post(remediate.PathRemediate, e.request("old-exemption", `,"dry_run":true`)); status != 200 {
		t.Fatalf("dry run: %d %v", status, body)
	}
	if !rotating(e.ids["legacy-billing"]) {
		t.Error("the AWS CLI does not see rotation enabled on the remediated key")
	}
	if rotating(e.ids["old-exemption"]) {
		t.Error("the AWS CLI sees rotation enabled after a dry run")
	}
}

func TestReplicaRemediatedThroughPrimary(t *testing.T) {
	e := setup(t, nil)
	status, body := e.post(remediate.PathRemediate, `{"region":"eu-west-1","key_id":"`+replica+`"}`)
	if status != 200 || body["outcome"] != "enabled" || body["acted_on_region"] != "us-east-1" || body["acted_on_key_id"] != replica {
		t.Fatalf("replica: %d %v", status, body)
	}
	if e.proxy.Fake("us-east-1", replica).Rotation["KeyRotationEnabled"] != true {
		t.Error("the primary in us-east-1 was not changed")
	}
	if e.verdict(replica) != policy.Compliant {
		t.Error("the replica is not shown compliant")
	}
}

// TestOneActionPerKey: five requests at once for one key, with different
// periods: one acts, the four others are refused with 409 while it does,
// without any AWS call.
func TestOneActionPerKey(t *testing.T) {
	e := setup(t, nil)
	id := e.ids["legacy-billing"]
	entered, release := make(chan struct{}, 5), make(chan struct{})
	var once sync.Once
	open := func() { once.Do(func() { close(release) }) }
	t.Cleanup(open)
	e.setHook(func(ctx context.Context, op string) {
		if op == "EnableKeyRotation" {
			entered <- struct{}{}
			select {
			case <-release:
			case <-ctx.Done():
			}
		}
	})
	type answer struct {
		status int
		body   map[string]any
		err    error
		period int
	}
	answers := make(chan answer, 5)
	for _, period := range []int{365, 300, 200, 180, 90} {
		go func() {
			status, _, body, err := e.send(remediate.PathRemediate, e.request("legacy-billing", fmt.Sprintf(`,"rotation_period_days":%d`, period)))
			answers <- answer{status, body, err, period}
		}()
	}
	// While the first holds the key, the four others are answered.
	deadline := time.After(60 * time.Second)
	for range 4 {
		select {
		case a := <-answers:
			reason, _ := a.body["reason"].(string)
			if a.err != nil || a.status != 409 || a.body["outcome"] != "in_progress" || !strings.Contains(reason, "another request is remediating this key") {
				t.Errorf("period %d: %d %v %v, want 409 in_progress", a.period, a.status, a.body, a.err)
			}
		case <-deadline:
			t.Fatalf("4 requests were not refused while another acted on the key (%d reached EnableKeyRotation)", len(entered))
		}
	}
	remediate.Await(t, entered, "a request reaching EnableKeyRotation")
	open()
	first := remediate.Await(t, answers, "the acting request's answer")
	if n := len(entered); n != 0 {
		t.Errorf("%d more requests reached EnableKeyRotation, want none", n)
	}
	if first.err != nil || first.status != 200 || first.body["outcome"] != "enabled" {
		t.Fatalf("the request that acted: %d %v %v", first.status, first.body, first.err)
	}
	if on, days := e.rotation(id); !on || int(days) != first.period {
		t.Errorf("KMS says rotation %v every %d days, want the acting request's %d", on, days, first.period)
	}
	if n := e.proxy.Calls("EnableKeyRotation"); n != 1 {
		t.Errorf("EnableKeyRotation reached KMS %d times, want 1", n)
	}
	if got := e.counted(remediate.OutcomeInProgress); got != 4 {
		t.Errorf(`kms_remediations_total{result="in_progress"} = %v, want 4`, got)
	}
}

// TestOwnerEnabledRotationMeanwhile: a key whose owner enabled rotation with
// a compliant period since the last refresh is left alone (its period is
// not lengthened) and shown compliant; one enabled with a period above the
// policy is remediated.
func TestOwnerEnabledRotationMeanwhile(t *testing.T) {
	e := setup(t, nil)
	c := kmstest.Client(e.proxy.URL, region)
	id := e.ids["legacy-billing"]
	if _, err := c.EnableKeyRotation(context.Background(), &kms.EnableKeyRotationInput{KeyId: aws.String(id), RotationPeriodInDays: aws.Int32(180)}); err != nil {
		t.Fatal(err)
	}
	status, body := e.post(remediate.PathRemediate, e.request("legacy-billing", ""))
	if status != 409 || body["outcome"] != "no_action_needed" || body["rotation_period_days"] != 180.0 || body["verdict"] != "compliant" ||
		!strings.Contains(fmt.Sprint(body["reason"]), "EnableKeyRotation was not called") {
		t.Errorf("rotation enabled meanwhile, every 180 days: %d %v", status, body)
	}
	if on, days := e.rotation(id); !on || days != 180 {
		t.Errorf("KMS says rotation %v every %d days, want 180 as the owner set", on, days)
	}
	if n := e.proxy.Calls("EnableKeyRotation"); n != 1 {
		t.Errorf("EnableKeyRotation called %d times, want 1 (the owner's)", n)
	}
	if v := e.verdict(id); v != policy.Compliant {
		t.Errorf("inventory verdict %s, want compliant from the status just read", v)
	}
	if got := e.counted(remediate.OutcomeNoAction); got != 1 {
		t.Errorf(`kms_remediations_total{result="no_action_needed"} = %v, want 1`, got)
	}

	old := e.ids["old-exemption"]
	if _, err := c.EnableKeyRotation(context.Background(), &kms.EnableKeyRotationInput{KeyId: aws.String(old), RotationPeriodInDays: aws.Int32(730)}); err != nil {
		t.Fatal(err)
	}
	if status, body := e.post(remediate.PathRemediate, e.request("old-exemption", "")); status != 200 || body["rotation_period_days"] != 365.0 {
		t.Errorf("rotation enabled meanwhile, every 730 days: %d %v", status, body)
	}
	if _, days := e.rotation(old); days != 365 {
		t.Errorf("KMS says every %d days, want the policy's 365", days)
	}
}

func TestAlertmanagerWebhook(t *testing.T) {
	e := setup(t, nil)
	alert := func(status, name, fingerprint, labels string) string {
		return `{"status":"` + status + `","labels":{"alertname":"` + name + `"` + labels + `},"annotations":{},"startsAt":"2026-11-27T00:00:00Z","endsAt":"0001-01-01T00:00:00Z","generatorURL":"http://prometheus","fingerprint":"` + fingerprint + `"}`
	}
	key := func(name string) string {
		return `,"account_id":"` + account + `","region":"eu-west-1","key_id":"` + e.ids[name] + `"`
	}
	payload := func(alerts ...string) string {
		return `{"version":"4","groupKey":"{}:{alertname=\"KMSKeyRotationNoncompliant\"}","truncatedAlerts":0,"status":"firing","receiver":"kms-remediation",
"groupLabels":{},"commonLabels":{},"commonAnnotations":{},"externalURL":"http://alertmanager","alerts":[` + strings.Join(alerts, ",") + `]}`
	}
	const noncompliant = "KMSKeyRotationNoncompliant"
	status, body := e.post(remediate.PathAlertmanager, payload(
		alert("firing", noncompliant, "a1", key("legacy-billing")),
		alert("firing", noncompliant, "a2", key("signing-rsa")),
		alert("resolved", noncompliant, "a3", key("old-exemption")),
		alert("firing", noncompliant, "a4", ""),
		alert("firing", "KMSExporterDown", "a5", key("old-exemption"))))
	if status != 200 {
		t.Fatalf("webhook: %d %v", status, body)
	}
	alerts := body["alerts"].([]any)
	want := []string{"remediated", "refused", "ignored", "ignored", "ignored"}
	if len(alerts) != len(want) {
		t.Fatalf("%d answers for %d alerts: %v", len(alerts), len(want), body)
	}
	for i, a := range alerts {
		if got := a.(map[string]any)["action"]; got != want[i] {
			t.Errorf("alert %d: %v, want %s (%v)", i, got, want[i], a)
		}
	}
	if reason := alerts[4].(map[string]any)["reason"]; !strings.Contains(fmt.Sprint(reason), `"KMSExporterDown" is not acted on`) {
		t.Errorf("KMSExporterDown: %v", reason)
	}
	if !e.enabled(e.ids["legacy-billing"]) || e.enabled(e.ids["old-exemption"]) {
		t.Error("only the firing, eligible alert's key may change")
	}
	// The names acted on are configurable.
	e.api.AlertNames = []string{"CustomRotationAlert"}
	status, body = e.post(remediate.PathAlertmanager, payload(
		alert("firing", noncompliant, "b1", key("old-exemption")),
		alert("firing", "CustomRotationAlert", "b2", key("old-exemption"))))
	if alerts := body["alerts"].([]any); status != 200 || len(alerts) != 2 || alerts[0].(map[string]any)["action"] != "ignored" ||
		alerts[1].(map[string]any)["action"] != "remediated" {
		t.Errorf("with AlertNames [CustomRotationAlert]: %d %v", status, body)
	}
	if !e.enabled(e.ids["old-exemption"]) {
		t.Error("the custom alert's key was not remediated")
	}
	if lines := e.logs.Lines("remediation of alerts deferred: over the rate limit (--remediation.requests-per-second)"); len(lines) != 0 {
		t.Errorf("nothing was deferred, yet: %v", lines)
	}
	if status, _ := e.post(remediate.PathAlertmanager, `{"version":"3","alerts":[]}`); status != 400 {
		t.Errorf("payload version 3: %d, want 400", status)
	}
}

// TestAlertmanagerRateLimitPerAlert: each alert acted on spends the rate
// limit; those beyond it are refused one by one, and the webhook answers 503
// so that Alertmanager (which retries 5xx only) retries. The retry gets
// further: alerts already handled cost nothing.
func TestAlertmanagerRateLimitPerAlert(t *testing.T) {
	limiter := rate.NewLimiter(rate.Every(time.Hour), 3)
	e := setup(t, func(a *remediate.API) { a.Limiter = limiter })
	c := kmstest.Client(e.proxy.URL, region)
	keys := []string{e.ids["legacy-billing"], e.ids["old-exemption"], replica}
	for range 6 {
		out, err := c.CreateKey(context.Background(), &kms.CreateKeyInput{})
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, aws.ToString(out.KeyMetadata.KeyId))
	}
	e.refresher.Refresh(context.Background())
	var alerts []string
	for _, k := range keys {
		alerts = append(alerts, `{"status":"firing","labels":{"alertname":"KMSKeyRotationNoncompliant","region":"eu-west-1","key_id":"`+k+`"}}`)
	}
	for len(alerts) < 2500 {
		alerts = append(alerts, `{"status":"firing","labels":{"alertname":"KMSExporterDown"}}`)
	}
	payload := `{"version":"4","alerts":[` + strings.Join(alerts, ",") + `]}`
	actions := func(body map[string]any) string {
		n := map[string]int{}
		for _, a := range body["alerts"].([]any) {
			a := a.(map[string]any)
			result, _ := a["result"].(map[string]any)
			n[fmt.Sprint(a["action"], "/", result["outcome"])]++
		}
		return fmt.Sprint(n)
	}

	status, h, body, err := e.send(remediate.PathAlertmanager, payload)
	if err != nil {
		t.Fatal(err)
	}
	// The call pays for the first action; two tokens are left for two more.
	want := "map[ignored/<nil>:2491 refused/rate_limited:6 remediated/enabled:3]"
	if status != 503 || h.Get("Retry-After") == "" || actions(body) != want {
		t.Errorf("2,500 alerts, 9 to act on, budget 3: %d %s, want 503 %s", status, actions(body), want)
	}
	if n := e.proxy.Calls("EnableKeyRotation"); n != 3 {
		t.Errorf("EnableKeyRotation called %d times, want 3", n)
	}
	if got := e.counted(remediate.OutcomeRateLimited); got != 6 {
		t.Errorf(`kms_remediations_total{result="rate_limited"} = %v, want 6`, got)
	}
	if lines := e.logs.Lines("remediation of alerts deferred: over the rate limit (--remediation.requests-per-second)"); len(lines) != 1 || lines[0]["alerts"] != 6.0 {
		t.Errorf("log lines for the deferred alerts: %v, want one, with alerts=6", lines)
	}
	// Over the limit, a whole call is answered 503 too, not 429 (which Alertmanager drops).
	if status, _, body, _ := e.send(remediate.PathAlertmanager, payload); status != 503 || !strings.Contains(fmt.Sprint(body["error"]), "too many remediation requests") {
		t.Errorf("a call over the limit: %d %v", status, body)
	}
	limiter.SetLimit(rate.Inf)
	status, body = e.post(remediate.PathAlertmanager, payload)
	want = "map[ignored/<nil>:2491 refused/no_action_needed:3 remediated/enabled:6]"
	if status != 200 || actions(body) != want {
		t.Errorf("the retry: %d %s, want 200 %s", status, actions(body), want)
	}
	for _, k := range keys[:2] {
		if !e.enabled(k) {
			t.Errorf("key %s not rotating after the retry", k)
		}
	}
}

func TestBulk(t *testing.T) {
	e := setup(t, nil)
	// Every noncompliant key only when asked for explicitly.
	for _, body := range []string{`{}`, `null`, ` null `, `[]`, `"all"`, `{"dry_run":true}`, `{"rotation_period_days":180}`} {
		status, answer := e.post(remediate.PathBulk, body)
		if reason := fmt.Sprint(answer["error"]); status != 400 || !strings.Contains(reason, "all_noncompliant") && !strings.Contains(reason, "JSON object") {
			t.Errorf("%s: %d %v, want 400", body, status, answer)
		}
	}
	if got := e.counted(remediate.OutcomeInvalid); got != 7 {
		t.Errorf(`kms_remediations_total{result="invalid_request"} = %v, want 7`, got)
	}
	if n := e.proxy.Calls("EnableKeyRotation"); n != 0 {
		t.Fatalf("EnableKeyRotation called %d times for refused selectors", n)
	}
	status, body := e.post(remediate.PathBulk, `{"all_noncompliant":true,"dry_run":true}`)
	if status != 200 || body["matched"] != 3.0 || body["ok"] != 3.0 {
		t.Errorf("all_noncompliant dry run: %d %v", status, body)
	}
	status, body = e.post(remediate.PathBulk, `{"alias_prefix":"alias/legacy","dry_run":true}`)
	if status != 200 || body["matched"] != 1.0 || body["ok"] != 1.0 {
		t.Fatalf("bulk dry run: %d %v", status, body)
	}
	status, body = e.post(remediate.PathBulk, `{"tag":"kms-rotation-exempt=migration window","dry_run":true}`)
	if status != 200 || body["matched"] != 1.0 {
		t.Errorf("bulk by tag: %d %v", status, body)
	}
	status, body = e.post(remediate.PathBulk, `{"account_id":"999999999999"}`)
	if status != 200 || body["matched"] != 0.0 || body["results"] == nil {
		t.Errorf("bulk in an account not audited: %d %v", status, body)
	}
	status, body = e.post(remediate.PathBulk, `{"region":"eu-west-1"}`)
	// legacy-billing, old-exemption and the replica are noncompliant.
	if status != 200 || body["matched"] != 3.0 || body["ok"] != 3.0 {
		t.Fatalf("bulk: %d %v", status, body)
	}
	if c := e.refresher.Snapshot().Counts(); c[policy.Noncompliant] != 0 {
		t.Errorf("%d keys still noncompliant", c[policy.Noncompliant])
	}
	for _, sel := range []string{`{"region":"nowhere"}`, `{"account_id":"1"}`, `{"all_noncompliant":true,"rotation_period_days":30}`} {
		if status, body := e.post(remediate.PathBulk, sel); status != 400 {
			t.Errorf("bad selector %s: %d %v", sel, status, body)
		}
	}
}

func TestAllowList(t *testing.T) {
	e := setup(t, nil)
	e.remediator.AllowAliasPrefixes = []string{"alias/team-a/"}
	e.remediator.AllowTags = []string{"kms-rotation-exempt"}
	// Refusals in a bulk answer are per key: the request itself succeeded.
	status, body := e.post(remediate.PathBulk, `{"all_noncompliant":true,"dry_run":true}`)
	if status != 200 || body["matched"] != 3.0 || body["ok"] != 1.0 {
		t.Errorf("bulk dry run with an allow-list: %d %v, want 200, 3 matched, 1 ok", status, body)
	}
	status, body = e.post(remediate.PathRemediate, e.request("legacy-billing", ""))
	if status != 422 || !strings.Contains(body["reason"].(string), "allow-list") {
		t.Errorf("outside the allow-list: %d %v", status, body)
	}
	// old-exemption carries the tag kms-rotation-exempt (expired): allowed by tag.
	if status, body := e.post(remediate.PathRemediate, e.request("old-exemption", "")); status != 200 {
		t.Errorf("allowed by tag: %d %v", status, body)
	}
	// legacy-billing is allowed by its alias's prefix.
	e.remediator.AllowAliasPrefixes = []string{"alias/legacy-"}
	if status, body := e.post(remediate.PathRemediate, e.request("legacy-billing", "")); status != 200 {
		t.Errorf("allowed by alias prefix: %d %v", status, body)
	}
}

func TestAWSFailuresAnswer502(t *testing.T) {
	e := setup(t, nil)
	legacy, old := e.ids["legacy-billing"], e.ids["old-exemption"]
	e.proxy.AddFault(&kmstest.Fault{Op: "EnableKeyRotation", KeyID: legacy, Code: "AccessDeniedException"})
	status, body := e.post(remediate.PathRemediate, e.request("legacy-billing", ""))
	if status != 502 || body["outcome"] != "aws_error" || body["reason"] != "EnableKeyRotation: AccessDeniedException" {
		t.Errorf("denied: %d %v", status, body)
	}
	if e.verdict(legacy) != policy.Noncompliant {
		t.Error("a failed remediation changed the inventory")
	}
	// The change is made but cannot be read back: not reported as success.
	e.setHook(func(_ context.Context, op string) {
		if op == "EnableKeyRotation" {
			e.proxy.AddFault(&kmstest.Fault{Op: "GetKeyRotationStatus", KeyID: old, Code: "ThrottlingException"})
		}
	})
	status, body = e.post(remediate.PathRemediate, e.request("old-exemption", ""))
	if status != 502 || body["outcome"] != "verification_failed" || body["reason"] != "EnableKeyRotation succeeded; GetKeyRotationStatus: ThrottlingException" {
		t.Errorf("unverifiable: %d %v", status, body)
	}
	// The status cannot be read before enabling: nothing is changed.
	e.setHook(nil)
	e.proxy.ClearFaults()
	calls := e.proxy.Calls("EnableKeyRotation")
	e.proxy.AddFault(&kmstest.Fault{Op: "GetKeyRotationStatus", KeyID: legacy, Code: "AccessDeniedException"})
	status, body = e.post(remediate.PathRemediate, e.request("legacy-billing", ""))
	if status != 502 || body["outcome"] != "aws_error" || body["reason"] != "GetKeyRotationStatus before enabling: AccessDeniedException: nothing was changed" {
		t.Errorf("status unreadable before enabling: %d %v", status, body)
	}
	if n := e.proxy.Calls("EnableKeyRotation"); n != calls {
		t.Errorf("EnableKeyRotation called although the status could not be read first")
	}
	// Alertmanager is asked to retry when AWS failed.
	e.proxy.ClearFaults()
	e.proxy.AddFault(&kmstest.Fault{Op: "EnableKeyRotation", KeyID: legacy, Code: "AccessDeniedException"})
	payload := `{"version":"4","alerts":[{"status":"firing","labels":{"alertname":"KMSKeyRotationNoncompliant","region":"eu-west-1","key_id":"` + legacy + `"}}]}`
	if status, body := e.post(remediate.PathAlertmanager, payload); status != 502 || body["alerts"].([]any)[0].(map[string]any)["action"] != "failed" {
		t.Errorf("webhook with an AWS failure: %d %v", status, body)
	}
	status, body = e.post(remediate.PathBulk, `{"alias_prefix":"alias/legacy"}`)
	if results, _ := body["results"].([]any); status != 502 || len(results) != 1 || results[0].(map[string]any)["outcome"] != "aws_error" {
		t.Errorf("bulk with an AWS failure: %d %v, want 502", status, body)
	}
	if got := e.counted(remediate.OutcomeFailed); got != 4 {
		t.Errorf(`kms_remediations_total{result="aws_error"} = %v, want 4`, got)
	}
}

// drainAfter starts a remediation of key, waits for ready (the request is
// at the point the test wants), then drains with a short deadline. It
// returns Drain's error and a channel with the client's answer.
func (e *env) drainAfter(key string, ready func()) (error, <-chan string) {
	e.t.Helper()
	answer := make(chan string, 1)
	go func() {
		status, _, body, err := e.send(remediate.PathRemediate, `{"region":"eu-west-1","key_id":"`+key+`"}`)
		answer <- fmt.Sprint(status, " ", body["outcome"], " ", body["reason"], " ", err)
	}()
	ready()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	return e.api.Drain(ctx), answer
}

// TestDrainCutsVerification: SIGTERM while a remediation verifies. Drain
// cancels the request when its time is up, and returns once the request
// logged and counted that EnableKeyRotation succeeded but was not verified;
// the client is told the same; the change is in KMS.
func TestDrainCutsVerification(t *testing.T) {
	e := setup(t, nil)
	id := e.ids["legacy-billing"]
	entered := make(chan struct{}, 1)
	var enabled atomic.Bool
	e.setHook(func(ctx context.Context, op string) {
		switch {
		case op == "EnableKeyRotation":
			enabled.Store(true)
		case op == "GetKeyRotationStatus" && enabled.Load():
			entered <- struct{}{}
			<-ctx.Done() // a verification that does not answer in time
		}
	})
	err, answer := e.drainAfter(id, func() { remediate.Await(t, entered, "the request reaching its verification") })
	if err == nil {
		t.Error("Drain: nil, want an error saying requests were cancelled")
	}
	const reason = "EnableKeyRotation succeeded; re-reading the status was cut short (the exporter is shutting down): rotation is probably enabled; not verified"
	// Logged and counted by the time Drain returned.
	lines := e.logs.Lines("remediation")
	if len(lines) != 1 || lines[0]["result"] != "verification_failed" || lines[0]["reason"] != reason || lines[0]["key_id"] != id {
		t.Errorf("log when Drain returned: %v, want one line: verification_failed, %q", lines, reason)
	}
	if got := e.counted(remediate.OutcomeVerificationFailed); got != 1 {
		t.Errorf(`kms_remediations_total{result="verification_failed"} = %v, want 1`, got)
	}
	if got, want := remediate.Await(t, answer, "the client's answer"), "503 verification_failed "+reason+" <nil>"; got != want {
		t.Errorf("the client's answer: %s, want %s", got, want)
	}
	if !e.enabled(id) {
		t.Error("KMS does not say rotation is enabled: the answer said it probably was")
	}
	status, body := e.post(remediate.PathRemediate, e.request("old-exemption", ""))
	if status != 503 || !strings.Contains(fmt.Sprint(body["error"]), "shutting down") {
		t.Errorf("a request after Drain: %d %v", status, body)
	}
}

// TestDrainCutsEnableKeyRotation: SIGTERM while EnableKeyRotation is slow
// to answer (the proxy holds it): the outcome says it was sent, and may
// have been applied.
func TestDrainCutsEnableKeyRotation(t *testing.T) {
	e := setup(t, nil)
	id := e.ids["legacy-billing"]
	e.proxy.AddFault(&kmstest.Fault{Op: "EnableKeyRotation", KeyID: id, Delay: 10 * time.Minute})
	err, answer := e.drainAfter(id, func() {
		harness.Poll(e.t, 60*time.Second, func() string {
			if e.proxy.Calls("EnableKeyRotation") == 0 {
				return "EnableKeyRotation not sent yet"
			}
			return ""
		})
	})
	if err == nil {
		t.Error("Drain: nil, want an error saying requests were cancelled")
	}
	const reason = "EnableKeyRotation was sent but its answer was cut short (the exporter is shutting down): rotation may be enabled; not verified"
	if lines := e.logs.Lines("remediation"); len(lines) != 1 || lines[0]["result"] != "verification_failed" || lines[0]["reason"] != reason {
		t.Errorf("log when Drain returned: %v, want verification_failed, %q", lines, reason)
	}
	if got := e.counted(remediate.OutcomeVerificationFailed); got != 1 {
		t.Errorf(`kms_remediations_total{result="verification_failed"} = %v, want 1`, got)
	}
	if got, want := remediate.Await(t, answer, "the client's answer"), "503 verification_failed "+reason+" <nil>"; got != want {
		t.Errorf("the client's answer: %s, want %s", got, want)
	}
}
