package remediate

import (
	"bytes"
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
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kms-exporter/kms_exporter/internal/harness"
	"github.com/kms-exporter/kms_exporter/model"
	"github.com/kms-exporter/kms_exporter/policy"
)

const unitAccount = "444455556666"

var unitPolicy = policy.Policy{MaxRotationPeriodDays: 365}

// fakeInventory serves a snapshot and publishes changes as the refresher
// does: a new snapshot whose changed keys carry the rotation read and the
// verdict policy.Decide gives for it. It counts publications.
type fakeInventory struct {
	mu        sync.Mutex
	snap      *model.Snapshot
	published int
	policy    policy.Policy // unitPolicy unless set
}

func (f *fakeInventory) Snapshot() *model.Snapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.snap
}

func (f *fakeInventory) ApplyRotationChanges(cs ...model.RotationChange) *model.Snapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.published++
	out := &model.Snapshot{}
	for _, t := range f.snap.Targets {
		cp := *t
		cp.Keys = make([]*model.Key, len(t.Keys))
		for i, old := range t.Keys {
			k := *old
			cp.Keys[i] = &k
			for _, c := range cs {
				if c.AccountID == k.AccountID && c.KeyID == k.ID {
					rot := c.Rotation
					k.Rotation = &rot
					k.Verdict = model.VerdictOf(policy.Decide(k.Input(), f.policy, c.At))
				}
			}
		}
		out.Targets = append(out.Targets, &cp)
	}
	f.snap = out
	return out
}

// fakeKMS answers as KMS does (docs/aws-semantics.md, "EnableKeyRotation"): EnableKeyRotation sets the
// flag and the period (365 when none is given), GetKeyRotationStatus reports
// them with the next rotation date. A replica's rotation is its primary's:
// keys are known by id, whatever the region. Knobs make it misbehave.
type fakeKMS struct {
	mu      sync.Mutex
	enabled map[string]int32 // key id: period, for keys that rotate
	calls   map[string]int
	// ignoreEnable answers EnableKeyRotation without changing anything.
	ignoreEnable bool
	// reportPeriod, when set, is the period GetKeyRotationStatus reports.
	reportPeriod *int32
	// hook runs before each call, outside the lock.
	hook func(ctx context.Context, op string)
}

func newFakeKMS() *fakeKMS { return &fakeKMS{enabled: map[string]int32{}, calls: map[string]int{}} }

func (f *fakeKMS) before(ctx context.Context, op string) {
	f.mu.Lock()
	f.calls[op]++
	hook := f.hook
	f.mu.Unlock()
	if hook != nil {
		hook(ctx, op)
	}
}

func (f *fakeKMS) Calls(op string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[op]
}

func (f *fakeKMS) EnableKeyRotation(ctx context.Context, in *kms.EnableKeyRotationInput, _ ...func(*kms.Options)) (*kms.EnableKeyRotationOutput, error) {
	f.before(ctx, "EnableKeyRotation")
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.ignoreEnable {
		f.enabled[*in.KeyId] = aws.ToInt32(in.RotationPeriodInDays)
		if in.RotationPeriodInDays == nil {
			f.enabled[*in.KeyId] = 365
		}
	}
	return &kms.EnableKeyRotationOutput{}, nil
}

func (f *fakeKMS) GetKeyRotationStatus(ctx context.Context, in *kms.GetKeyRotationStatusInput, _ ...func(*kms.Options)) (*kms.GetKeyRotationStatusOutput, error) {
	f.before(ctx, "GetKeyRotationStatus")
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	p, ok := f.enabled[*in.KeyId]
	out := &kms.GetKeyRotationStatusOutput{KeyId: in.KeyId, KeyRotationEnabled: ok}
	if ok {
		if f.reportPeriod != nil {
			p = *f.reportPeriod
		}
		out.RotationPeriodInDays = aws.Int32(p)
		out.NextRotationDate = aws.Time(time.Now().Add(time.Duration(p) * 24 * time.Hour))
	}
	return out, nil
}

