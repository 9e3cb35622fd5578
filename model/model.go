// Package model holds the plain types the exporter's stages hand each other:
// a key with its verdict, what is known of an (account, region), the
// snapshot of every audited target, and a verified rotation change. It
// imports only policy, so that the exposition, the reports and remediation
// depend on these types and nothing of AWS.
package model

import (
	"sync/atomic"
	"time"

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
	// Keys are those of the last successful refresh, sorted by key id.
	Keys []Key
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
	Aliases         []string
	Meta            policy.Meta
	Description     string
	CreationDate    time.Time
	DeletionDate    time.Time
	MultiRegionType string
	// PrimaryARN and PrimaryRegion name a multi-Region key's primary.
	PrimaryARN    string
	PrimaryRegion string
	// Rotation is nil when the rotation status was not read.
	Rotation *policy.Rotation
	// TagValues holds the values of Snapshot.TagLabels, in that order.
	TagValues []string
	// Tags are the key's tags where they were read (keys whose verdict
	// depends on them, or all customer keys with tag labels), else nil.
	Tags    map[string]string
	Verdict policy.Verdict
	// LastRead is when the key's verdict was last decided from AWS's
	// answers; zero when it never was.
	LastRead time.Time
	// ReadError is the error code of the last read when it failed for a
	// transient reason; "" when it succeeded.
	ReadError string
	// Stale: the last read failed (ReadError) and the key still shows what
	// was read at LastRead, younger than the staleness bound.
	Stale bool
}

// Counts returns the number of keys per verdict status over all targets.
func (s *Snapshot) Counts() map[policy.Status]int {
	out := map[policy.Status]int{}
	for _, t := range s.Targets {
		for i := range t.Keys {
			out[t.Keys[i].Verdict.Status]++
		}
	}
	return out
}

// Locate returns the key with this id (or ARN) in a region, with its target.
// An empty accountID matches any account. It returns nils when no such key is known.
func (s *Snapshot) Locate(accountID, region, keyID string) (*TargetState, *Key) {
	for _, t := range s.Targets {
		if (accountID != "" && t.AccountID != accountID) || t.Region != region {
			continue
		}
		for i := range t.Keys {
			if t.Keys[i].ID == keyID || t.Keys[i].ARN == keyID {
				return t, &t.Keys[i]
			}
		}
	}
	return nil, nil
}

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
