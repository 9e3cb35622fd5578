// Package model holds the plain types the exporter's stages hand each other:
// a key with its verdict, what is known of an (account, region), the
// snapshot of every audited target, and a verified rotation change. It
// imports only policy, so that the exposition, the reports and remediation
// depend on these types and nothing of AWS.
package model

import (
	"errors"
	"maps"
	"slices"
	"sync/atomic"
	"time"
	"unique"

	"github.com/kms-exporter/kms_exporter/policy"
)

// Snapshot is one complete picture of every audited (account, region). It is
// never changed once published: a refresh builds a new one and swaps it in.
type Snapshot struct {
	// Targets are sorted by account id, then region.
	Targets []*TargetState
	// TagLabels are the tag keys whose values each Key carries in TagValues.
	TagLabels []string
}

// TargetState is what is known of one (account, region).
type TargetState struct {
	AccountID string
	Region    string
	// RoleARN is the role assumed to reach the account; "" for the
	// exporter's own credentials.
	RoleARN string
	// Keys are those of the last successful refresh, sorted by key id. A key
	// that did not change since the previous snapshot is the same *Key in
	// both: keys are never modified once published, and the exposition
	// reuses what it encoded for an unchanged run of keys.
	Keys []*Key
	// ReadAt holds, for each of Keys (same index), when it was last read
	// successfully, in Unix nanoseconds; 0: never. Keys are not all read at
	// once: a refresh re-reads the keys that are due (see
	// inventory.Refresher), an event re-reads one key.
	ReadAt []int64
	// Success tells whether the last refresh of this target succeeded; when
	// it failed, Keys are still those of LastSuccess.
	Success     bool
	Error       string
	Duration    time.Duration
	LastAttempt time.Time
	LastSuccess time.Time
}

// Key is one KMS key with its verdict.
type Key struct {
	AccountID string
	Region    string
	ID        string
	ARN       string
	// Aliases are the alias names pointing at the key, sorted.
	Aliases      []string
	Meta         Meta
	CreationDate time.Time
	// DeletionDate is when a key pending deletion will be deleted, nil for
	// the others (most keys: eight bytes, not a time.Time's 24).
	DeletionDate *time.Time
	// MultiRegion places a multi-Region key; nil for a single-Region key
	// (most keys: apart, so that they do not carry its fields).
	MultiRegion *MultiRegion
	// Rotation is nil when the rotation status was not read.
	Rotation *policy.Rotation
	// History is the key's rotation history (ListKeyRotations), nil where
	// it was not read: keys out of scope, or whose history read failed. It
	// is read on first sight and again only where it can have changed (see
	// inventory's historyDue), so it may be older than the key's last read.
	History *policy.History
	// TagValues holds the values of Snapshot.TagLabels, in that order.
	TagValues []string
	// Tags are the key's tags where they were read (keys whose verdict
	// depends on them, or all customer keys with tag labels), else nil.
	Tags    map[string]string
	Verdict Verdict
	// ReadError is the error code of the last read when it failed for a
	// transient reason; "" when it succeeded.
	ReadError string
	// Stale: the last read failed (ReadError) and the key still shows what
	// was read at its last successful read (TargetState.ReadAt), younger
	// than the staleness bound.
	Stale bool
}

// Same reports whether k and o show the same thing, field by field. A
// refresh keeps the earlier *Key when the new read is the Same.
func (k *Key) Same(o *Key) bool {
	return k.AccountID == o.AccountID && k.Region == o.Region && k.ID == o.ID && k.ARN == o.ARN &&
		slices.Equal(k.Aliases, o.Aliases) && k.Meta == o.Meta &&
		k.CreationDate.Equal(o.CreationDate) && k.Deletion().Equal(o.Deletion()) &&
		sameMultiRegion(k.MultiRegion, o.MultiRegion) &&
		sameRotation(k.Rotation, o.Rotation) && sameHistory(k.History, o.History) && slices.Equal(k.TagValues, o.TagValues) && maps.Equal(k.Tags, o.Tags) &&
		(k.Tags == nil) == (o.Tags == nil) && sameVerdict(k.Verdict.Get(), o.Verdict.Get()) &&
		k.ReadError == o.ReadError && k.Stale == o.Stale
}