func noncompliant(id string) model.Key {
	return model.Key{AccountID: unitAccount, Region: "eu-west-1", ID: id,
		ARN:     "arn:aws:kms:eu-west-1:" + unitAccount + ":key/" + id,
		Meta:    model.MetaOf(policy.Meta{KeyManager: "CUSTOMER", KeySpec: "SYMMETRIC_DEFAULT", KeyState: "Enabled", Origin: "AWS_KMS"}),
		Verdict: model.VerdictOf(policy.Verdict{Status: policy.Noncompliant, Reason: policy.ReasonRotationDisabled})}
}

func newRemediator(inv Inventory, api KMS) *Remediator {
	return &Remediator{Inventory: inv, Client: func(string, string) KMS { return api },
		Policy: unitPolicy, Logger: slog.New(slog.NewJSONHandler(&LogBuffer{}, nil)), Now: time.Now}
}

func unitKeys(ids ...string) *fakeInventory {
	var keys []*model.Key
	for _, id := range ids {
		k := noncompliant(id)
		keys = append(keys, &k)
	}
	return &fakeInventory{policy: unitPolicy, snap: &model.Snapshot{Targets: []*model.TargetState{{
		AccountID: unitAccount, Region: "eu-west-1", Success: true, Keys: keys}}}}
}

const unitToken = "unit-token"

// unitAPI serves the remediation API over a fake inventory and KMS.
type unitAPI struct {
	t   *testing.T
	url string
	api *API
	rem *Remediator
}

func startAPI(t *testing.T, rem *Remediator) *unitAPI {
	t.Helper()
	a := &API{Remediator: rem, TokenHash: sha256.Sum256([]byte(unitToken)), Timeout: 30 * time.Second, Logger: rem.Logger}
	mux := http.NewServeMux()
	a.Register(mux)
	ts := httptest.NewServer(mux)
	t.Cleanup(ts.Close)
	return &unitAPI{t: t, url: ts.URL, api: a, rem: rem}
}

// send posts a JSON body with the token; it returns the status and the
// decoded answer. Safe in any goroutine.
func (u *unitAPI) send(path, body string) (int, map[string]any, error) {
	req, err := http.NewRequest(http.MethodPost, u.url+path, strings.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+unitToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		return resp.StatusCode, nil, fmt.Errorf("answer is not JSON: %q", raw)
	}
	return resp.StatusCode, out, nil
}

func (u *unitAPI) post(path, body string) (int, map[string]any) {
	u.t.Helper()
	status, out, err := u.send(path, body)
	if err != nil {
		u.t.Fatal(err)
	}
	return status, out
}

func (u *unitAPI) counted(outcome string) float64 {
	return testutil.ToFloat64(u.rem.Metrics().WithLabelValues(outcome))
}

func TestAssumedRoleAndBulkPublishOnce(t *testing.T) {
	role := "arn:aws:iam::444455556666:role/kms-audit"
	inv := &fakeInventory{policy: unitPolicy, snap: &model.Snapshot{Targets: []*model.TargetState{{
		AccountID: unitAccount, Region: "eu-west-1", RoleARN: role, Success: true,
		Keys: harness.Keys(
			noncompliant("11111111-1111-4111-8111-111111111111"),
			noncompliant("22222222-2222-4222-8222-222222222222"),
			noncompliant("33333333-3333-4333-8333-333333333333"),
		),
	}}}}
	api := newFakeKMS()
	var mu sync.Mutex
	var roles []string
	r := newRemediator(inv, api)
	r.Client = func(ro, _ string) KMS { mu.Lock(); roles = append(roles, ro); mu.Unlock(); return api }
	results, err := r.RemediateAll(context.Background(), Selector{AllNoncompliant: true}, "test")
	if err != nil || len(results) != 3 {
		t.Fatalf("%d results, %v", len(results), err)
	}
	// The verdict is the one the published status (enabled, 365 days) gets.
	for _, res := range results {
		if res.Outcome != OutcomeEnabled || res.Verdict != "compliant" || res.RotationPeriodDays != 365 {
			t.Errorf("%s: %s %s, %d days (%s)", res.KeyID, res.Outcome, res.Verdict, res.RotationPeriodDays, res.Reason)
		}
	}
	if c := inv.Snapshot().Counts(); c[policy.Compliant] != 3 {
		t.Errorf("published snapshot counts %v, want 3 compliant", c)
	}
	if inv.published != 1 {
		t.Errorf("published %d snapshots for one bulk request, want 1", inv.published)
	}
	for _, ro := range roles {
		if ro != role {
			t.Errorf("client asked for role %q, want the target's %q", ro, role)
		}
	}
	if len(api.enabled) != 3 || api.enabled["11111111-1111-4111-8111-111111111111"] != 365 {
		t.Errorf("EnableKeyRotation calls: %v", api.enabled)
	}
}

