package inventory

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kms-exporter/kms_exporter/awsclient"
	"github.com/kms-exporter/kms_exporter/model"
)

// TargetSource lists the targets to audit; it is asked again at every refresh
// (so that discovered regions and accounts follow changes).
type TargetSource interface {
	Targets(ctx context.Context) []Target
}

// StaticTargets is a fixed list of targets.
type StaticTargets []Target

// Targets implements TargetSource.
func (s StaticTargets) Targets(context.Context) []Target { return s }

// Publisher owns the current snapshot: each new one is handed to it, and
// it is asked for the current one. collector.Collector is the exporter's
// (it keeps the snapshot with its encoded metrics); model.Latest, where
// nothing is served.
type Publisher interface {
	Snapshot() *model.Snapshot
	Publish(*model.Snapshot)
}

// Refresher keeps the current snapshot up to date in the background.
type Refresher struct {
	source  TargetSource
	auditor *Auditor
	logger  *slog.Logger
	pub     Publisher

	mu      sync.Mutex // serialises refreshes: they never overlap
	pubMu   sync.Mutex // serialises publishing; guards pending and marked
	pending []model.RotationChange
	// marked are the keys re-read for marks, kept until a refresh that
	// started after them has published (it applies them over its own reads).
	marked []markedRead
	ready  chan struct{}
	once   sync.Once

	dupMu      sync.Mutex
	duplicates map[[3]string]bool

	metricsOnce   sync.Once
	readFailures  *prometheus.CounterVec
	resyncChanges *prometheus.CounterVec

	marks marks
}

// NewRefresher returns a Refresher that publishes to pub; nil: a
// model.Latest of its own.
func NewRefresher(source TargetSource, auditor *Auditor, logger *slog.Logger, pub Publisher) *Refresher {
	if pub == nil {
		pub = model.NewLatest(auditor.TagLabels)
	}
	return &Refresher{source: source, auditor: auditor, logger: logger, pub: pub, ready: make(chan struct{}),
		marks: newMarks(auditor.Workers)}
}

// Snapshot returns the current snapshot (empty before the first refresh ends).
func (r *Refresher) Snapshot() *model.Snapshot { return r.pub.Snapshot() }

// Ready tells whether the first refresh has finished.
func (r *Refresher) Ready() bool {
	select {
	case <-r.ready:
		return true
	default:
		return false
	}
}

// ReadyHandler answers 200 once the first refresh has finished, 503 before.
func (r *Refresher) ReadyHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if r.Ready() {
			fmt.Fprintln(w, "Ready")
			return
		}
		http.Error(w, "Not ready: the first refresh has not finished", http.StatusServiceUnavailable)
	})
}