// Kept returns a copy of k to keep in a snapshot: one allocation holds the
// key with copies of its rotation status and rotation history, which its
// Rotation and History point into, instead of three objects. The garbage
// collector marks the snapshot's keys through every collection of a
// refresh (the SDK's garbage makes one every few seconds at a million
// keys): a key's Rotation and History then lie in the memory it has just
// scanned, instead of two objects elsewhere in the heap to look up.
func (k *Key) Kept() *Key {
	b := &keptKey{Key: *k}
	if k.Rotation != nil {
		b.rotation = *k.Rotation
		b.Key.Rotation = &b.rotation
	}
	if k.History != nil {
		b.history = *k.History
		b.Key.History = &b.history
	}
	return &b.Key
}

type keptKey struct {
	Key
	rotation policy.Rotation
	history  policy.History
}

// Interned is a value kept once however many keys hold it: a Key holds a
// pointer to it (unique.Make; the strings in it are copies). The zero
// Interned is T's zero value.
type Interned[T comparable] struct{ h unique.Handle[T] }

func intern[T comparable](v T) Interned[T] {
	var zero T
	if v == zero {
		return Interned[T]{}
	}
	return Interned[T]{unique.Make(v)}
}

// Get returns the value.
func (i Interned[T]) Get() T {
	if i == (Interned[T]{}) {
		var zero T
		return zero
	}
	return i.h.Value()
}

// Meta is a key's metadata, interned: the keys with the same metadata, most
// keys of an inventory, share one copy, and a Key holds a pointer to it
// instead of six strings (88 bytes a key less, a million keys being 88 MB
// less live heap for the collector to mark). The zero Meta is the zero
// policy.Meta: a key never described.
type Meta = Interned[policy.Meta]

// MetaOf returns m interned.
func MetaOf(m policy.Meta) Meta { return intern(m) }

// Verdict is a key's verdict, interned as Meta is: the keys of an inventory
// hold few distinct verdicts (an exemption's text and date apart), and a Key
// holds a pointer to one instead of 72 bytes. The zero Verdict is the zero
// policy.Verdict.
type Verdict = Interned[policy.Verdict]

// VerdictOf returns v interned.
func VerdictOf(v policy.Verdict) Verdict { return intern(v) }

// MultiRegion is what a multi-Region key is: PRIMARY or REPLICA, and its
// primary (PrimaryARN, PrimaryRegion).
type MultiRegion struct {
	Type                      string
	PrimaryARN, PrimaryRegion string
}

// Deletion is when the key will be deleted; zero unless it is pending deletion.
func (k *Key) Deletion() time.Time {
	if k.DeletionDate == nil {
		return time.Time{}
	}
	return *k.DeletionDate
}

// MultiRegionType is PRIMARY or REPLICA for a multi-Region key, else "".
func (k *Key) MultiRegionType() string {
	if k.MultiRegion == nil {
		return ""
	}
	return k.MultiRegion.Type
}

// PrimaryRegion is the region of a multi-Region key's primary, else "".
func (k *Key) PrimaryRegion() string {
	if k.MultiRegion == nil {
		return ""
	}
	return k.MultiRegion.PrimaryRegion
}

func sameMultiRegion(a, b *MultiRegion) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

func sameRotation(a, b *policy.Rotation) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Enabled == b.Enabled && a.PeriodDays == b.PeriodDays && a.NextRotation.Equal(b.NextRotation)
}

func sameHistory(a, b *policy.History) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.LastRotation.Equal(b.LastRotation) && a.LastType == b.LastType && a.Automatic == b.Automatic &&
		a.OnDemand == b.OnDemand && a.Material == b.Material && a.ReadAt == b.ReadAt && a.Error == b.Error
}