// TestEnableKeyRotationRateLimited: a bulk remediation paces its
// EnableKeyRotation calls per account and region (a lower bound on time,
// which a slow machine cannot break).
func TestEnableKeyRotationRateLimited(t *testing.T) {
	var ids []string
	for i := range 6 {
		ids = append(ids, fmt.Sprintf("%08d-1111-4111-8111-111111111111", i))
	}
	inv := unitKeys(ids...)
	api := newFakeKMS()
	r := newRemediator(inv, api)
	r.EnablesPerSecond = 10
	start := time.Now()
	results, err := r.RemediateAll(context.Background(), Selector{AllNoncompliant: true}, "test")
	if err != nil || len(results) != 6 || len(api.enabled) != 6 {
		t.Fatalf("%d results, %d enabled, %v", len(results), len(api.enabled), err)
	}
	// One at once, then 5 more at 10/s: at least 0.5 s.
	if took := time.Since(start); took < 450*time.Millisecond {
		t.Errorf("6 enables at 10/s took %s", took)
	}
}

// TestVerificationFailures: what KMS says after EnableKeyRotation decides
// the answer, not the call's success.
func TestVerificationFailures(t *testing.T) {
	id := "11111111-1111-4111-8111-111111111111"
	tests := []struct {
		name         string
		ignoreEnable bool
		reportPeriod *int32
		status       int
		outcome      string
		reason       string
		verdict      string
	}{
		{"still disabled", true, nil, 502, OutcomeVerificationFailed, "rotation still disabled after EnableKeyRotation", "noncompliant"},
		{"other period", false, aws.Int32(400), 502, OutcomeVerificationFailed, "rotation period is 400 days, 365 was set", "noncompliant"},
		// An emulator that reports no period: the flag is the proof.
		{"no period reported", false, aws.Int32(0), 200, OutcomeEnabled, "", "compliant"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inv := unitKeys(id)
			api := newFakeKMS()
			api.reportPeriod, api.ignoreEnable = tt.reportPeriod, tt.ignoreEnable
			u := startAPI(t, newRemediator(inv, api))
			status, body := u.post(PathRemediate, `{"region":"eu-west-1","key_id":"`+id+`"}`)
			if status != tt.status || body["outcome"] != tt.outcome || (tt.reason != "" && body["reason"] != tt.reason) ||
				body["verdict"] != tt.verdict {
				t.Errorf("%d %v, want %d %s %q, verdict %s", status, body, tt.status, tt.outcome, tt.reason, tt.verdict)
			}
			if got := u.counted(tt.outcome); got != 1 {
				t.Errorf("kms_remediations_total{result=%q} = %v, want 1", tt.outcome, got)
			}
		})
	}
}

