package remediate

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Routes of the remediation API.
const (
	PathRemediate    = "/api/v1/remediate"
	PathBulk         = "/api/v1/remediate/bulk"
	PathAlertmanager = "/api/v1/alertmanager"
)

// MaxBodyBytes bounds a request body; Alertmanager groups stay far below it.
const MaxBodyBytes = 256 << 10

// DefaultAlertNames are the alerts the webhook acts on when API.AlertNames is
// empty: those of the shipped rules that name a noncompliant key.
var DefaultAlertNames = []string{"KMSKeyRotationNoncompliant", "KMSKeyRotationPeriodAbovePolicy"}

// The budget of failed authentication attempts when API.AuthFailures is nil.
const (
	DefaultAuthFailuresPerSecond = 1
	DefaultAuthFailureBurst      = 5
)

var (
	errShuttingDown = errors.New("the exporter is shutting down")
	errTimedOut     = errors.New("the request's time (--remediation.timeout) ran out")
)

// API serves the remediation endpoints.
type API struct {
	// Remediator is nil when remediation is not enabled: every route then
	// answers 403 and changes nothing.
	Remediator *Remediator
	// TokenHash is the SHA-256 of the bearer token.
	TokenHash [32]byte
	// Limiter bounds accepted requests (beyond it: 429, or 503 for the
	// Alertmanager webhook, which Alertmanager retries). A webhook call's
	// first alert acted on is paid by the call, each further one takes its own.
	Limiter *rate.Limiter
	// AuthFailures bounds failed authentication attempts, apart from Limiter,
	// so that wrong tokens never spend the budget of the right one: within it
	// a failure is answered 401 and logged, beyond it 429, unlogged (the next
	// line says how many were not logged). Every failure is counted. Nil:
	// DefaultAuthFailuresPerSecond, burst DefaultAuthFailureBurst.
	AuthFailures *rate.Limiter
	// AlertNames are the alert names the webhook acts on; other alerts are
	// ignored. Empty: DefaultAlertNames.
	AlertNames []string
	// Timeout bounds the work of one request.
	Timeout time.Duration
	Logger  *slog.Logger

	once         sync.Once
	authFailures *rate.Limiter
	// stop ends the contexts of in-flight requests when Drain runs out of time.
	stop    context.Context
	stopAll context.CancelCauseFunc

	mu       sync.Mutex
	draining bool
	inflight sync.WaitGroup
	// unlogged counts failed authentication attempts not logged since the last line.
	unlogged int
}

func (a *API) init() {
	a.authFailures = a.AuthFailures
	if a.authFailures == nil {
		a.authFailures = rate.NewLimiter(DefaultAuthFailuresPerSecond, DefaultAuthFailureBurst)
	}
	a.stop, a.stopAll = context.WithCancelCause(context.Background())
}

