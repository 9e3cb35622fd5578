package inventory_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"

	"github.com/kms-exporter/kms_exporter/events"
	"github.com/kms-exporter/kms_exporter/internal/harness"
	"github.com/kms-exporter/kms_exporter/inventory"
	"github.com/kms-exporter/kms_exporter/model"
	"github.com/kms-exporter/kms_exporter/policy"
)

// The inventory's Refresher takes the events consumer's rotation marks.
var _ events.RotationSink = (*inventory.Refresher)(nil)

const historyAccount = "111122223333"

// historyKMS is a KMS of a few keys whose rotation history a test drives:
// DescribeKey reports each key's CurrentKeyMaterialId (unless noMaterialID,
// as emulators do), ListKeyRotations lists its completed rotations, and
// every ListKeyRotations call is counted.
type historyKMS struct {
	mu           sync.Mutex
	keys         map[string]*historyKey
	noMaterialID bool
	// historyErr answers every ListKeyRotations while set.
	historyErr error
	// lag: ListKeyRotations does not list the last rotation yet (it is
	// eventually consistent), while DescribeKey reports its material.
	lag bool
	// endless: every ListKeyRotations page says another follows.
	endless bool
	listed  map[string]int // ListKeyRotations calls per key
}

type historyKey struct {
	spec      types.KeySpec
	state     types.KeyState
	created   time.Time
	enabled   bool
	next      time.Time
	material  int
	rotations []types.RotationsListEntry
}

func newHistoryKMS(keys map[string]*historyKey) *historyKMS {
	return &historyKMS{keys: keys, listed: map[string]int{}}
}

// rotate completes a rotation of a key at a time, as KMS does: an entry
// with the type, a new current material.
func (h *historyKMS) rotate(id string, typ types.RotationType, at time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	k := h.keys[id]
	k.material++
	k.rotations = append(k.rotations, types.RotationsListEntry{KeyId: aws.String(id), RotationDate: aws.Time(at), RotationType: typ,
		KeyMaterialId: aws.String(materialID(id, k.material))})
}

func (h *historyKMS) calls(id string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.listed[id]
}

func materialID(id string, n int) string { return id + "-material-" + string(rune('a'+n)) }

func keyARN(id string) string { return "arn:aws:kms:eu-west-1:" + historyAccount + ":key/" + id }

func (h *historyKMS) ListKeys(context.Context, *kms.ListKeysInput, ...func(*kms.Options)) (*kms.ListKeysOutput, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := &kms.ListKeysOutput{}
	for id := range h.keys {
		out.Keys = append(out.Keys, types.KeyListEntry{KeyId: aws.String(id), KeyArn: aws.String(keyARN(id))})
	}
	return out, nil
}

func (h *historyKMS) ListAliases(context.Context, *kms.ListAliasesInput, ...func(*kms.Options)) (*kms.ListAliasesOutput, error) {
	return &kms.ListAliasesOutput{}, nil
}

func (h *historyKMS) DescribeKey(_ context.Context, in *kms.DescribeKeyInput, _ ...func(*kms.Options)) (*kms.DescribeKeyOutput, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	id := aws.ToString(in.KeyId)
	k := h.keys[id]
	m := &types.KeyMetadata{KeyId: aws.String(id), Arn: aws.String(keyARN(id)), KeyManager: types.KeyManagerTypeCustomer,
		KeySpec: k.spec, KeyState: k.state, Origin: types.OriginTypeAwsKms, CreationDate: aws.Time(k.created)}
	if !h.noMaterialID {
		m.CurrentKeyMaterialId = aws.String(materialID(id, k.material))
	}
	return &kms.DescribeKeyOutput{KeyMetadata: m}, nil
}

func (h *historyKMS) GetKeyRotationStatus(_ context.Context, in *kms.GetKeyRotationStatusInput, _ ...func(*kms.Options)) (*kms.GetKeyRotationStatusOutput, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	k := h.keys[aws.ToString(in.KeyId)]
	out := &kms.GetKeyRotationStatusOutput{KeyRotationEnabled: k.enabled}
	if k.enabled {
		out.RotationPeriodInDays, out.NextRotationDate = aws.Int32(365), aws.Time(k.next)
	}
	return out, nil
}

func (h *historyKMS) ListResourceTags(context.Context, *kms.ListResourceTagsInput, ...func(*kms.Options)) (*kms.ListResourceTagsOutput, error) {
	return &kms.ListResourceTagsOutput{}, nil
}