// TestReplicaAndPrimaryAreOneKey: while the primary of a multi-Region key is
// being remediated, a request for its replica (or the primary again) is
// refused with 409, without any AWS call.
func TestReplicaAndPrimaryAreOneKey(t *testing.T) {
	const mrk = "mrk-0123456789abcdef0123456789abcdef"
	primary, replica := noncompliant(mrk), noncompliant(mrk)
	primary.Region, primary.MultiRegion = "us-east-1", &model.MultiRegion{Type: "PRIMARY"}
	primary.ARN = "arn:aws:kms:us-east-1:" + unitAccount + ":key/" + mrk
	replica.MultiRegion = &model.MultiRegion{Type: policy.MultiRegionReplica, PrimaryRegion: "us-east-1"}
	inv := &fakeInventory{policy: unitPolicy, snap: &model.Snapshot{Targets: []*model.TargetState{
		{AccountID: unitAccount, Region: "eu-west-1", Success: true, Keys: harness.Keys(replica)},
		{AccountID: unitAccount, Region: "us-east-1", Success: true, Keys: harness.Keys(primary)},
	}}}
	api := newFakeKMS()
	entered, release := make(chan struct{}, 3), make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	api.hook = func(ctx context.Context, op string) {
		if op == "EnableKeyRotation" {
			entered <- struct{}{}
			select {
			case <-release:
			case <-ctx.Done():
			}
		}
	}
	u := startAPI(t, newRemediator(inv, api))
	first := make(chan map[string]any, 1)
	go func() {
		status, body, err := u.send(PathRemediate, `{"region":"us-east-1","key_id":"`+mrk+`"}`)
		if err != nil || status != 200 {
			body = map[string]any{"status": status, "err": fmt.Sprint(err), "body": body}
		}
		first <- body
	}()
	Await(t, entered, "the first request reaching EnableKeyRotation")
	gets := api.Calls("GetKeyRotationStatus")
	for _, body := range []string{`{"region":"eu-west-1","key_id":"` + mrk + `"}`, `{"region":"us-east-1","key_id":"` + mrk + `","rotation_period_days":180}`} {
		status, answer := u.post(PathRemediate, body)
		reason, _ := answer["reason"].(string)
		if status != 409 || answer["outcome"] != OutcomeInProgress || !strings.Contains(reason, "another request is remediating this key") ||
			answer["acted_on_region"] != "us-east-1" {
			t.Errorf("%s while the primary is being remediated: %d %v", body, status, answer)
		}
	}
	if n := api.Calls("GetKeyRotationStatus"); n != gets {
		t.Errorf("refused requests called GetKeyRotationStatus %d times", n-gets)
	}
	once.Do(func() { close(release) })
	if body := Await(t, first, "the first request's answer"); body["outcome"] != OutcomeEnabled {
		t.Errorf("the first request: %v", body)
	}
	if n := api.Calls("EnableKeyRotation"); n != 1 {
		t.Errorf("EnableKeyRotation called %d times, want 1", n)
	}
	if got := u.counted(OutcomeInProgress); got != 2 {
		t.Errorf(`kms_remediations_total{result="in_progress"} = %v, want 2`, got)
	}
	// Done: the key can be acted on again (here: it is compliant now).
	if status, body := u.post(PathRemediate, `{"region":"eu-west-1","key_id":"`+mrk+`"}`); status != 409 || body["outcome"] != OutcomeNoAction {
		t.Errorf("after the first request: %d %v", status, body)
	}
}

// TestSeveralAccountsNeedAccountID: with several accounts audited, a key id
// alone could name keys of two accounts: account_id is required.
func TestSeveralAccountsNeedAccountID(t *testing.T) {
	id := "11111111-1111-4111-8111-111111111111"
	other := noncompliant(id)
	other.AccountID = "777788889999"
	inv := unitKeys(id)
	inv.snap.Targets = append(inv.snap.Targets, &model.TargetState{AccountID: other.AccountID, Region: "eu-west-1", Success: true, Keys: harness.Keys(other)})
	u := startAPI(t, newRemediator(inv, newFakeKMS()))
	status, body := u.post(PathRemediate, `{"region":"eu-west-1","key_id":"`+id+`","dry_run":true}`)
	if status != 400 || body["reason"] != "account_id is required: several accounts are audited" {
		t.Errorf("without account_id: %d %v", status, body)
	}
	status, body = u.post(PathRemediate, `{"account_id":"777788889999","region":"eu-west-1","key_id":"`+id+`","dry_run":true}`)
	if status != 200 || body["account_id"] != "777788889999" {
		t.Errorf("with account_id: %d %v", status, body)
	}
}