// ReadToken reads a bearer token file: one line, without surrounding white
// space (empty lines are ignored). It returns the token's SHA-256, and a
// warning when group or others may read the file (a Kubernetes secret volume
// is 0644 unless its defaultMode says otherwise: not refused).
func ReadToken(path string) (hash [32]byte, warning string, err error) {
	f, err := os.Open(path)
	if err != nil {
		return hash, "", err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return hash, "", err
	}
	raw, err := io.ReadAll(f)
	if err != nil {
		return hash, "", err
	}
	var lines []string
	for _, l := range strings.Split(string(raw), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	switch {
	case len(lines) == 0:
		return hash, "", fmt.Errorf("%s is empty", path)
	case len(lines) > 1:
		return hash, "", fmt.Errorf("%s has %d non-empty lines: it must hold the token alone, on one line", path, len(lines))
	}
	if perm := info.Mode().Perm(); perm&0o044 != 0 {
		warning = fmt.Sprintf("%s may be read by group or others (mode %04o): chmod 600 it, unless access to it is controlled otherwise", path, perm)
	}
	return sha256.Sum256([]byte(lines[0])), warning, nil
}

// Register adds the routes to mux.
func (a *API) Register(mux *http.ServeMux) {
	a.once.Do(a.init)
	mux.Handle(PathRemediate, a.guard(a.single, http.StatusTooManyRequests))
	mux.Handle(PathBulk, a.guard(a.bulk, http.StatusTooManyRequests))
	// Alertmanager (0.25) retries 5xx answers only, and drops a 429.
	mux.Handle(PathAlertmanager, a.guard(a.alertmanager, http.StatusServiceUnavailable))
}

// Drain prepares the API for shutdown. New requests are answered 503 from
// now on; requests in flight go on until ctx is done, then their contexts
// are cancelled. It returns when every request in flight has finished its
// work, logged and counted its outcome (its answer is then being written:
// http.Server.Shutdown waits for that); the error says that requests had to
// be cancelled.
func (a *API) Drain(ctx context.Context) error {
	a.once.Do(a.init)
	a.mu.Lock()
	a.draining = true
	a.mu.Unlock()
	finished := make(chan struct{})
	go func() {
		a.inflight.Wait()
		close(finished)
	}()
	select {
	case <-finished:
		a.stopAll(errShuttingDown)
		return nil
	case <-ctx.Done():
	}
	a.stopAll(errShuttingDown)
	<-finished
	return fmt.Errorf("remediation requests in flight were cancelled: %w", context.Cause(ctx))
}

// enter counts a request in flight, unless the API is draining.
func (a *API) enter() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.draining {
		return false
	}
	a.inflight.Add(1)
	return true
}

