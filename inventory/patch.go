package inventory

import (
	"slices"
	"time"

	"github.com/kms-exporter/kms_exporter/model"
)

// ApplyRotationChanges publishes a snapshot in which the changed keys carry
// their new rotation status and verdict, at once, without waiting for the
// next refresh. A refresh already running when the change was made would
// publish the old state: its result is patched with the change too.
func (r *Refresher) ApplyRotationChanges(changes ...model.RotationChange) *model.Snapshot {
	r.pubMu.Lock()
	defer r.pubMu.Unlock()
	r.pending = append(r.pending, changes...)
	s := r.patched(r.pub.Snapshot(), changes)
	r.pub.Publish(s)
	return s
}

// patched returns a copy of s with the changes applied; s is not modified.
// A later change to the same key wins.
func (r *Refresher) patched(s *model.Snapshot, changes []model.RotationChange) *model.Snapshot {
	if len(changes) == 0 {
		return s
	}
	type keyRef struct{ account, id string }
	byKey := make(map[keyRef]model.RotationChange, len(changes))
	for _, c := range changes {
		byKey[keyRef{c.AccountID, c.KeyID}] = c
	}
	out := &model.Snapshot{TagLabels: s.TagLabels, Targets: make([]*model.TargetState, len(s.Targets))}
	for i, t := range s.Targets {
		out.Targets[i] = t
		for j, old := range t.Keys {
			c, ok := byKey[keyRef{t.AccountID, old.ID}]
			if !ok {
				continue
			}
			if out.Targets[i] == t { // copy on first write
				cp := *t
				cp.Keys, cp.ReadAt = slices.Clone(t.Keys), slices.Clone(t.ReadAt)
				out.Targets[i] = &cp
			}
			// Published keys are never modified: the change makes a new one.
			k := *old
			rot := c.Rotation
			k.Rotation = &rot
			// A status read from AWS just now: the key is no longer stale.
			k.ReadError, k.Stale = "", false
			if at := out.Targets[i].ReadAt; j < len(at) {
				at[j] = c.At.UnixNano()
			}
			k.Verdict = model.VerdictOf(r.auditor.verdict(k.Input()))
			out.Targets[i].Keys[j] = k.Kept()
		}
	}
	return out
}

// withPending applies to a refresh's result what was read after it started
// (remediation changes, keys re-read for marks), in the order it was read,
// and forgets what the refresh has seen. Callers hold pubMu.
func (r *Refresher) withPending(s *model.Snapshot, refreshStart time.Time) *model.Snapshot {
	changes := r.changesSince(refreshStart)
	r.pending = changes
	marked := r.marked[:0]
	for _, m := range r.marked {
		if m.at.After(refreshStart) {
			marked = append(marked, m)
		}
	}
	clear(r.marked[len(marked):])
	r.marked = marked
	for _, m := range marked {
		var before []model.RotationChange
		for len(changes) > 0 && changes[0].At.Before(m.at) {
			before, changes = append(before, changes[0]), changes[1:]
		}
		s = applyRead(r.patched(s, before), m.read)
	}
	return r.patched(s, changes)
}

// changesSince returns the remediation changes made after t, in order.
// Callers hold pubMu.
func (r *Refresher) changesSince(t time.Time) []model.RotationChange {
	var out []model.RotationChange
	for _, c := range r.pending {
		if c.At.After(t) {
			out = append(out, c)
		}
	}
	return out
}