// TestDrainFinishesInFlight: Drain lets a request in flight finish within
// its time, answers new ones 503, and returns after the request's outcome
// was counted.
func TestDrainFinishesInFlight(t *testing.T) {
	id := "11111111-1111-4111-8111-111111111111"
	inv := unitKeys(id)
	api := newFakeKMS()
	entered, release := make(chan struct{}, 1), make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	api.hook = func(ctx context.Context, op string) {
		if op == "EnableKeyRotation" {
			entered <- struct{}{}
			<-release // whatever the context says: the drain must wait
		}
	}
	u := startAPI(t, newRemediator(inv, api))
	answer := make(chan string, 1)
	go func() {
		status, body, err := u.send(PathRemediate, `{"region":"eu-west-1","key_id":"`+id+`"}`)
		answer <- fmt.Sprint(status, " ", body["outcome"], " ", err)
	}()
	Await(t, entered, "the request reaching EnableKeyRotation")
	drained := make(chan error, 1)
	go func() { drained <- u.api.Drain(context.Background()) }()
	// New requests are refused as soon as Drain has begun.
	harness.Poll(t, 30*time.Second, func() string {
		status, body := u.post(PathRemediate, `{"region":"eu-west-1","key_id":"`+id+`","dry_run":true}`)
		if status != 503 || !strings.Contains(fmt.Sprint(body["error"]), "shutting down") {
			return fmt.Sprintf("a new request while draining: %d %v", status, body)
		}
		return ""
	})
	select {
	case err := <-drained:
		t.Fatalf("Drain returned (%v) while a request was in flight", err)
	default:
	}
	once.Do(func() { close(release) })
	if err := Await(t, drained, "Drain returning"); err != nil {
		t.Errorf("Drain: %v, want nil (nothing had to be cancelled)", err)
	}
	if got := u.counted(OutcomeEnabled); got != 1 {
		t.Errorf(`when Drain returned, kms_remediations_total{result="enabled"} = %v, want 1`, got)
	}
	if got := Await(t, answer, "the answer"); got != "200 enabled <nil>" {
		t.Errorf("the request in flight: %s", got)
	}
}

// TestDrainStopsBulk: a bulk request cut by Drain answers 503 with what it
// did, and leaves the other keys alone.
func TestDrainStopsBulk(t *testing.T) {
	inv := unitKeys("11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222", "33333333-3333-4333-8333-333333333333")
	api := newFakeKMS()
	entered := make(chan struct{}, 1)
	api.hook = func(ctx context.Context, op string) {
		if op == "EnableKeyRotation" {
			entered <- struct{}{}
			<-ctx.Done()
		}
	}
	logs := &LogBuffer{}
	rem := newRemediator(inv, api)
	rem.Logger = slog.New(slog.NewJSONHandler(logs, nil))
	u := startAPI(t, rem)
	answer := make(chan map[string]any, 1)
	go func() {
		status, body, err := u.send(PathBulk, `{"all_noncompliant":true}`)
		answer <- map[string]any{"status": status, "body": body, "err": err}
	}()
	Await(t, entered, "the bulk request reaching EnableKeyRotation")
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := u.api.Drain(ctx); err == nil || !strings.Contains(err.Error(), "cancelled") {
		t.Errorf("Drain: %v", err)
	}
	if lines := logs.Lines("remediation stopped before every selected key was handled"); len(lines) != 1 || lines[0]["handled"] != 1.0 {
		t.Errorf("log when Drain returned: %v", lines)
	}
	a := Await(t, answer, "the bulk answer")
	body, _ := a["body"].(map[string]any)
	results, _ := body["results"].([]any)
	if a["status"] != 503 || len(results) != 1 || body["error"] != "stopped after 1 keys, the others were not touched: the exporter is shutting down" {
		t.Errorf("bulk cut by Drain: %v", a)
	}
	if n := api.Calls("EnableKeyRotation"); n != 1 {
		t.Errorf("EnableKeyRotation called %d times, want 1", n)
	}
}

// TestRequestCutBeforeEnable: a request whose time runs out before
// EnableKeyRotation is sent says so, and that nothing changed.
func TestRequestCutBeforeEnable(t *testing.T) {
	tests := []struct {
		name string
		// prepare makes the second key's request run out of time.
		prepare func(*Remediator, *fakeKMS)
		reason  string
	}{
		{"waiting for the rate limit", func(r *Remediator, _ *fakeKMS) {
			// One enable per hour: the second waits longer than the request may.
			r.EnablesPerSecond = 1.0 / 3600
		}, "stopped before EnableKeyRotation (waiting for the EnableKeyRotation rate limit (--remediation.aws-requests-per-second): rate: Wait(n=1) would exceed context deadline): nothing was changed"},
		{"reading the status first", func(_ *Remediator, api *fakeKMS) {
			api.hook = func(ctx context.Context, op string) {
				if op == "GetKeyRotationStatus" && api.Calls(op) == 3 {
					<-ctx.Done()
				}
			}
		}, "stopped while reading the rotation status, before EnableKeyRotation (the request's time (--remediation.timeout) ran out): nothing was changed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := "11111111-1111-4111-8111-111111111111"
			api := newFakeKMS()
			rem := newRemediator(unitKeys(id, "22222222-2222-4222-8222-222222222222"), api)
			tt.prepare(rem, api)
			u := startAPI(t, rem)
			u.api.Timeout = time.Second
			if status, body := u.post(PathRemediate, `{"region":"eu-west-1","key_id":"`+id+`"}`); status != 200 {
				t.Fatalf("first: %d %v", status, body)
			}
			status, body := u.post(PathRemediate, `{"region":"eu-west-1","key_id":"22222222-2222-4222-8222-222222222222"}`)
			if status != 503 || body["outcome"] != OutcomeCancelled || body["reason"] != tt.reason {
				t.Errorf("second: %d %v, want 503 cancelled %q", status, body, tt.reason)
			}
			if n := api.Calls("EnableKeyRotation"); n != 1 {
				t.Errorf("EnableKeyRotation called %d times, want 1", n)
			}
			if got := u.counted(OutcomeCancelled); got != 1 {
				t.Errorf(`kms_remediations_total{result="cancelled"} = %v, want 1`, got)
			}
		})
	}
}

