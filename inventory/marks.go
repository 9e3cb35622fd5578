package inventory

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/kms-exporter/kms_exporter/model"
)

// A key marked (by an event: see package events) is re-read at once, apart
// from the refreshes: DescribeKey, ListAliases of the key, and what its
// verdict needs, as a refresh reads it. Its new state is published as soon
// as it is read, and each mark learns the outcome.

// where is an audited (account, region).
type where struct{ account, region string }

// mark is a key to re-read and whom to tell; rotated: an event said its
// material rotated (its rotation history is read again).
type mark struct {
	ref     model.KeyRef
	done    chan error
	rotated bool
}

// marks holds the keys waiting to be re-read and the targets they may name.
type marks struct {
	mu      sync.Mutex
	pending []mark
	// targets are the targets of the last refresh, by the account and
	// region they reach; nil until the first refresh ends.
	targets map[where]Target
	wake    chan struct{}
	// inflight are the keys being read, with the marks made meanwhile (to
	// answer after a read once more when rerun, with the history too when
	// the value is true); slots bound the reads.
	inflight map[model.KeyRef][]chan error
	rerun    map[model.KeyRef]bool
	slots    chan struct{}
	reads    sync.WaitGroup
}

func newMarks(workers int) marks {
	return marks{wake: make(chan struct{}, 1), inflight: map[model.KeyRef][]chan error{}, rerun: map[model.KeyRef]bool{},
		slots: make(chan struct{}, max(1, workers))}
}

// Mark asks for a key to be re-read as soon as possible. The channel
// receives nil once a snapshot holding the key as read after the mark is
// published (or without it, the key being gone), or the error that kept it
// from being read (a transient AWS error, the refresher stopping). A key of
// an account and region that is not audited gets model.ErrNotAudited, at
// once when the targets are known (after the first refresh), else on the
// channel.
func (r *Refresher) Mark(_ context.Context, ref model.KeyRef) (<-chan error, error) {
	return r.mark(ref, false)
}

// MarkRotated is Mark for a key whose material an event says rotated (a
// KMS CMK Rotation event, a RotateKeyOnDemand call): its rotation history
// is read again too.
func (r *Refresher) MarkRotated(_ context.Context, ref model.KeyRef) (<-chan error, error) {
	return r.mark(ref, true)
}

func (r *Refresher) mark(ref model.KeyRef, rotated bool) (<-chan error, error) {
	if ref.AccountID == "" || ref.Region == "" || ref.KeyID == "" {
		return nil, errors.New("a mark needs an account, a region and a key id")
	}
	m := &r.marks
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.targets != nil {
		if _, ok := m.targets[where{ref.AccountID, ref.Region}]; !ok {
			return nil, model.ErrNotAudited
		}
	}
	done := make(chan error, 1)
	m.pending = append(m.pending, mark{ref, done, rotated})
	select {
	case m.wake <- struct{}{}:
	default:
	}
	return done, nil
}

// setTargets records the targets of a refresh, by the account and region
// they reach, for the marks to come.
func (r *Refresher) setTargets(chosen map[where]Target) {
	m := &r.marks
	m.mu.Lock()
	defer m.mu.Unlock()
	m.targets = chosen
	if len(m.pending) > 0 { // marks made before the first refresh ended
		select {
		case m.wake <- struct{}{}:
		default:
		}
	}
}

