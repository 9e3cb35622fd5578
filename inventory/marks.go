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
// verdict needs, as a refresh reads it. The new state is published as soon as
// the keys marked together are read, and each mark learns the outcome.

// where is an audited (account, region).
type where struct{ account, region string }

// mark is a key to re-read and whom to tell.
type mark struct {
	ref  model.KeyRef
	done chan error
}

// marks holds the keys waiting to be re-read and the targets they may name.
type marks struct {
	mu      sync.Mutex
	pending []mark
	// targets are the targets of the last refresh, by the account and
	// region they reach; nil until the first refresh ends.
	targets map[where]Target
	wake    chan struct{}
	reading sync.Mutex // one batch of marks is read at a time
}

// Mark asks for a key to be re-read as soon as possible. The channel
// receives nil once a snapshot holding the key as read after the mark is
// published (or without it, the key being gone), or the error that kept it
// from being read (a transient AWS error, the refresher stopping). A key of
// an account and region that is not audited gets model.ErrNotAudited, at
// once when the targets are known (after the first refresh), else on the
// channel.
func (r *Refresher) Mark(_ context.Context, ref model.KeyRef) (<-chan error, error) {
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
	m.pending = append(m.pending, mark{ref, done})
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

// readMarked re-reads the keys marked since the last time and publishes
// them at once, while a refresh may be running: the refresh applies these
// reads over its own when it publishes (see withPending). One batch of marks
// is read at a time.
func (r *Refresher) readMarked(ctx context.Context) {
	r.marks.reading.Lock()
	defer r.marks.reading.Unlock()
	m := &r.marks
	m.mu.Lock()
	todo, targets := m.pending, m.targets
	m.pending = nil
	m.mu.Unlock()
	if len(todo) == 0 {
		return
	}
	if targets == nil { // no refresh has ended: it reads them all
		m.mu.Lock()
		m.pending = append(todo, m.pending...)
		m.mu.Unlock()
		return
	}
	// started orders the reads with the refreshes and the remediation
	// changes; start is when they were read, by the verdicts' clock.
	started, start := time.Now(), r.auditor.Now()
	// One read per key, however many marks name it.
	byKey := map[model.KeyRef][]chan error{}
	for _, mk := range todo {
		if _, ok := targets[where{mk.ref.AccountID, mk.ref.Region}]; !ok {
			mk.done <- model.ErrNotAudited
			continue
		}
		byKey[mk.ref] = append(byKey[mk.ref], mk.done)
	}
	// A multi-Region key's rotation is one setting, kept in sync from the
	// primary: the event of a change names one region, every copy changed.
	cur := r.pub.Snapshot()
	for ref := range maps.Clone(byKey) {
		if !strings.HasPrefix(ref.KeyID, multiRegionPrefix) {
			continue
		}
		for _, st := range cur.Targets {
			other := model.KeyRef{AccountID: ref.AccountID, Region: st.Region, KeyID: ref.KeyID}
			_, marked := byKey[other]
			_, audited := targets[where{other.AccountID, other.Region}]
			if !marked && audited && st.AccountID == ref.AccountID && findKey(st.Keys, ref.KeyID) >= 0 {
				byKey[other] = nil
			}
		}
	}
	refs := make([]model.KeyRef, 0, len(byKey))
	for ref := range byKey {
		refs = append(refs, ref)
	}
	reads := r.readKeys(ctx, targets, refs, start)

	r.pubMu.Lock()
	r.marked = append(r.marked, markedReads{started, reads})
	r.pub.Publish(r.patched(applyReads(r.pub.Snapshot(), reads), r.changesSince(started)))
	r.pubMu.Unlock()
	for i, ref := range refs {
		for _, done := range byKey[ref] {
			done <- reads[i].err
		}
	}
	r.logger.Debug("marked keys re-read", "keys", len(refs), "duration", time.Since(start).Round(time.Millisecond))
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

// readKeys re-reads the keys, as the last snapshot knows them, on the
// auditor's workers.
func (r *Refresher) readKeys(ctx context.Context, targets map[where]Target, refs []model.KeyRef, start time.Time) []keyRead {
	cur := r.pub.Snapshot()
	out := make([]keyRead, len(refs))
	work := make(chan int)
	var wg sync.WaitGroup
	for range max(1, min(r.auditor.Workers, len(refs))) {
		wg.Go(func() {
			for i := range work {
				ref := refs[i]
				var prev *model.Key
				var prevAt int64
				if st := findTarget(cur, ref.AccountID, ref.Region); st != nil {
					if j := findKey(st.Keys, ref.KeyID); j >= 0 {
						prev, prevAt = st.Keys[j], readAtOf(st.ReadAt, j)
					}
				}
				out[i] = r.auditor.readOne(ctx, targets[where{ref.AccountID, ref.Region}], ref, prev, prevAt, start)
			}
		})
	}
	for i := range refs {
		work <- i
	}
	close(work)
	wg.Wait()
	return out
}

// readOne re-reads one key of t; prev is the key as last published (nil: not
// known), last read successfully at prevAt.
func (a *Auditor) readOne(ctx context.Context, t Target, ref model.KeyRef, prev *model.Key, prevAt int64, start time.Time) keyRead {
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
	found, failed := a.auditKey(ctx, t.API, &k)
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

// markedReads are keys re-read for marks, in a read that started at.
type markedReads struct {
	at    time.Time
	reads []keyRead
}

// applyReads returns s with the keys re-read put in (new keys inserted in
// order, keys gone removed); s is not modified.
func applyReads(s *model.Snapshot, reads []keyRead) *model.Snapshot {
	byTarget := map[where][]keyRead{}
	for _, rd := range reads {
		if !rd.keep {
			w := where{rd.ref.AccountID, rd.ref.Region}
			byTarget[w] = append(byTarget[w], rd)
		}
	}
	out := &model.Snapshot{TagLabels: s.TagLabels, Targets: slices.Clone(s.Targets)}
	for i, t := range out.Targets {
		rds := byTarget[where{t.AccountID, t.Region}]
		if len(rds) == 0 {
			continue
		}
		cp := *t
		cp.Keys, cp.ReadAt = slices.Clone(t.Keys), slices.Clone(t.ReadAt)
		if len(cp.ReadAt) < len(cp.Keys) { // a snapshot without read times
			cp.ReadAt = append(cp.ReadAt, make([]int64, len(cp.Keys)-len(cp.ReadAt))...)
		}
		for _, rd := range rds {
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