func (h *historyKMS) ListKeyRotations(_ context.Context, in *kms.ListKeyRotationsInput, _ ...func(*kms.Options)) (*kms.ListKeyRotationsOutput, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	id := aws.ToString(in.KeyId)
	h.listed[id]++
	if h.historyErr != nil {
		return nil, h.historyErr
	}
	// As KMS lists them: the latest material CURRENT, the others
	// NON_CURRENT; the first material (no date) only with ALL_KEY_MATERIAL.
	k := h.keys[id]
	var out []types.RotationsListEntry
	if in.IncludeKeyMaterial == types.IncludeKeyMaterialAllKeyMaterial {
		out = append(out, types.RotationsListEntry{KeyId: aws.String(id), KeyMaterialId: aws.String(materialID(id, 0))})
	}
	rotations := k.rotations
	if h.lag && len(rotations) > 0 {
		rotations = rotations[:len(rotations)-1]
	}
	out = append(out, rotations...)
	for i := range out {
		out[i].KeyMaterialState = types.KeyMaterialStateNonCurrent
	}
	if len(out) > 0 {
		out[len(out)-1].KeyMaterialState = types.KeyMaterialStateCurrent
	}
	if h.endless {
		return &kms.ListKeyRotationsOutput{Rotations: out, Truncated: true, NextMarker: aws.String(aws.ToString(in.Marker) + "x")}, nil
	}
	return &kms.ListKeyRotationsOutput{Rotations: out}, nil
}

// historySetup is a refresher over a historyKMS with a clock of the test's.
// resync is the Auditor's Resync (0: every key at every refresh).
func historySetup(t *testing.T, api *historyKMS, p policy.Policy, resync time.Duration) (*inventory.Refresher, *clock) {
	t.Helper()
	clk := harness.NewClock(time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC))
	a := &inventory.Auditor{Policy: p, Workers: 2, Now: clk.Now, MaxStale: time.Hour, Resync: resync}
	return inventory.NewRefresher(inventory.StaticTargets{{Region: "eu-west-1", API: api}}, a, discard(), nil), clk
}

func historyOf(t *testing.T, r *inventory.Refresher, id string) *model.Key {
	t.Helper()
	_, k := r.Snapshot().Locate(historyAccount, "eu-west-1", id)
	if k == nil {
		t.Fatalf("key %s not published", id)
	}
	return k
}