func TestLogLevels(t *testing.T) {
	var buf bytes.Buffer
	r := &Remediator{Logger: slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	for _, o := range []string{OutcomeEnabled, OutcomeDryRun, OutcomeNoAction, OutcomeIneligible, OutcomeRateLimited} {
		r.record(Result{Outcome: o}, "test")
	}
	var levels []string
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var l struct{ Level, Result string }
		_ = json.Unmarshal([]byte(line), &l)
		levels = append(levels, l.Result+":"+l.Level)
	}
	want := "enabled:INFO dry_run:INFO no_action_needed:INFO ineligible:WARN rate_limited:DEBUG"
	if got := strings.Join(levels, " "); got != want {
		t.Errorf("log levels %s, want %s", got, want)
	}
}

// TestMaterialTooOldNotRemediated: a key noncompliant only for its key
// material's age (rotation on, period within the policy) is refused: enabling
// rotation would change nothing; a key whose rotation is off is still
// remediated under the same policy, and the verdict of what AWS then says
// keeps its old material noncompliant (the first rotation comes a period after).
func TestMaterialTooOldNotRemediated(t *testing.T) {
	const old, off = "00000001-1111-4111-8111-111111111111", "00000002-1111-4111-8111-111111111111"
	inv := unitKeys(old, off)
	created := time.Now().Add(-400 * 24 * time.Hour)
	for _, k := range inv.snap.Targets[0].Keys {
		k.CreationDate, k.History = created, &policy.History{}
	}
	tooOld := inv.snap.Targets[0].Keys[0]
	tooOld.Rotation = &policy.Rotation{Enabled: true, PeriodDays: 365}
	v := tooOld.Verdict.Get()
	v.Reason = policy.ReasonMaterialTooOld
	tooOld.Verdict = model.VerdictOf(v)
	api := newFakeKMS()
	api.enabled[old] = 365
	r := newRemediator(inv, api)
	r.Policy.MaxKeyMaterialAgeDays = 365
	inv.policy = r.Policy
	res := r.Remediate(context.Background(), Request{Region: "eu-west-1", KeyID: old}, "test")
	if res.Outcome != OutcomeIneligible || !strings.Contains(res.Reason, "rotate-key-on-demand") || api.Calls("EnableKeyRotation") != 0 {
		t.Errorf("material too old: %s (%s), %d EnableKeyRotation calls; want ineligible, naming on-demand rotation, none", res.Outcome, res.Reason, api.Calls("EnableKeyRotation"))
	}
	res = r.Remediate(context.Background(), Request{Region: "eu-west-1", KeyID: off}, "test")
	if res.Outcome != OutcomeEnabled || api.Calls("EnableKeyRotation") != 1 {
		t.Fatalf("rotation off: %s (%s)", res.Outcome, res.Reason)
	}
	_, k := inv.Snapshot().Locate(unitAccount, "eu-west-1", off)
	if k.Verdict.Get().Status != policy.Noncompliant || k.Verdict.Get().Reason != policy.ReasonMaterialTooOld {
		t.Errorf("after enabling rotation on 400-day-old material: %s/%s, want noncompliant/%s", k.Verdict.Get().Status, k.Verdict.Get().Reason, policy.ReasonMaterialTooOld)
	}
}