// Input is what is known of k for its verdict, as policy.Decide reads it,
// rotation status as published.
func (k *Key) Input() policy.Input {
	in := policy.Input{Meta: k.Meta.Get(), Rotation: k.Rotation, Tags: k.Tags, Created: k.CreationDate, History: k.History}
	if k.MultiRegionType() == policy.MultiRegionReplica {
		// A replica's material is its primary's, made before the replica.
		in.Created = time.Time{}
	}
	if h := k.History; h != nil && h.Error != "" {
		in.History, in.HistoryError = nil, h.Error
	}
	return in
}

// RotationHistory returns the key's rotation history where it was read
// successfully, else nil.
func (k *Key) RotationHistory() *policy.History {
	if k.History == nil || k.History.Error != "" {
		return nil
	}
	return k.History
}

func sameVerdict(a, b policy.Verdict) bool {
	return a.Status == b.Status && a.Reason == b.Reason && a.ExemptionReason == b.ExemptionReason &&
		a.ExemptionExpiry.Equal(b.ExemptionExpiry)
}

// Counts returns the number of keys per verdict status over all targets.
func (s *Snapshot) Counts() map[policy.Status]int {
	out := map[policy.Status]int{}
	for _, t := range s.Targets {
		for _, k := range t.Keys {
			out[k.Verdict.Get().Status]++
		}
	}
	return out
}

// ReadTime returns when the i-th key was last read successfully; zero:
// never (or not recorded).
func (t *TargetState) ReadTime(i int) time.Time {
	if i >= len(t.ReadAt) || t.ReadAt[i] == 0 {
		return time.Time{}
	}
	return time.Unix(0, t.ReadAt[i])
}

// Locate returns the key with this id (or ARN) in a region, with its target.
// An empty accountID matches any account. It returns nils when no such key is known.
func (s *Snapshot) Locate(accountID, region, keyID string) (*TargetState, *Key) {
	for _, t := range s.Targets {
		if (accountID != "" && t.AccountID != accountID) || t.Region != region {
			continue
		}
		for _, k := range t.Keys {
			if k.ID == keyID || k.ARN == keyID {
				return t, k
			}
		}
	}
	return nil, nil
}

// KeyRef names a key to re-read: its account, region and key id (never an
// ARN or alias).
type KeyRef struct{ AccountID, Region, KeyID string }

func (r KeyRef) String() string { return r.AccountID + "/" + r.Region + "/" + r.KeyID }

// ErrNotAudited: the account and region are not audited by this exporter.
var ErrNotAudited = errors.New("the account and region are not audited")

// RotationChange is a rotation status read from AWS after the exporter changed it.
type RotationChange struct {
	AccountID string
	// KeyID is the key changed. For a multi-Region key it is the shared
	// mrk- id: the change applies to the primary and every replica.
	KeyID    string
	Rotation policy.Rotation
	At       time.Time
}

// Latest holds the current snapshot where nothing else publishes it (the
// audit command, tests). It implements inventory.Publisher.
type Latest struct{ current atomic.Pointer[Snapshot] }

// NewLatest returns a Latest holding an empty snapshot with these tag labels.
func NewLatest(tagLabels []string) *Latest {
	l := &Latest{}
	l.Publish(&Snapshot{TagLabels: tagLabels})
	return l
}

// Snapshot returns the current snapshot.
func (l *Latest) Snapshot() *Snapshot { return l.current.Load() }

// Publish makes s the current snapshot.
func (l *Latest) Publish(s *Snapshot) { l.current.Store(s) }

// RotationView is a rotation status as the remediation API's and the audit
// command's JSON show it: absent fields were not read or not reported.
type RotationView struct {
	RotationEnabled    *bool      `json:"rotation_enabled,omitempty"`
	RotationPeriodDays int32      `json:"rotation_period_days,omitempty"`
	NextRotation       *time.Time `json:"next_rotation,omitempty"`
}

// ViewRotation returns the view of a rotation status; nil: not read.
func ViewRotation(r *policy.Rotation) RotationView {
	if r == nil {
		return RotationView{}
	}
	v := RotationView{RotationEnabled: &r.Enabled, RotationPeriodDays: r.PeriodDays}
	if !r.NextRotation.IsZero() {
		v.NextRotation = &r.NextRotation
	}
	return v
}