// Run refreshes at once, then every interval, until ctx ends; meanwhile,
// and during refreshes too, it re-reads the keys marked (see Mark) as they
// come. After each refresh the memory of the previous snapshot is returned
// to the operating system at once, rather than over the next minutes: the
// exporter's resident memory is then what the current snapshot needs (see
// the README's capacity table).
func (r *Refresher) Run(ctx context.Context, interval time.Duration) {
	marks := make(chan struct{})
	go func() {
		defer close(marks)
		for {
			select {
			case <-ctx.Done():
				r.failMarks(ctx)
				r.marks.reads.Wait()
				return
			case <-r.marks.wake:
				r.readMarked(ctx)
			}
		}
	}()
	defer func() { <-marks }()
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		r.Refresh(ctx)
		debug.FreeOSMemory()
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// failMarks answers the marks left when Run ends.
func (r *Refresher) failMarks(ctx context.Context) {
	r.marks.mu.Lock()
	defer r.marks.mu.Unlock()
	for _, m := range r.marks.pending {
		m.done <- fmt.Errorf("the refresher stopped: %w", context.Cause(ctx))
	}
	r.marks.pending = nil
}

// Refresh audits every target concurrently and publishes the new snapshot.
// Every target is listed first (cheap, and it names the target's account), so
// that an (account, region) reached by two paths is audited once. A target
// that cannot be listed keeps its last good keys, stale, for up to the
// auditor's MaxStale.
func (r *Refresher) Refresh(ctx context.Context) *model.Snapshot {
	r.mu.Lock()
	defer r.mu.Unlock()
	start := time.Now()
	// When the refresh started by the clock the verdicts use: the time of
	// the keys read in it (see model.Key.LastRead).
	attempt := r.auditor.Now()
	prev := indexTargets(r.pub.Snapshot().Targets)

	targets := r.source.Targets(ctx)
	listings := make([]*listing, len(targets))
	listErrs := make([]error, len(targets))
	var wg sync.WaitGroup
	for i, t := range targets {
		wg.Go(func() { listings[i], listErrs[i] = r.auditor.list(ctx, t) })
	}
	wg.Wait()

	chosen := r.chooseTargets(targets, listings, listErrs, prev)
	states := make([]*model.TargetState, len(chosen))
	for i, c := range chosen {
		wg.Go(func() { states[i] = r.refreshTarget(ctx, targets[c], listings[c], listErrs[c], prev, start, attempt) })
	}
	wg.Wait()
	if ctx.Err() != nil {
		// Shutting down: keep what was published.
		return r.pub.Snapshot()
	}
	r.setTargets(targetsByWhere(targets, states, chosen))
	slices.SortStableFunc(states, func(a, b *model.TargetState) int {
		return cmp.Or(strings.Compare(a.AccountID, b.AccountID), strings.Compare(a.Region, b.Region))
	})
	r.pubMu.Lock()
	s := r.withPending(&model.Snapshot{Targets: states, TagLabels: r.auditor.TagLabels}, start)
	published := time.Now()
	r.pub.Publish(s)
	r.pubMu.Unlock()
	publish := time.Since(published)
	r.once.Do(func() { close(r.ready) })
	c := s.Counts()
	r.logger.Info("refresh finished", "targets", len(s.Targets), "duration", time.Since(start).Round(time.Millisecond),
		"publish", publish.Round(time.Millisecond),
		"compliant", c["compliant"], "noncompliant", c["noncompliant"], "unknown", c["unknown"],
		"exempt", c["exempt"], "not_applicable", c["not_applicable"])
	return s
}

// targetID names the state of a target in a snapshot: by account and region
// once the account is known (whichever path reached it), else by role and
// region.
type targetID struct{ account, role, region string }

func idOf(account, role, region string) targetID {
	if account != "" {
		return targetID{account: account, region: region}
	}
	return targetID{role: role, region: region}
}

// previous is the last snapshot's targets: their states, and the account
// each role and region reached.
type previous struct {
	states   map[targetID]*model.TargetState
	accounts map[targetID]string
}

func indexTargets(states []*model.TargetState) previous {
	p := previous{states: map[targetID]*model.TargetState{}, accounts: map[targetID]string{}}
	for _, st := range states {
		p.states[idOf(st.AccountID, st.RoleARN, st.Region)] = st
		p.accounts[targetID{role: st.RoleARN, region: st.Region}] = st.AccountID
	}
	return p
}

// of returns the last state of the account and region a target reaches.
func (p previous) of(account string, t Target) *model.TargetState {
	return p.states[idOf(account, t.Role.ARN, t.Region)]
}

// accountOfTarget is the account a target reaches: as its listing said, or
// as known before (the role's ARN, the last snapshot), or "" when unknown.
func accountOfTarget(t Target, l *listing, prev previous) string {
	if l != nil && l.accountID != "" {
		return l.accountID
	}
	if a := t.Role.AccountID(); a != "" {
		return a
	}
	return prev.accounts[targetID{role: t.Role.ARN, region: t.Region}]
}

// chooseTargets returns the indexes of the targets to audit: one per
// (account, region), the first that could be listed, else the first. The
// same account reached twice (its own credentials and an assumed role, or a
// role given twice) would otherwise be audited, and exposed, twice.
func (r *Refresher) chooseTargets(targets []Target, listings []*listing, listErrs []error, prev previous) []int {
	type where struct{ account, region string }
	first := map[where]int{} // position in out
	var out []int
	for i, t := range targets {
		w := where{accountOfTarget(t, listings[i], prev), t.Region}
		j, seen := first[w]
		if w.account == "" || !seen {
			first[w] = len(out)
			out = append(out, i)
			continue
		}
		kept, skipped := out[j], i
		if listErrs[kept] != nil && listErrs[i] == nil {
			kept, skipped = i, kept
			out[j] = kept
		}
		r.reportDuplicate(targets[skipped], targets[kept], w.account)
	}
	return out
}

// reportDuplicate logs, once per pair, that a target is skipped because
// another reaches the same account and region.
func (r *Refresher) reportDuplicate(skipped, kept Target, account string) {
	key := [3]string{skipped.Role.ARN, kept.Role.ARN, skipped.Region}
	r.dupMu.Lock()
	defer r.dupMu.Unlock()
	if r.duplicates == nil {
		r.duplicates = map[[3]string]bool{}
	}
	if r.duplicates[key] {
		return
	}
	r.duplicates[key] = true
	r.logger.Warn("the same account and region is reached twice; auditing it once", "account_id", account,
		"region", skipped.Region, "skipped_role", roleName(skipped.Role), "audited_role", roleName(kept.Role))
}

func roleName(r awsclient.Role) string {
	if r.ARN == "" {
		return "own credentials"
	}
	return r.ARN
}

// refreshTarget audits one listed target, or ages the last good keys of one
// that could not be listed.
func (r *Refresher) refreshTarget(ctx context.Context, t Target, l *listing, listErr error, prev previous, start, attempt time.Time) *model.TargetState {
	account := accountOfTarget(t, l, prev)
	last := prev.of(account, t)
	st := &model.TargetState{AccountID: account, Region: t.Region, RoleARN: t.Role.ARN, LastAttempt: attempt}
	if last != nil {
		st.LastSuccess = last.LastSuccess
	}
	err := listErr
	if l != nil {
		var changed int
		st.Keys, st.ReadAt, changed, err = r.auditor.auditListed(ctx, t, l, last, attempt)
		if changed > 0 {
			r.Metrics()
			r.resyncChanges.WithLabelValues(account, t.Region).Add(float64(changed))
		}
	} else {
		st.Keys, st.ReadAt = r.auditor.Age(last, awsclient.ErrorCode(listErr))
	}
	st.Duration = time.Since(start)
	st.Success = err == nil
	if st.Success {
		st.LastSuccess = attempt
		return st
	}
	st.Error = describeTargetError(err)
	var readErrs ReadErrors
	if errors.As(err, &readErrs) {
		r.countReadErrors(st, readErrs)
		return st
	}
	if ctx.Err() == nil {
		r.logger.Warn("listing the keys of a region failed; its keys keep their last good verdicts (stale) for up to the staleness bound",
			"account_id", account, "region", t.Region, "role", roleName(t.Role), "max_stale", r.auditor.MaxStale, "err", err)
	}
	return st
}

// countReadErrors counts and logs the keys of a target whose reads failed.
func (r *Refresher) countReadErrors(st *model.TargetState, errs ReadErrors) {
	var stale, unknown int
	var sample []string
	for _, k := range st.Keys {
		if k.ReadError == "" {
			continue
		}
		if k.Stale {
			stale++
		} else {
			unknown++
		}
		if len(sample) < 5 {
			sample = append(sample, k.ID)
		}
	}
	for e, n := range errs {
		r.Metrics().WithLabelValues(st.AccountID, st.Region, e.Op, e.Code).Add(float64(n))
	}
	r.logger.Warn("reading keys failed; they keep their last good verdicts (stale) for up to the staleness bound, then are unknown",
		"account_id", st.AccountID, "region", st.Region, "errors", errs.Error(), "stale", stale, "unknown", unknown,
		"max_stale", r.auditor.MaxStale, "keys", strings.Join(sample, ","))
}

// Metrics returns kms_key_read_failures_total.
func (r *Refresher) Metrics() *prometheus.CounterVec {
	r.metricsOnce.Do(func() {
		r.readFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kms_key_read_failures_total",
			Help: "Keys whose reads failed for a transient reason (throttling past the retries, 5xx, timeouts, connection errors), by operation and error code, once per key and refresh; such a key keeps its last good verdict (stale) until --refresh.max-stale-age, then is unknown.",
		}, []string{"account_id", "region", "operation", "error_code"})
		r.resyncChanges = prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kms_key_resync_changes_total",
			Help: "Keys a refresh found changed when it re-read them in their turn of --refresh.resync-interval (only keys re-read by their turn: not with a resync as short as the refresh interval, nor for a failed read, an unknown verdict or an ended exemption). With --events.sqs-queue-url, each is a change whose event did not reach the exporter.",
		}, []string{"account_id", "region"})
	})
	return r.readFailures
}

// Describe implements prometheus.Collector: kms_key_read_failures_total and
// kms_key_resync_changes_total.
func (r *Refresher) Describe(ch chan<- *prometheus.Desc) {
	r.Metrics().Describe(ch)
	r.resyncChanges.Describe(ch)
}

// Collect implements prometheus.Collector.
func (r *Refresher) Collect(ch chan<- prometheus.Metric) {
	r.Metrics().Collect(ch)
	r.resyncChanges.Collect(ch)
}
