// Package policy decides the rotation verdict of one KMS key.
//
// Everything here is a pure function of the key's metadata, its rotation
// status, its tags, the configured policy and the current time: no AWS calls,
// so that a table test can cover every row of the scope rules in
// docs/aws-semantics.md, section "Which keys are in scope".
package policy

import (
	"strings"
	"time"
)

// Status is the verdict class of a key.
type Status string

// The verdict classes, exactly one per key.
const (
	Compliant     Status = "compliant"
	Noncompliant  Status = "noncompliant"
	NotApplicable Status = "not_applicable"
	Unknown       Status = "unknown"
	Exempt        Status = "exempt"
)

// Statuses lists every Status, in a stable order.
var Statuses = [...]Status{Compliant, Noncompliant, NotApplicable, Unknown, Exempt}

// Reasons that go with a verdict. Unknown verdicts carry the AWS error code instead.
const (
	ReasonRotationEnabled     = "rotation_enabled"
	ReasonRotationDisabled    = "rotation_disabled"
	ReasonPeriodExceedsPolicy = "period_exceeds_policy"
	ReasonExemptionExpired    = "exemption_expired"
	ReasonExemptionInvalid    = "exemption_invalid_date"
	ReasonExemptionTag        = "exemption_tag"
	// With --compliance.max-key-material-age-days: the current key material
	// is older than the limit (rotation enabled or not), or automatic
	// rotation is off but the material was rotated on demand within it.
	ReasonMaterialTooOld  = "key_material_too_old"
	ReasonRotatedOnDemand = "rotated_on_demand"
	ReasonHistoryNotRead  = "RotationHistoryNotRead"
	// ReasonMaterialAgeUnknown: the key never rotated and its material's
	// creation is not known (a multi-Region replica shares the material of
	// its primary, made before the replica; an endpoint without CreationDate).
	ReasonMaterialAgeUnknown = "KeyMaterialAgeUnknown"
	ReasonRotationNotRead    = "RotationStatusNotRead"

	ReasonAWSManaged             = "aws_managed"
	ReasonAsymmetric             = "asymmetric"
	ReasonHMAC                   = "hmac"
	ReasonUnsupportedSpec        = "unsupported_key_spec"
	ReasonExternalOrigin         = "external_origin"
	ReasonCustomKeyStore         = "custom_key_store"
	ReasonDisabled               = "disabled"
	ReasonPendingDeletion        = "pending_deletion"
	ReasonPendingImport          = "pending_import"
	ReasonPendingReplicaDeletion = "pending_replica_deletion"
	ReasonUnavailable            = "unavailable"
	ReasonCreating               = "creating"
	ReasonUpdating               = "updating"
	ReasonUnsupportedState       = "unsupported_key_state"
)

// Values of KeyMetadata fields the rules look at (as the KMS API spells them).
const (
	ManagerCustomer  = "CUSTOMER"
	ManagerAWS       = "AWS"
	SpecSymmetric    = "SYMMETRIC_DEFAULT"
	OriginAWSKMS     = "AWS_KMS"
	OriginExternal   = "EXTERNAL"
	OriginCloudHSM   = "AWS_CLOUDHSM"
	OriginExternalKS = "EXTERNAL_KEY_STORE"
	StateEnabled     = "Enabled"
	StateDisabled    = "Disabled"
)

// DefaultRotationPeriodDays is what AWS uses when no period was chosen, and what
// the policy assumes when the API reports none (as older APIs and emulators do).
const DefaultRotationPeriodDays = 365

// The rotation periods EnableKeyRotation accepts (docs/aws-semantics.md,
// "EnableKeyRotation").
const (
	MinRotationPeriodDays = 90
	MaxRotationPeriodDays = 2560
)

// ValidRotationPeriod tells whether KMS accepts a rotation period.
func ValidRotationPeriod(days int) bool {
	return days >= MinRotationPeriodDays && days <= MaxRotationPeriodDays
}

// MultiRegionReplica is MultiRegionConfiguration.MultiRegionKeyType of a
// replica key: its rotation is set on the primary, in the primary's region.
const MultiRegionReplica = "REPLICA"