// TestHistoryReadWhereItCanChange: ListKeyRotations is called for a key in
// scope when it is first seen, and again only where the history can have
// changed: its current key material is another (DescribeKey's
// CurrentKeyMaterialId), its next rotation date has passed since (for an
// endpoint that reports no material id), or an event said it rotated
// (MarkRotated). A plain re-read (every refresh, here) and a plain mark do
// not call it; keys that cannot rotate never do. The published history
// follows each rotation: counts by type, the last rotation and its type.
func TestHistoryReadWhereItCanChange(t *testing.T) {
	start := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	api := newHistoryKMS(map[string]*historyKey{
		"k1":   {spec: types.KeySpecSymmetricDefault, state: types.KeyStateEnabled, created: start.Add(-800 * day), enabled: true, next: start.Add(10 * day)},
		"rsa":  {spec: types.KeySpecRsa2048, state: types.KeyStateEnabled, created: start.Add(-800 * day)},
		"off":  {spec: types.KeySpecSymmetricDefault, state: types.KeyStateDisabled, created: start.Add(-800 * day)},
		"k-no": {spec: types.KeySpecSymmetricDefault, state: types.KeyStateEnabled, created: start.Add(-5 * day), enabled: true, next: start.Add(360 * day)},
	})
	api.rotate("k1", types.RotationTypeAutomatic, start.Add(-435*day))
	api.rotate("k1", types.RotationTypeOnDemand, start.Add(-30*day))
	r, clk := historySetup(t, api, testPolicy, 0)
	ctx, cancel := context.WithCancel(ctxT(t))
	done := make(chan struct{})
	go func() { r.Run(ctx, time.Hour); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	waitReady(t, r)

	check := func(step string, calls, automatic, onDemand int32, last time.Time, lastType string) {
		t.Helper()
		if n := api.calls("k1"); n != int(calls) {
			t.Errorf("%s: %d ListKeyRotations calls of k1 so far, want %d", step, n, calls)
		}
		h := historyOf(t, r, "k1").RotationHistory()
		if h == nil {
			t.Fatalf("%s: k1 has no rotation history", step)
		}
		if h.Automatic != automatic || h.OnDemand != onDemand || !h.LastRotation.Equal(last) || h.LastType != lastType {
			t.Errorf("%s: history %+v, want %d automatic, %d on demand, last %s (%s)", step, h, automatic, onDemand, last, lastType)
		}
	}
	check("first sight", 1, 1, 1, start.Add(-30*day), policy.RotationOnDemand)
	if h := historyOf(t, r, "k-no").RotationHistory(); h == nil || h.Automatic+h.OnDemand != 0 || !h.LastRotation.IsZero() {
		t.Errorf("a key never rotated: history %+v, want read, empty", h)
	}
	for _, id := range []string{"rsa", "off"} {
		if n := api.calls(id); n != 0 || historyOf(t, r, id).History != nil {
			t.Errorf("%s: %d ListKeyRotations calls, want none for a key out of scope", id, n)
		}
	}

	// A refresh re-reads every key (resync 0) but not the history.
	before := historyOf(t, r, "k1")
	clk.Add(time.Minute)
	r.Refresh(ctx)
	check("re-read", 1, 1, 1, start.Add(-30*day), policy.RotationOnDemand)
	if historyOf(t, r, "k1") != before {
		t.Error("a key read the same is not the same *model.Key")
	}
	if n := api.calls("k-no"); n != 1 {
		t.Errorf("k-no: %d ListKeyRotations calls after a re-read, want 1", n)
	}

	// Rotated on demand: the material id changed, so the history is read.
	at := clk.Now()
	api.rotate("k1", types.RotationTypeOnDemand, at)
	clk.Add(time.Minute)
	r.Refresh(ctx)
	check("after an on-demand rotation", 2, 1, 2, at, policy.RotationOnDemand)

	// Without material ids (an emulator): the next rotation date passing
	// has the history read; once the next date moves on, it is not again.
	api.mu.Lock()
	api.noMaterialID = true
	api.mu.Unlock()
	clk.Add(time.Minute)
	r.Refresh(ctx)
	check("material ids gone", 2, 1, 2, at, policy.RotationOnDemand)
	rotation := start.Add(10 * day)
	clk.Add(10 * day)
	api.rotate("k1", types.RotationTypeAutomatic, rotation)
	api.mu.Lock()
	api.keys["k1"].next = rotation.Add(365 * day)
	api.mu.Unlock()
	r.Refresh(ctx)
	check("next rotation date passed", 3, 2, 2, rotation, policy.RotationAutomatic)
	clk.Add(time.Minute)
	r.Refresh(ctx)
	check("after the next date moved on", 3, 2, 2, rotation, policy.RotationAutomatic)

	// An event: a plain mark does not read the history, a rotation's does.
	ref := model.KeyRef{AccountID: historyAccount, Region: "eu-west-1", KeyID: "k1"}
	ch, err := r.Mark(ctx, ref)
	if err != nil || waitMark(t, ch) != nil {
		t.Fatalf("mark: %v", err)
	}
	check("a plain mark", 3, 2, 2, rotation, policy.RotationAutomatic)
	rotated := clk.Now()
	api.rotate("k1", types.RotationTypeOnDemand, rotated)
	ch, err = r.MarkRotated(ctx, ref)
	if err != nil || waitMark(t, ch) != nil {
		t.Fatalf("rotation mark: %v", err)
	}
	check("a rotation's mark", 4, 2, 3, rotated, policy.RotationOnDemand)
}

// TestHistoryFailures: a ListKeyRotations that AWS refuses (an IAM policy
// without kms:ListKeyRotations) is called once per key, not at every read,
// and changes no verdict while the policy does not judge the material's
// age; with --compliance.max-key-material-age-days the verdict is unknown
// with the code, and the call is tried at every read until it succeeds. A
// transient failure (throttling after the retries) keeps the key's last good
// state, marked stale.
func TestHistoryFailures(t *testing.T) {
	start := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	denied := &smithy.GenericAPIError{Code: "AccessDeniedException", Message: "not allowed"}
	throttled := &smithy.GenericAPIError{Code: "ThrottlingException", Message: "Rate exceeded"}
	newKMS := func() *historyKMS {
		api := newHistoryKMS(map[string]*historyKey{
			"k1": {spec: types.KeySpecSymmetricDefault, state: types.KeyStateEnabled, created: start.Add(-100 * 24 * time.Hour), enabled: true, next: start.Add(265 * 24 * time.Hour)},
		})
		api.historyErr = denied
		return api
	}
	verdict := func(r *inventory.Refresher) policy.Verdict { return historyOf(t, r, "k1").Verdict.Get() }

	t.Run("denied, age not judged", func(t *testing.T) {
		api := newKMS()
		r, clk := historySetup(t, api, testPolicy, 0)
		for range 3 {
			r.Refresh(ctxT(t))
			clk.Add(time.Minute)
		}
		if n := api.calls("k1"); n != 1 {
			t.Errorf("%d ListKeyRotations calls over three refreshes, want 1", n)
		}
		k := historyOf(t, r, "k1")
		if v := k.Verdict.Get(); v.Status != policy.Compliant {
			t.Errorf("verdict %s/%s, want compliant: the history is evidence only", v.Status, v.Reason)
		}
		if k.RotationHistory() != nil || k.History.Error != "AccessDeniedException" {
			t.Errorf("history %+v, want none shown, the error kept", k.History)
		}
	})

	t.Run("denied, age judged", func(t *testing.T) {
		api := newKMS()
		p := testPolicy
		p.MaxKeyMaterialAgeDays = 365
		r, clk := historySetup(t, api, p, 0)
		for range 3 {
			r.Refresh(ctxT(t))
			clk.Add(time.Minute)
		}
		if v := verdict(r); v.Status != policy.Unknown || v.Reason != "AccessDeniedException" {
			t.Errorf("verdict %s/%s, want unknown/AccessDeniedException", v.Status, v.Reason)
		}
		if n := api.calls("k1"); n != 3 {
			t.Errorf("%d ListKeyRotations calls over three refreshes, want 3 (the verdict needs it)", n)
		}
		api.mu.Lock()
		api.historyErr = nil
		api.mu.Unlock()
		r.Refresh(ctxT(t))
		if v := verdict(r); v.Status != policy.Compliant {
			t.Errorf("after the IAM fix: %s/%s, want compliant (material 100 days old)", v.Status, v.Reason)
		}
	})

	t.Run("throttled, age not judged: the verdict stands, read again later", func(t *testing.T) {
		api := newKMS()
		api.historyErr = throttled
		r, clk := historySetup(t, api, testPolicy, 0)
		s := r.Refresh(ctxT(t))
		k := historyOf(t, r, "k1")
		if k.Verdict.Get().Status != policy.Compliant || k.Stale || k.History != nil || !s.Targets[0].Success {
			t.Errorf("first sight, history throttled: %s/%s, stale %v, history %+v, refresh success %v; want compliant, no history, success",
				k.Verdict.Get().Status, k.Verdict.Get().Reason, k.Stale, k.History, s.Targets[0].Success)
		}
		api.mu.Lock()
		api.historyErr = nil
		api.mu.Unlock()
		clk.Add(time.Minute)
		r.Refresh(ctxT(t))
		if h := historyOf(t, r, "k1").RotationHistory(); h == nil || api.calls("k1") != 2 {
			t.Errorf("next read: history %+v after %d calls; want it read at the second call", h, api.calls("k1"))
		}
	})

	t.Run("a listing that does not show the rotation yet is read again", func(t *testing.T) {
		api := newKMS()
		api.historyErr = nil
		r, clk := historySetup(t, api, testPolicy, 0)
		r.Refresh(ctxT(t))
		api.rotate("k1", types.RotationTypeOnDemand, clk.Now())
		api.mu.Lock()
		api.lag = true
		api.mu.Unlock()
		clk.Add(time.Minute)
		r.Refresh(ctxT(t)) // the new material is seen, its rotation not yet listed
		api.mu.Lock()
		api.lag = false
		api.mu.Unlock()
		clk.Add(time.Minute)
		r.Refresh(ctxT(t))
		if h := historyOf(t, r, "k1").RotationHistory(); h == nil || h.OnDemand != 1 || api.calls("k1") != 3 {
			t.Errorf("history %+v after %d calls; want the on-demand rotation, read at the third call", h, api.calls("k1"))
		}
		clk.Add(time.Minute)
		r.Refresh(ctxT(t))
		if n := api.calls("k1"); n != 3 {
			t.Errorf("%d calls once the listing shows the current material, want no more (3)", n)
		}
	})

	t.Run("a listing without end is cut, not followed", func(t *testing.T) {
		api := newKMS()
		api.historyErr, api.endless = nil, true
		r, _ := historySetup(t, api, testPolicy, 0)
		s := r.Refresh(ctxT(t))
		k := historyOf(t, r, "k1")
		if n := api.calls("k1"); n > 10 || k.History != nil || k.Verdict.Get().Status != policy.Compliant || !s.Targets[0].Success {
			t.Errorf("%d pages asked, history %+v, verdict %s; want at most 10 pages, no history, the verdict unchanged", n, k.History, k.Verdict.Get().Status)
		}
	})

	t.Run("throttled: stale, then unknown", func(t *testing.T) {
		api := newKMS()
		api.historyErr = nil
		p := testPolicy
		p.MaxKeyMaterialAgeDays = 365
		r, clk := historySetup(t, api, p, 0)
		r.Refresh(ctxT(t))
		good := historyOf(t, r, "k1")
		if good.Verdict.Get().Status != policy.Compliant || good.RotationHistory() == nil {
			t.Fatalf("first refresh: %+v", good.Verdict.Get())
		}
		// A rotation on demand makes the history due; its read is throttled.
		api.rotate("k1", types.RotationTypeOnDemand, clk.Now())
		api.mu.Lock()
		api.historyErr = throttled
		api.mu.Unlock()
		clk.Add(time.Minute)
		s := r.Refresh(ctxT(t))
		k := historyOf(t, r, "k1")
		if !k.Stale || k.ReadError != "ThrottlingException" || k.Verdict != good.Verdict || k.History == nil || *k.History != *good.History {
			t.Errorf("throttled: stale %v (%s), verdict %+v, history %+v; want the last good state, stale", k.Stale, k.ReadError, k.Verdict.Get(), k.History)
		}
		if s.Targets[0].Success {
			t.Error("the refresh succeeded though a read failed")
		}
		clk.Add(2 * time.Hour) // past MaxStale
		r.Refresh(ctxT(t))
		if v := verdict(r); v.Status != policy.Unknown || v.Reason != "ThrottlingException" {
			t.Errorf("throttled past the staleness bound: %s/%s", v.Status, v.Reason)
		}
	})
}

// TestHistoryAgesOut: with --compliance.max-key-material-age-days, a key
// compliant because its material is young turns noncompliant once the
// material grows too old, at the first refresh after, though no key is due
// for a re-read (a date passing makes no KMS event); rotating it on demand
// brings it back.
func TestHistoryAgesOut(t *testing.T) {
	start := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	api := newHistoryKMS(map[string]*historyKey{
		"k1": {spec: types.KeySpecSymmetricDefault, state: types.KeyStateEnabled, created: start.Add(-400 * day)},
	})
	api.rotate("k1", types.RotationTypeOnDemand, start.Add(-80*day))
	p := testPolicy
	p.MaxKeyMaterialAgeDays = 90
	r, clk := historySetup(t, api, p, 30*day)
	r.Refresh(ctxT(t))
	if v := historyOf(t, r, "k1").Verdict.Get(); v.Status != policy.Compliant || v.Reason != policy.ReasonRotatedOnDemand {
		t.Fatalf("rotated on demand 80 days ago, automatic rotation off: %s/%s", v.Status, v.Reason)
	}
	clk.Add(9 * day)
	r.Refresh(ctxT(t))
	if v := historyOf(t, r, "k1").Verdict.Get(); v.Status != policy.Compliant {
		t.Fatalf("at 89 days: %s/%s", v.Status, v.Reason)
	}
	clk.Add(day + time.Minute)
	r.Refresh(ctxT(t))
	if v := historyOf(t, r, "k1").Verdict.Get(); v.Status != policy.Noncompliant || v.Reason != policy.ReasonRotationDisabled {
		t.Errorf("past 90 days: %s/%s, want noncompliant/rotation_disabled", v.Status, v.Reason)
	}
	// Rotated on demand again: seen at the key's next resync (or at once
	// with events), when its new material has the history read.
	api.rotate("k1", types.RotationTypeOnDemand, clk.Now())
	clk.Add(30 * day)
	r.Refresh(ctxT(t))
	if v := historyOf(t, r, "k1").Verdict.Get(); v.Status != policy.Compliant || v.Reason != policy.ReasonRotatedOnDemand {
		t.Errorf("rotated on demand again, 30 days ago: %s/%s", v.Status, v.Reason)
	}
}

// runAndMarkRotated marks ref as rotated, runs r until the test ends, and
// waits for the mark's outcome, which must be a success.
func runAndMarkRotated(t *testing.T, ctx context.Context, r *inventory.Refresher, ref model.KeyRef) {
	t.Helper()
	runCtx, stop := context.WithCancel(ctx)
	ch, err := r.MarkRotated(runCtx, ref)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { r.Run(runCtx, time.Hour); close(done) }()
	t.Cleanup(func() { stop(); <-done })
	if err := waitMark(t, ch); err != nil {
		t.Fatalf("MarkRotated: %v", err)
	}
}

// waitReady waits for the first refresh of a running refresher.
func waitReady(t *testing.T, r *inventory.Refresher) {
	t.Helper()
	harness.Poll(t, 10*time.Second, func() string {
		if len(r.Snapshot().Targets) == 0 {
			return "no refresh has ended"
		}
		return ""
	})
}