type errorBody struct {
	Error string `json:"error"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// handler does the work of a route once the request passed the guard;
// body is the request's body, who names the requester.
type handler func(ctx context.Context, body []byte, who string) (int, any)

// guard applies, in order: enabled (403), not shutting down (503), POST only
// (405), bearer token (401; 429 beyond the failures' budget), rate limit
// (limited), JSON only (415), body size (413), timeout. Every answer is JSON;
// 429 and 503 carry Retry-After.
func (a *API) guard(h handler, limited int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var status int
		var v any
		switch {
		case a.Remediator == nil:
			status, v = http.StatusForbidden, errorBody{"remediation is not enabled (start the exporter with --remediation.enabled)"}
		case !a.enter():
			status, v = http.StatusServiceUnavailable, errorBody{"the exporter is shutting down: retry later"}
		default:
			func() {
				defer a.inflight.Done()
				status, v = a.handle(w, r, h, limited)
			}()
		}
		if status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable {
			w.Header().Set("Retry-After", "1")
		}
		writeJSON(w, status, v)
	})
}

// handle runs the checks after the first two, and the handler.
func (a *API) handle(w http.ResponseWriter, r *http.Request, h handler, limited int) (int, any) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return http.StatusMethodNotAllowed, errorBody{"only POST is allowed"}
	}
	who := "remote " + r.RemoteAddr
	if !a.authorized(r.Header.Get("Authorization")) {
		return a.unauthorized(w, who, r.URL.Path)
	}
	who += " with the remediation token"
	if a.Limiter != nil && !a.Limiter.Allow() {
		a.Remediator.Count(OutcomeRateLimited)
		return limited, errorBody{"too many remediation requests; retry later"}
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return http.StatusUnsupportedMediaType, errorBody{"Content-Type must be application/json"}
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return http.StatusRequestEntityTooLarge, errorBody{fmt.Sprintf("body larger than %d bytes", MaxBodyBytes)}
		}
		return http.StatusBadRequest, errorBody{"reading the body failed"}
	}
	// The request's work ends at its timeout, when its client goes, or when
	// Drain runs out of time.
	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)
	defer context.AfterFunc(a.stop, func() { cancel(context.Cause(a.stop)) })()
	ctx, cancelTimeout := context.WithTimeoutCause(ctx, a.Timeout, errTimedOut)
	defer cancelTimeout()
	return h(ctx, body, who)
}

// unauthorized answers a failed authentication attempt: counted always;
// within the failures' budget 401 and logged, beyond it 429 and not logged.
func (a *API) unauthorized(w http.ResponseWriter, who, path string) (int, any) {
	a.Remediator.Count(OutcomeUnauthorized)
	a.mu.Lock()
	allowed := a.authFailures.Allow()
	unlogged := a.unlogged
	if allowed {
		a.unlogged = 0
	} else {
		a.unlogged++
	}
	a.mu.Unlock()
	if !allowed {
		return http.StatusTooManyRequests, errorBody{"too many failed authentication attempts (missing or wrong bearer token); retry later"}
	}
	a.Logger.Warn("remediation request refused: missing or wrong bearer token", "by", who, "path", path,
		"failures_not_logged_before", unlogged)
	w.Header().Set("WWW-Authenticate", `Bearer realm="kms_exporter remediation"`)
	return http.StatusUnauthorized, errorBody{"missing or wrong bearer token"}
}

// authorized compares the bearer token in constant time (hashes of equal
// length); the scheme's name is case-insensitive (RFC 9110, 11.1).
func (a *API) authorized(header string) bool {
	scheme, token, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(token)))
	return subtle.ConstantTimeCompare(sum[:], a.TokenHash[:]) == 1
}

// decode reads exactly one JSON object into v, refusing unknown fields.
func decode(body []byte, v any) error {
	if b := bytes.TrimLeft(body, " \t\r\n"); len(b) == 0 || b[0] != '{' {
		return errors.New("the body must be a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("invalid JSON: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("invalid JSON: more than one value")
	}
	return nil
}

// ParseRequest reads a single-key request.
func ParseRequest(body []byte) (Request, error) {
	var req Request
	if err := decode(body, &req); err != nil {
		return Request{}, err
	}
	if req.KeyID == "" {
		return Request{}, errors.New("key_id is required")
	}
	if req.Region == "" && !strings.HasPrefix(req.KeyID, "arn:") {
		return Request{}, errors.New("region is required (or give the key ARN as key_id)")
	}
	return req, nil
}

// invalid answers a request that could not be read: 400 with the reason, counted.
func (a *API) invalid(err error) (int, any) {
	a.Remediator.Count(OutcomeInvalid)
	return http.StatusBadRequest, errorBody{err.Error()}
}

func (a *API) single(ctx context.Context, body []byte, who string) (int, any) {
	req, err := ParseRequest(body)
	if err != nil {
		return a.invalid(err)
	}
	res := a.Remediator.Remediate(ctx, req, who)
	return statusOf(res), res
}

// statusOf is the HTTP status of a result: the one place an outcome becomes
// a status code.
func statusOf(res Result) int {
	switch res.Outcome {
	case OutcomeEnabled, OutcomeDryRun:
		return http.StatusOK
	case OutcomeInvalid:
		return http.StatusBadRequest
	case OutcomeNotFound:
		return http.StatusNotFound
	case OutcomeNoAction, OutcomeInProgress:
		return http.StatusConflict
	case OutcomeIneligible:
		if res.stateConflict {
			return http.StatusConflict
		}
		return http.StatusUnprocessableEntity
	case OutcomeRateLimited:
		return http.StatusTooManyRequests
	case OutcomeCancelled:
		return http.StatusServiceUnavailable
	}
	// aws_error, verification_failed: AWS failed, or the work was cut short.
	if res.Interrupted {
		return http.StatusServiceUnavailable
	}
	return http.StatusBadGateway
}

// BulkResponse answers a bulk request.
type BulkResponse struct {
	Matched int      `json:"matched"`
	OK      int      `json:"ok"`
	Results []Result `json:"results"`
	// Error says why the request stopped before every key was handled.
	Error string `json:"error,omitempty"`
}

func (a *API) bulk(ctx context.Context, body []byte, who string) (int, any) {
	var sel Selector
	if err := decode(body, &sel); err != nil {
		return a.invalid(err)
	}
	results, err := a.Remediator.RemediateAll(ctx, sel, who)
	if errors.Is(err, ErrInvalidSelector) {
		return a.invalid(err)
	}
	resp := BulkResponse{Matched: len(results), Results: results}
	status := http.StatusOK
	for _, r := range results {
		if r.OK() {
			resp.OK++
		} else if statusOf(r) >= 500 {
			status = http.StatusBadGateway
		}
	}
	if err != nil {
		// Stopped between keys (timeout, shutdown): what was done is listed.
		resp.Error, status = err.Error(), http.StatusServiceUnavailable
	}
	if resp.Results == nil {
		resp.Results = []Result{}
	}
	return status, resp
}

// AlertmanagerPayload is the part of Alertmanager's webhook payload (version 4) used here.
type AlertmanagerPayload struct {
	Version string `json:"version"`
	Alerts  []struct {
		Status      string            `json:"status"`
		Labels      map[string]string `json:"labels"`
		Fingerprint string            `json:"fingerprint"`
	} `json:"alerts"`
}

// AlertResult answers one alert of a webhook call.
type AlertResult struct {
	Fingerprint string  `json:"fingerprint,omitempty"`
	Alertname   string  `json:"alertname,omitempty"`
	Action      string  `json:"action"` // remediated, ignored
	Reason      string  `json:"reason,omitempty"`
	Result      *Result `json:"result,omitempty"`
}

// ParseAlertmanager reads a webhook payload.
func ParseAlertmanager(body []byte) (AlertmanagerPayload, error) {
	var p AlertmanagerPayload
	// Alertmanager sends more fields than used here: unknown fields are fine.
	if err := json.Unmarshal(body, &p); err != nil {
		return p, fmt.Errorf("invalid JSON: %v", err)
	}
	if p.Version != "4" {
		return p, fmt.Errorf("unsupported webhook payload version %q (want \"4\")", p.Version)
	}
	return p, nil
}

func (a *API) alertmanager(ctx context.Context, body []byte, who string) (int, any) {
	p, err := ParseAlertmanager(body)
	if err != nil {
		return a.invalid(err)
	}
	names := a.AlertNames
	if len(names) == 0 {
		names = DefaultAlertNames
	}
	// The call paid for one action in the guard; each further one takes a
	// token of its own. Alerts refused before any AWS call cost nothing, so
	// that a retried group gets further each time.
	paid := true
	admit := func() bool {
		if paid {
			paid = false
			return true
		}
		return a.Limiter == nil || a.Limiter.Allow()
	}
	out := struct {
		Alerts []AlertResult `json:"alerts"`
	}{Alerts: []AlertResult{}}
	status, limited := http.StatusOK, 0
	for _, al := range p.Alerts {
		ar := AlertResult{Fingerprint: al.Fingerprint, Alertname: al.Labels["alertname"], Action: "ignored"}
		account, region, key := al.Labels["account_id"], al.Labels["region"], al.Labels["key_id"]
		switch {
		case al.Status != "firing":
			ar.Reason = "alert is " + al.Status
		case !slices.Contains(names, ar.Alertname):
			ar.Reason = fmt.Sprintf("alertname %q is not acted on (only %s)", ar.Alertname, strings.Join(names, ", "))
		case region == "" || key == "":
			ar.Reason = "alert has no region and key_id labels"
		default:
			res := a.Remediator.remediateOne(ctx, Request{AccountID: account, Region: region, KeyID: key}, who+" via alertmanager", admit)
			ar.Action, ar.Result = "remediated", &res
			switch {
			case res.OK():
			case res.Outcome == OutcomeRateLimited:
				// Ask Alertmanager to retry later: the budget is spent, not the request wrong.
				ar.Action, ar.Reason = "refused", res.Reason
				status, limited = http.StatusServiceUnavailable, limited+1
			case statusOf(res) >= 500:
				// Ask Alertmanager to retry: AWS failed (or the request was cut), not the request.
				ar.Action, ar.Reason = "failed", res.Reason
				status = max(status, statusOf(res))
			default:
				ar.Action, ar.Reason = "refused", res.Reason
			}
		}
		out.Alerts = append(out.Alerts, ar)
	}
	if limited > 0 {
		a.Logger.Warn("remediation of alerts deferred: over the rate limit (--remediation.requests-per-second)", "by", who+" via alertmanager", "alerts", limited)
	}
	return status, out
}