// Meta is the part of DescribeKey's KeyMetadata that the rules need.
type Meta struct {
	KeyManager       string
	KeySpec          string
	KeyUsage         string
	KeyState         string
	Origin           string
	CustomKeyStoreID string
}

// Rotation is what GetKeyRotationStatus returned.
type Rotation struct {
	Enabled bool
	// PeriodDays is 0 when the API did not report one.
	PeriodDays int32
	// NextRotation is zero when the API did not report one.
	NextRotation time.Time
}

// RotationType values of ListKeyRotations' entries.
const (
	RotationAutomatic = "AUTOMATIC"
	RotationOnDemand  = "ON_DEMAND"
)

// MaxOnDemandRotations is how many on-demand rotations a key may have, ever
// (RotateKeyOnDemand then fails with LimitExceededException).
const MaxOnDemandRotations = 25

// History is what ListKeyRotations returned for a key: the rotations of its
// key material that completed.
type History struct {
	// LastRotation is when the last rotation completed; zero: never rotated.
	LastRotation time.Time
	// LastType is the RotationType of the last rotation (RotationAutomatic,
	// RotationOnDemand); "" when the key never rotated.
	LastType string
	// Automatic and OnDemand count the completed rotations of each type.
	Automatic, OnDemand int32
	// Material is a hash of the key's CurrentKeyMaterialId (DescribeKey)
	// when the history was read, to tell whether the key rotated since
	// without keeping the id itself (64 bytes a key); 0 where the id was
	// not reported.
	Material uint64
	// ReadAt is when the history was read, in Unix nanoseconds.
	ReadAt int64
	// Error is the error code ListKeyRotations answered (AccessDenied,
	// ...); the other fields but Material and ReadAt are then unset.
	Error string
}

// MaterialSince returns when the key's current material was made: its last
// rotation, or the key's creation (created) when it never rotated.
func (h *History) MaterialSince(created time.Time) time.Time {
	if h.LastRotation.IsZero() {
		return created
	}
	return h.LastRotation
}

// OnDemandLeft is how many on-demand rotations the key may still have.
func (h *History) OnDemandLeft() int32 { return max(0, MaxOnDemandRotations-h.OnDemand) }

// Policy is the organisation's rotation policy.
type Policy struct {
	// MaxRotationPeriodDays: a rotating key with a longer period is noncompliant.
	// 0 means no maximum (the command line always sets one, 90..2560).
	MaxRotationPeriodDays int
	// ExemptionTag is the tag key whose non-empty value exempts a key; the
	// optional tag ExemptionTag+"-until" holds the last day (YYYY-MM-DD, UTC)
	// on which the exemption holds.
	ExemptionTag string
	// MaxKeyMaterialAgeDays: when > 0, an in-scope key whose current key
	// material (History.MaterialSince) is older is noncompliant
	// (ReasonMaterialTooOld), and a key with automatic rotation off whose
	// last rotation was on demand, within the limit, is compliant
	// (ReasonRotatedOnDemand). 0: the material's age is not judged.
	MaxKeyMaterialAgeDays int
}

// ExemptionUntilTag is the tag key holding the exemption's last day.
func (p Policy) ExemptionUntilTag() string { return p.ExemptionTag + "-until" }

// Verdict is the outcome for one key.
type Verdict struct {
	Status Status
	// Reason says why: one of the Reason constants, or an AWS error code for Unknown.
	Reason string
	// ExemptionReason is the exemption tag's text, for exempt keys and for
	// keys whose exemption expired or is invalid.
	ExemptionReason string
	// ExemptionExpiry is the instant the exemption ends (the day after the
	// "-until" date, 00:00 UTC); zero when there is no expiry.
	ExemptionExpiry time.Time
}