// readMarked starts the re-reads of the keys marked since the last time.
// Each key is read on its own (at most Workers at once) and published as
// soon as it is read, while a refresh may be running: the refresh applies
// these reads over its own when it publishes (see withPending). A key marked
// again while it is being read is read once more after, never twice at
// once, so that an older read is never published over a newer one.
func (r *Refresher) readMarked(ctx context.Context) {
	m := &r.marks
	m.mu.Lock()
	todo, targets := m.pending, m.targets
	m.pending = nil
	m.mu.Unlock()
	if len(todo) == 0 {
		return
	}
	if targets == nil { // no refresh has ended: wait for it (setTargets)
		m.mu.Lock()
		m.pending = append(todo, m.pending...)
		m.mu.Unlock()
		return
	}
	// One read per key, however many marks name it.
	byKey := map[model.KeyRef][]chan error{}
	rotated := map[model.KeyRef]bool{}
	for _, mk := range todo {
		if _, ok := targets[where{mk.ref.AccountID, mk.ref.Region}]; !ok {
			mk.done <- model.ErrNotAudited
			continue
		}
		byKey[mk.ref] = append(byKey[mk.ref], mk.done)
		rotated[mk.ref] = rotated[mk.ref] || mk.rotated
	}
	// A multi-Region key's rotation is one setting, kept in sync from the
	// primary: the event of a change names one region, every copy changed.
	// The marks of such a key are answered once every copy is published.
	cur := r.pub.Snapshot()
	for ref, waiters := range maps.Clone(byKey) {
		if !strings.HasPrefix(ref.KeyID, multiRegionPrefix) {
			continue
		}
		var copies []model.KeyRef
		for _, st := range cur.Targets {
			other := model.KeyRef{AccountID: ref.AccountID, Region: st.Region, KeyID: ref.KeyID}
			_, marked := byKey[other]
			_, audited := targets[where{other.AccountID, other.Region}]
			if !marked && audited && st.AccountID == ref.AccountID && findKey(st.Keys, ref.KeyID) >= 0 {
				copies = append(copies, other)
			}
		}
		if len(copies) == 0 {
			continue
		}
		each := make([]chan error, 1+len(copies))
		for i := range each {
			each[i] = make(chan error, 1)
		}
		byKey[ref] = each[:1]
		for i, other := range copies {
			byKey[other] = each[i+1 : i+2]
			rotated[other] = rotated[ref] // the copies share the key material
		}
		m.reads.Go(func() {
			var first error
			for _, ch := range each {
				if err := <-ch; err != nil && first == nil {
					first = err
				}
			}
			for _, done := range waiters {
				done <- first
			}
		})
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for ref, waiters := range byKey {
		if again, reading := m.inflight[ref]; reading {
			m.inflight[ref] = append(again, waiters...)
			m.rerun[ref] = m.rerun[ref] || rotated[ref]
			continue
		}
		m.inflight[ref] = nil
		m.reads.Go(func() { r.readMarkedKey(ctx, targets[where{ref.AccountID, ref.Region}], ref, rotated[ref], waiters) })
	}
}

// readMarkedKey reads one marked key (its rotation history too when
// rotated), publishes it and tells its marks; again while it was marked
// again meanwhile.
func (r *Refresher) readMarkedKey(ctx context.Context, t Target, ref model.KeyRef, rotated bool, waiters []chan error) {
	m := &r.marks
	for {
		acquired := false
		select {
		case m.slots <- struct{}{}:
			acquired = true
		case <-ctx.Done():
		}
		// started orders the read with the refreshes and the remediation
		// changes; start is when it was read, by the verdicts' clock.
		started, start := time.Now(), r.auditor.Now()
		var prev *model.Key
		var prevAt int64
		if st := findTarget(r.pub.Snapshot(), ref.AccountID, ref.Region); st != nil {
			if j := findKey(st.Keys, ref.KeyID); j >= 0 {
				prev, prevAt = st.Keys[j], readAtOf(st.ReadAt, j)
			}
		}
		rd := r.auditor.readOne(ctx, t, ref, prev, prevAt, start, rotated)
		if acquired {
			<-m.slots
		}
		r.pubMu.Lock()
		r.marked = append(r.marked, markedRead{started, rd})
		r.pub.Publish(r.patched(applyRead(r.pub.Snapshot(), rd), r.changesSince(started)))
		r.pubMu.Unlock()
		for _, done := range waiters {
			done <- rd.err
		}
		r.logger.Debug("marked key re-read", "key", ref.String(), "duration", time.Since(started).Round(time.Millisecond), "err", rd.err)

		m.mu.Lock()
		waiters = m.inflight[ref]
		again, rerun := m.rerun[ref]
		if !rerun {
			delete(m.inflight, ref)
			m.mu.Unlock()
			return
		}
		m.inflight[ref], rotated = nil, again
		delete(m.rerun, ref)
		m.mu.Unlock()
	}
}

// multiRegionPrefix starts the id of a multi-Region key (its primary and
// replicas share it).
const multiRegionPrefix = "mrk-"

// keyRead is what re-reading a marked key found.
type keyRead struct {
	ref  model.KeyRef
	key  *model.Key // nil: the key is gone (or was never known and could not be read)
	at   int64      // when it was last read successfully
	err  error      // why it could not be read
	keep bool       // the read failed before anything was learnt: leave the key as it is
}

// readOne re-reads one key of t; prev is the key as last published (nil: not
// known), last read successfully at prevAt; rotated: its rotation history
// is read again.
func (a *Auditor) readOne(ctx context.Context, t Target, ref model.KeyRef, prev *model.Key, prevAt int64, start time.Time, rotated bool) keyRead {
	out := keyRead{ref: ref, key: prev, at: prevAt}
	aliases, err := keyAliases(ctx, t.API, ref.KeyID)
	switch {
	case isNotFound(err):
		out.key = nil
		return out
	case err != nil:
		out.err, out.keep = err, true
		return out
	}
	k := model.Key{AccountID: ref.AccountID, Region: ref.Region, ID: ref.KeyID, Aliases: aliases}
	if prev != nil {
		k.ARN = prev.ARN
	}
	found, failed := a.auditKey(ctx, t.API, &k, prev, rotated)
	switch {
	case !found:
		out.key = nil
	case failed.Code != "":
		out.key = a.carry(k, prev, prevAt, failed.Code)
		out.err = ReadErrors{failed: 1}
	case prev != nil && k.Same(prev):
		out.at = start.UnixNano()
	default:
		out.key, out.at = compact(&k, prev), start.UnixNano()
	}
	return out
}

// keyAliases lists the alias names of one key, sorted.
func keyAliases(ctx context.Context, api KMS, keyID string) ([]string, error) {
	byKey, _, err := listAliases(ctx, api, aws.String(keyID))
	return byKey[keyID], err
}

// markedRead is a key re-read for a mark, in a read that started at.
type markedRead struct {
	at   time.Time
	read keyRead
}

// applyRead returns s with a key re-read put in (a new key inserted in
// order, a key gone removed); s is not modified.
func applyRead(s *model.Snapshot, rd keyRead) *model.Snapshot {
	if rd.keep {
		return s
	}
	out := &model.Snapshot{TagLabels: s.TagLabels, Targets: slices.Clone(s.Targets)}
	for i, t := range out.Targets {
		if t.AccountID != rd.ref.AccountID || t.Region != rd.ref.Region {
			continue
		}
		cp := *t
		cp.Keys, cp.ReadAt = slices.Clone(t.Keys), slices.Clone(t.ReadAt)
		if len(cp.ReadAt) < len(cp.Keys) { // a snapshot without read times
			cp.ReadAt = append(cp.ReadAt, make([]int64, len(cp.Keys)-len(cp.ReadAt))...)
		}
		j, found := slices.BinarySearchFunc(cp.Keys, rd.ref.KeyID, func(k *model.Key, id string) int { return strings.Compare(k.ID, id) })
		switch {
		case rd.key == nil && found:
			cp.Keys, cp.ReadAt = slices.Delete(cp.Keys, j, j+1), slices.Delete(cp.ReadAt, j, j+1)
		case rd.key == nil:
		case found:
			cp.Keys[j], cp.ReadAt[j] = rd.key, rd.at
		default:
			cp.Keys, cp.ReadAt = slices.Insert(cp.Keys, j, rd.key), slices.Insert(cp.ReadAt, j, rd.at)
		}
		out.Targets[i] = &cp
	}
	return out
}

// findTarget returns the state of an account and region in s, or nil.
func findTarget(s *model.Snapshot, account, region string) *model.TargetState {
	for _, t := range s.Targets {
		if t.AccountID == account && t.Region == region {
			return t
		}
	}
	return nil
}

// targetsByWhere indexes the targets a refresh audited by the account and
// region they reach (those whose account is known).
func targetsByWhere(targets []Target, states []*model.TargetState, chosen []int) map[where]Target {
	out := make(map[where]Target, len(chosen))
	for i, c := range chosen {
		if st := states[i]; st != nil && st.AccountID != "" {
			out[where{st.AccountID, st.Region}] = targets[c]
		}
	}
	return out
}
