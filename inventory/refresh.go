package inventory

import (
	"context"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"
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

// Refresher keeps the current Snapshot up to date in the background.
type Refresher struct {
	source   TargetSource
	auditor  *Auditor
	logger   *slog.Logger
	onUpdate []func(*Snapshot)

	mu      sync.Mutex // serialises refreshes: they never overlap
	pubMu   sync.Mutex // serialises publishing; guards pending
	pending []RotationChange
	current atomic.Pointer[Snapshot]
	ready   chan struct{}
	once    sync.Once
}

// NewRefresher returns a Refresher; onUpdate functions are called with every
// new snapshot, before it is published.
func NewRefresher(source TargetSource, auditor *Auditor, logger *slog.Logger, onUpdate ...func(*Snapshot)) *Refresher {
	r := &Refresher{source: source, auditor: auditor, logger: logger, onUpdate: onUpdate, ready: make(chan struct{})}
	r.current.Store(&Snapshot{TagLabels: auditor.TagLabels})
	return r
}

// Snapshot returns the current snapshot (empty before the first refresh ends).
func (r *Refresher) Snapshot() *Snapshot { return r.current.Load() }

// Ready is closed once the first refresh has finished.
func (r *Refresher) Ready() <-chan struct{} { return r.ready }

// Run refreshes at once, then every interval, until ctx ends.
func (r *Refresher) Run(ctx context.Context, interval time.Duration) {
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		r.Refresh(ctx)
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// Refresh audits every target concurrently and publishes the new snapshot.
// A target that fails keeps its last good keys.
func (r *Refresher) Refresh(ctx context.Context) *Snapshot {
	r.mu.Lock()
	defer r.mu.Unlock()
	start := time.Now()
	prev := map[targetID]*TargetState{}
	for _, t := range r.current.Load().Targets {
		prev[targetID{t.Role.ARN, t.Region}] = t
	}

	targets := r.source.Targets(ctx)
	states := make([]*TargetState, len(targets))
	var wg sync.WaitGroup
	for i, t := range targets {
		wg.Go(func() { states[i] = r.refreshTarget(ctx, t, prev[targetID{t.Role.ARN, t.Region}]) })
	}
	wg.Wait()
	if ctx.Err() != nil {
		// Shutting down: keep what was published.
		return r.current.Load()
	}
	r.pubMu.Lock()
	s := r.withPending(&Snapshot{Targets: r.uniqueTargets(states), TagLabels: r.auditor.TagLabels}, start)
	r.publish(s)
	r.pubMu.Unlock()
	r.once.Do(func() { close(r.ready) })
	c := s.Counts()
	r.logger.Info("refresh finished", "targets", len(s.Targets), "duration", time.Since(start).Round(time.Millisecond),
		"compliant", c["compliant"], "noncompliant", c["noncompliant"], "unknown", c["unknown"],
		"exempt", c["exempt"], "not_applicable", c["not_applicable"])
	return s
}

// publish hands a new snapshot to the onUpdate functions, then makes it
// current. Callers hold pubMu.
func (r *Refresher) publish(s *Snapshot) {
	for _, f := range r.onUpdate {
		f(s)
	}
	r.current.Store(s)
}

type targetID struct{ role, region string }

// uniqueTargets sorts the states by account and region and keeps one state
// per (account, region): the same account reached twice (its own
// credentials and an assumed role, or a role given twice) would otherwise
// expose every key twice. A successful state wins over a failed one.
func (r *Refresher) uniqueTargets(states []*TargetState) []*TargetState {
	sort.SliceStable(states, func(i, j int) bool {
		a, b := states[i], states[j]
		if a.AccountID != b.AccountID {
			return a.AccountID < b.AccountID
		}
		if a.Region != b.Region {
			return a.Region < b.Region
		}
		return a.Success && !b.Success
	})
	out := states[:0]
	for _, st := range states {
		if n := len(out); n > 0 && st.AccountID != "" && out[n-1].AccountID == st.AccountID && out[n-1].Region == st.Region {
			r.logger.Warn("the same account and region is audited twice; keeping one", "account_id", st.AccountID,
				"region", st.Region, "role", st.Role.ARN, "kept_role", out[n-1].Role.ARN)
			continue
		}
		out = append(out, st)
	}
	return out
}

func (r *Refresher) refreshTarget(ctx context.Context, t Target, prev *TargetState) *TargetState {
	start := time.Now()
	account, keys, err := r.auditor.Audit(ctx, t)
	st := &TargetState{AccountID: account, Region: t.Region, Role: t.Role, Keys: keys,
		Success: err == nil, Duration: time.Since(start), LastAttempt: start}
	if err == nil {
		st.LastSuccess = start
		return st
	}
	st.Error = describeTargetError(err)
	r.logger.Warn("refresh of a region failed; keeping its last good data", "region", t.Region,
		"role", t.Role.ARN, "err", err)
	if prev != nil {
		st.AccountID, st.Keys, st.LastSuccess = prev.AccountID, prev.Keys, prev.LastSuccess
	}
	if st.AccountID == "" {
		st.AccountID = t.Role.AccountID()
	}
	return st
}