// Input is everything known about one key when its verdict is decided.
// A non-empty error code means that step failed; later fields are then unset.
type Input struct {
	DescribeError string
	Meta          Meta
	RotationError string
	// Rotation is nil when the status was not read.
	Rotation  *Rotation
	TagsError string
	// Tags is nil when the tags were not read.
	Tags map[string]string
	// Created is when the key's first material was made: its CreationDate,
	// zero where not known (a multi-Region replica's: its primary's).
	Created      time.Time
	HistoryError string
	// History is nil when ListKeyRotations was not read (see NeedsHistory).
	History *History
}

// Scope says whether the rotation rule applies to a key with this metadata.
// It returns "" when it does, or the not-applicable reason.
func Scope(m Meta) string {
	if m.KeyManager != ManagerCustomer {
		return ReasonAWSManaged
	}
	if m.CustomKeyStoreID != "" || m.Origin == OriginCloudHSM || m.Origin == OriginExternalKS {
		return ReasonCustomKeyStore
	}
	if m.Origin == OriginExternal {
		return ReasonExternalOrigin
	}
	if m.Origin != "" && m.Origin != OriginAWSKMS {
		return ReasonCustomKeyStore
	}
	if m.KeySpec != SpecSymmetric && m.KeySpec != "" {
		switch {
		case strings.HasPrefix(m.KeySpec, "HMAC_"):
			return ReasonHMAC
		case strings.HasPrefix(m.KeySpec, "RSA_"), strings.HasPrefix(m.KeySpec, "ECC_"),
			strings.HasPrefix(m.KeySpec, "ML_DSA_"), strings.HasPrefix(m.KeySpec, "ML_KEM_"),
			m.KeySpec == "SM2":
			return ReasonAsymmetric
		default:
			return ReasonUnsupportedSpec
		}
	}
	switch m.KeyState {
	case StateEnabled:
		return ""
	case StateDisabled:
		return ReasonDisabled
	case "PendingDeletion":
		return ReasonPendingDeletion
	case "PendingImport":
		return ReasonPendingImport
	case "PendingReplicaDeletion":
		return ReasonPendingReplicaDeletion
	case "Unavailable":
		return ReasonUnavailable
	case "Creating":
		return ReasonCreating
	case "Updating":
		return ReasonUpdating
	default:
		return ReasonUnsupportedState
	}
}

// NeedsRotationStatus says whether GetKeyRotationStatus should be called for a
// key: for keys in scope, whose verdict needs it, and for enabled AWS-managed
// keys (readable where the key policy allows; shown, not judged). Keys that
// cannot rotate, and disabled keys (not applicable whatever their setting),
// are never asked: each call is a billed request.
func NeedsRotationStatus(m Meta) bool {
	switch Scope(m) {
	case "":
		return true
	case ReasonAWSManaged:
		return m.KeyState == StateEnabled && (m.KeySpec == SpecSymmetric || m.KeySpec == "")
	}
	return false
}

// NeedsHistory says whether ListKeyRotations is read for a key: for keys in
// scope, whatever the policy (the history is evidence shown for every key
// that should rotate, and judged with MaxKeyMaterialAgeDays).
func NeedsHistory(m Meta) bool { return Scope(m) == "" }

// NeedsExemptionTags says whether the verdict depends on the key's tags: only
// for an in-scope key that would otherwise be noncompliant. in holds what was
// read before the tags.
func NeedsExemptionTags(in Input, p Policy, now time.Time) bool {
	return judge(in, p, now).Status == Noncompliant
}

// PeriodExceeds tells whether a rotating key's period (365 days where none
// was reported) is longer than the policy's maximum.
func PeriodExceeds(r *Rotation, p Policy) bool {
	period := int(r.PeriodDays)
	if period == 0 {
		period = DefaultRotationPeriodDays
	}
	return p.MaxRotationPeriodDays > 0 && period > p.MaxRotationPeriodDays
}

// Decide returns the verdict for one key.
func Decide(in Input, p Policy, now time.Time) Verdict {
	v := judge(in, p, now)
	if v.Status != Noncompliant {
		return v
	}
	if in.TagsError != "" {
		// Whether the key is exempt cannot be told: never guess noncompliant.
		return Verdict{Status: Unknown, Reason: in.TagsError}
	}
	return exemption(in.Tags, p, now, v.Reason)
}

// judge returns the verdict of a key before its exemption tags are looked
// at: Noncompliant carries the reason it fails.
func judge(in Input, p Policy, now time.Time) Verdict {
	if in.DescribeError != "" {
		return Verdict{Status: Unknown, Reason: in.DescribeError}
	}
	if reason := Scope(in.Meta); reason != "" {
		return Verdict{Status: NotApplicable, Reason: reason}
	}
	if in.RotationError != "" {
		return Verdict{Status: Unknown, Reason: in.RotationError}
	}
	if in.Rotation == nil {
		return Verdict{Status: Unknown, Reason: ReasonRotationNotRead}
	}
	if in.Rotation.Enabled && PeriodExceeds(in.Rotation, p) {
		return Verdict{Status: Noncompliant, Reason: ReasonPeriodExceedsPolicy}
	}
	if p.MaxKeyMaterialAgeDays <= 0 {
		if in.Rotation.Enabled {
			return Verdict{Status: Compliant, Reason: ReasonRotationEnabled}
		}
		return Verdict{Status: Noncompliant, Reason: ReasonRotationDisabled}
	}
	// The material's age decides: without the history it cannot be told.
	switch {
	case in.HistoryError != "":
		return Verdict{Status: Unknown, Reason: in.HistoryError}
	case in.History == nil:
		return Verdict{Status: Unknown, Reason: ReasonHistoryNotRead}
	case in.History.LastRotation.IsZero() && in.Created.IsZero():
		return Verdict{Status: Unknown, Reason: ReasonMaterialAgeUnknown}
	}
	young := now.Before(MaterialDeadline(in.History, in.Created, p))
	switch {
	case in.Rotation.Enabled && young:
		return Verdict{Status: Compliant, Reason: ReasonRotationEnabled}
	case in.Rotation.Enabled:
		return Verdict{Status: Noncompliant, Reason: ReasonMaterialTooOld}
	case young && in.History.LastType == RotationOnDemand:
		return Verdict{Status: Compliant, Reason: ReasonRotatedOnDemand}
	}
	return Verdict{Status: Noncompliant, Reason: ReasonRotationDisabled}
}

// MaterialDeadline is the instant the key's current material becomes older
// than MaxKeyMaterialAgeDays (zero when the policy sets no limit): a
// compliant verdict that rests on the material's age ends then.
func MaterialDeadline(h *History, created time.Time, p Policy) time.Time {
	if p.MaxKeyMaterialAgeDays <= 0 || h == nil {
		return time.Time{}
	}
	return h.MaterialSince(created).Add(time.Duration(p.MaxKeyMaterialAgeDays) * 24 * time.Hour)
}

// exemption decides between exempt and noncompliant (with the given reason)
// from the key's tags.
func exemption(tags map[string]string, p Policy, now time.Time, failure string) Verdict {
	text := strings.TrimSpace(tags[p.ExemptionTag])
	if p.ExemptionTag == "" || text == "" {
		return Verdict{Status: Noncompliant, Reason: failure}
	}
	v := Verdict{Status: Exempt, Reason: ReasonExemptionTag, ExemptionReason: text}
	until, ok := tags[p.ExemptionUntilTag()]
	if !ok {
		return v
	}
	expiry, err := ParseExemptionUntil(until)
	if err != nil {
		v.Status, v.Reason = Noncompliant, ReasonExemptionInvalid
		return v
	}
	v.ExemptionExpiry = expiry
	if !now.Before(expiry) {
		v.Status, v.Reason = Noncompliant, ReasonExemptionExpired
	}
	return v
}

// ParseExemptionUntil reads an exemption's last day (YYYY-MM-DD, UTC) and
// returns the instant the exemption ends: the start of the following day.
func ParseExemptionUntil(s string) (time.Time, error) {
	day, err := time.Parse(time.DateOnly, strings.TrimSpace(s))
	if err != nil {
		return time.Time{}, err
	}
	return day.AddDate(0, 0, 1), nil
}
