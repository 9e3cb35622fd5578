package policy

import (
	"strings"
	"testing"
	"time"
	"unicode"
)

var (
	testPolicy = Policy{MaxRotationPeriodDays: 365, ExemptionTag: "kms-rotation-exempt"}
	testNow    = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
)

func sym(state string) Meta {
	return Meta{KeyManager: ManagerCustomer, KeySpec: SpecSymmetric, KeyUsage: "ENCRYPT_DECRYPT", KeyState: state, Origin: OriginAWSKMS}
}

func with(m Meta, f func(*Meta)) Meta { f(&m); return m }

func TestDecide(t *testing.T) {
	on := &Rotation{Enabled: true, PeriodDays: 365}
	off := &Rotation{Enabled: false}
	exempt := map[string]string{"kms-rotation-exempt": "legacy HSM integration, ticket SEC-12"}
	tests := []struct {
		name   string
		in     Input
		status Status
		reason string
	}{
		// In scope.
		{"rotating", Input{Meta: sym("Enabled"), Rotation: on}, Compliant, ReasonRotationEnabled},
		{"rotating, no period reported means 365", Input{Meta: sym("Enabled"), Rotation: &Rotation{Enabled: true}}, Compliant, ReasonRotationEnabled},
		{"rotating at the 90-day minimum", Input{Meta: sym("Enabled"), Rotation: &Rotation{Enabled: true, PeriodDays: 90}}, Compliant, ReasonRotationEnabled},
		{"rotating, period above policy", Input{Meta: sym("Enabled"), Rotation: &Rotation{Enabled: true, PeriodDays: 730}, Tags: map[string]string{}}, Noncompliant, ReasonPeriodExceedsPolicy},
		{"rotating, period above policy, exempt", Input{Meta: sym("Enabled"), Rotation: &Rotation{Enabled: true, PeriodDays: 730}, Tags: exempt}, Exempt, ReasonExemptionTag},
		{"rotating with an expired exemption tag stays compliant", Input{Meta: sym("Enabled"), Rotation: on, Tags: map[string]string{"kms-rotation-exempt": "x", "kms-rotation-exempt-until": "2020-01-01"}}, Compliant, ReasonRotationEnabled},
		{"not rotating", Input{Meta: sym("Enabled"), Rotation: off, Tags: map[string]string{}}, Noncompliant, ReasonRotationDisabled},
		{"not rotating, empty origin means AWS_KMS", Input{Meta: with(sym("Enabled"), func(m *Meta) { m.Origin = "" }), Rotation: off, Tags: nil}, Noncompliant, ReasonRotationDisabled},
		{"not rotating, exempt", Input{Meta: sym("Enabled"), Rotation: off, Tags: exempt}, Exempt, ReasonExemptionTag},
		{"not rotating, exemption with blank reason", Input{Meta: sym("Enabled"), Rotation: off, Tags: map[string]string{"kms-rotation-exempt": "  "}}, Noncompliant, ReasonRotationDisabled},
		{"not rotating, exempt until tomorrow", Input{Meta: sym("Enabled"), Rotation: off, Tags: map[string]string{"kms-rotation-exempt": "x", "kms-rotation-exempt-until": "2026-11-28"}}, Exempt, ReasonExemptionTag},
		{"not rotating, exempt until today (holds all day)", Input{Meta: sym("Enabled"), Rotation: off, Tags: map[string]string{"kms-rotation-exempt": "x", "kms-rotation-exempt-until": "2026-11-27"}}, Exempt, ReasonExemptionTag},
		{"not rotating, exemption expired yesterday", Input{Meta: sym("Enabled"), Rotation: off, Tags: map[string]string{"kms-rotation-exempt": "x", "kms-rotation-exempt-until": "2026-11-26"}}, Noncompliant, ReasonExemptionExpired},
		{"not rotating, exemption date unreadable", Input{Meta: sym("Enabled"), Rotation: off, Tags: map[string]string{"kms-rotation-exempt": "x", "kms-rotation-exempt-until": "next year"}}, Noncompliant, ReasonExemptionInvalid},
		{"not rotating, only the until tag", Input{Meta: sym("Enabled"), Rotation: off, Tags: map[string]string{"kms-rotation-exempt-until": "2030-01-01"}}, Noncompliant, ReasonRotationDisabled},
		{"not rotating, tags unreadable", Input{Meta: sym("Enabled"), Rotation: off, TagsError: "AccessDeniedException"}, Unknown, "AccessDeniedException"},
		// Status could not be read.
		{"describe denied", Input{DescribeError: "AccessDeniedException"}, Unknown, "AccessDeniedException"},
		{"status denied", Input{Meta: sym("Enabled"), RotationError: "AccessDeniedException"}, Unknown, "AccessDeniedException"},
		{"status throttled after retries", Input{Meta: sym("Enabled"), RotationError: "ThrottlingException"}, Unknown, "ThrottlingException"},
		{"status timed out", Input{Meta: sym("Enabled"), RotationError: "RequestTimeout"}, Unknown, "RequestTimeout"},
		{"status not read", Input{Meta: sym("Enabled")}, Unknown, "RotationStatusNotRead"},
		// Out of scope.
		{"aws managed", Input{Meta: with(sym("Enabled"), func(m *Meta) { m.KeyManager = ManagerAWS }), Rotation: on}, NotApplicable, ReasonAWSManaged},
		{"aws managed, status denied", Input{Meta: with(sym("Enabled"), func(m *Meta) { m.KeyManager = ManagerAWS }), RotationError: "AccessDeniedException"}, NotApplicable, ReasonAWSManaged},
		{"rsa", Input{Meta: with(sym("Enabled"), func(m *Meta) { m.KeySpec = "RSA_2048" }), Rotation: off}, NotApplicable, ReasonAsymmetric},
		{"ecc", Input{Meta: with(sym("Enabled"), func(m *Meta) { m.KeySpec = "ECC_NIST_P256" })}, NotApplicable, ReasonAsymmetric},
		{"ecc secg", Input{Meta: with(sym("Enabled"), func(m *Meta) { m.KeySpec = "ECC_SECG_P256K1" })}, NotApplicable, ReasonAsymmetric},
		{"sm2", Input{Meta: with(sym("Enabled"), func(m *Meta) { m.KeySpec = "SM2" })}, NotApplicable, ReasonAsymmetric},
		{"ml-dsa", Input{Meta: with(sym("Enabled"), func(m *Meta) { m.KeySpec = "ML_DSA_65" })}, NotApplicable, ReasonAsymmetric},
		{"ml-kem", Input{Meta: with(sym("Enabled"), func(m *Meta) { m.KeySpec = "ML_KEM_768" })}, NotApplicable, ReasonAsymmetric},
		{"hmac", Input{Meta: with(sym("Enabled"), func(m *Meta) { m.KeySpec = "HMAC_256" }), Rotation: off}, NotApplicable, ReasonHMAC},
		{"unknown spec", Input{Meta: with(sym("Enabled"), func(m *Meta) { m.KeySpec = "AES_512_FUTURE" })}, NotApplicable, ReasonUnsupportedSpec},
		{"imported material", Input{Meta: with(sym("Enabled"), func(m *Meta) { m.Origin = OriginExternal }), RotationError: "UnsupportedOperationException"}, NotApplicable, ReasonExternalOrigin},
		{"imported, pending import", Input{Meta: with(sym("PendingImport"), func(m *Meta) { m.Origin = OriginExternal })}, NotApplicable, ReasonExternalOrigin},
		{"cloudhsm key store", Input{Meta: with(sym("Enabled"), func(m *Meta) { m.Origin = OriginCloudHSM; m.CustomKeyStoreID = "cks-1" })}, NotApplicable, ReasonCustomKeyStore},
		{"external key store", Input{Meta: with(sym("Enabled"), func(m *Meta) { m.Origin = OriginExternalKS; m.CustomKeyStoreID = "cks-2" })}, NotApplicable, ReasonCustomKeyStore},
		{"custom key store id alone", Input{Meta: with(sym("Enabled"), func(m *Meta) { m.CustomKeyStoreID = "cks-3" })}, NotApplicable, ReasonCustomKeyStore},
		{"disabled key keeps its setting but is out of scope", Input{Meta: sym("Disabled"), Rotation: off}, NotApplicable, ReasonDisabled},
		{"pending deletion", Input{Meta: sym("PendingDeletion"), Rotation: off}, NotApplicable, ReasonPendingDeletion},
		{"pending import", Input{Meta: sym("PendingImport")}, NotApplicable, ReasonPendingImport},
		{"pending replica deletion", Input{Meta: sym("PendingReplicaDeletion")}, NotApplicable, ReasonPendingReplicaDeletion},
		{"unavailable", Input{Meta: sym("Unavailable")}, NotApplicable, ReasonUnavailable},
		{"creating", Input{Meta: sym("Creating")}, NotApplicable, ReasonCreating},
		{"updating", Input{Meta: sym("Updating")}, NotApplicable, ReasonUpdating},
		{"unknown state", Input{Meta: sym("Mystery")}, NotApplicable, ReasonUnsupportedState},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Decide(tt.in, testPolicy, testNow)
			if got.Status != tt.status || got.Reason != tt.reason {
				t.Errorf("Decide() = %s/%s, want %s/%s", got.Status, got.Reason, tt.status, tt.reason)
			}
		})
	}
}

func TestDecideExemptionDetails(t *testing.T) {
	in := Input{Meta: sym("Enabled"), Rotation: &Rotation{}, Tags: map[string]string{
		"kms-rotation-exempt": " vendor appliance ", "kms-rotation-exempt-until": "2027-03-31"}}
	got := Decide(in, testPolicy, testNow)
	want := Verdict{Status: Exempt, Reason: ReasonExemptionTag, ExemptionReason: "vendor appliance",
		ExemptionExpiry: time.Date(2027, 4, 1, 0, 0, 0, 0, time.UTC)}
	if got != want {
		t.Errorf("Decide() = %+v, want %+v", got, want)
	}
	// One instant before the end it holds; at the end it has expired.
	if v := Decide(in, testPolicy, want.ExemptionExpiry.Add(-time.Nanosecond)); v.Status != Exempt {
		t.Errorf("just before expiry: %s", v.Status)
	}
	if v := Decide(in, testPolicy, want.ExemptionExpiry); v.Status != Noncompliant || v.Reason != ReasonExemptionExpired {
		t.Errorf("at expiry: %s/%s", v.Status, v.Reason)
	}
}

func TestDecideCustomExemptionTagAndPolicy(t *testing.T) {
	p := Policy{MaxRotationPeriodDays: 180, ExemptionTag: "sec:no-rotate"}
	in := Input{Meta: sym("Enabled"), Rotation: &Rotation{Enabled: true}, Tags: map[string]string{}}
	if v := Decide(in, p, testNow); v.Reason != ReasonPeriodExceedsPolicy {
		t.Errorf("unreported period (365) against a 180-day policy: %s/%s", v.Status, v.Reason)
	}
	in.Tags = map[string]string{"kms-rotation-exempt": "x"}
	if v := Decide(in, p, testNow); v.Status != Noncompliant {
		t.Errorf("the default tag must not exempt when another tag is configured: %s", v.Status)
	}
	in.Tags = map[string]string{"sec:no-rotate": "x"}
	if v := Decide(in, p, testNow); v.Status != Exempt {
		t.Errorf("configured tag: %s", v.Status)
	}
}

func TestNeedsRotationStatus(t *testing.T) {
	tests := []struct {
		m    Meta
		want bool
	}{
		{sym("Enabled"), true},
		{sym("Disabled"), false}, // not applicable whatever its setting: not asked
		{sym("PendingDeletion"), false},
		{with(sym("Enabled"), func(m *Meta) { m.KeyManager = ManagerAWS }), true},
		{with(sym("PendingDeletion"), func(m *Meta) { m.KeyManager = ManagerAWS }), false},
		{with(sym("Enabled"), func(m *Meta) { m.KeySpec = "RSA_4096" }), false},
		{with(sym("Enabled"), func(m *Meta) { m.KeySpec = "HMAC_512" }), false},
		{with(sym("Enabled"), func(m *Meta) { m.Origin = OriginExternal }), false},
		{with(sym("Enabled"), func(m *Meta) { m.CustomKeyStoreID = "cks-1" }), false},
	}
	for _, tt := range tests {
		if got := NeedsRotationStatus(tt.m); got != tt.want {
			t.Errorf("NeedsRotationStatus(%+v) = %v, want %v", tt.m, got, tt.want)
		}
	}
}

func TestNeedsExemptionTags(t *testing.T) {
	needs := func(m Meta, r *Rotation) bool {
		return NeedsExemptionTags(Input{Meta: m, Rotation: r}, testPolicy, testNow)
	}
	if needs(sym("Enabled"), &Rotation{Enabled: true, PeriodDays: 365}) {
		t.Error("a compliant key needs no tags")
	}
	if !needs(sym("Enabled"), &Rotation{}) {
		t.Error("a key that does not rotate needs its tags")
	}
	if !needs(sym("Enabled"), &Rotation{Enabled: true, PeriodDays: 400}) {
		t.Error("a key rotating too slowly needs its tags")
	}
	if needs(sym("Disabled"), &Rotation{}) {
		t.Error("an out-of-scope key needs no tags")
	}
	if needs(sym("Enabled"), nil) {
		t.Error("a key whose status is unknown needs no tags")
	}
}

// TestDecideMaterialAge pins every row of the key-material age policy
// (--compliance.max-key-material-age-days, here 365): what the verdict is
// for each combination of the rotation setting, the last rotation's type and
// age, and the history's read, and whether the tags are then read. Without
// the limit the history changes nothing.
func TestDecideMaterialAge(t *testing.T) {
	p := testPolicy
	p.MaxKeyMaterialAgeDays = 365
	day := 24 * time.Hour
	on, off := &Rotation{Enabled: true, PeriodDays: 365}, &Rotation{}
	created := testNow.Add(-1000 * day)
	rotated := func(ago time.Duration, typ string) *History {
		h := &History{LastRotation: testNow.Add(-ago), LastType: typ}
		if typ == RotationOnDemand {
			h.OnDemand = 1
		} else {
			h.Automatic = 1
		}
		return h
	}
	never := &History{}
	exempt := map[string]string{"kms-rotation-exempt": "vendor appliance"}
	tests := []struct {
		name      string
		in        Input
		status    Status
		reason    string
		needsTags bool
	}{
		{"rotating, rotated 100 days ago", Input{Rotation: on, History: rotated(100*day, RotationAutomatic)}, Compliant, ReasonRotationEnabled, false},
		{"rotating, rotated exactly at the limit", Input{Rotation: on, History: rotated(365*day-time.Nanosecond, RotationAutomatic)}, Compliant, ReasonRotationEnabled, false},
		{"rotating, last rotation 365 days ago: too old", Input{Rotation: on, History: rotated(365*day, RotationAutomatic)}, Noncompliant, ReasonMaterialTooOld, true},
		{"rotating, last rotation 500 days ago (rotation silently not happening)", Input{Rotation: on, History: rotated(500*day, RotationAutomatic)}, Noncompliant, ReasonMaterialTooOld, true},
		{"rotating, never rotated, created 1000 days ago", Input{Rotation: on, History: never}, Noncompliant, ReasonMaterialTooOld, true},
		{"rotating, never rotated, created 10 days ago", Input{Rotation: on, History: never, Created: testNow.Add(-10 * day)}, Compliant, ReasonRotationEnabled, false},
		{"rotating, too old, exempt", Input{Rotation: on, History: rotated(500*day, RotationAutomatic), Tags: exempt}, Exempt, ReasonExemptionTag, true},
		{"rotating, period above policy whatever the age", Input{Rotation: &Rotation{Enabled: true, PeriodDays: 730}, History: rotated(1*day, RotationAutomatic)}, Noncompliant, ReasonPeriodExceedsPolicy, true},
		{"not rotating, rotated on demand 30 days ago", Input{Rotation: off, History: rotated(30*day, RotationOnDemand)}, Compliant, ReasonRotatedOnDemand, false},
		{"not rotating, rotated on demand 400 days ago", Input{Rotation: off, History: rotated(400*day, RotationOnDemand)}, Noncompliant, ReasonRotationDisabled, true},
		{"not rotating, last rotation automatic 30 days ago (turned off since)", Input{Rotation: off, History: rotated(30*day, RotationAutomatic)}, Noncompliant, ReasonRotationDisabled, true},
		{"not rotating, never rotated, created yesterday", Input{Rotation: off, History: never, Created: testNow.Add(-day)}, Noncompliant, ReasonRotationDisabled, true},
		{"not rotating, on demand, exempt all the same", Input{Rotation: off, History: rotated(400*day, RotationOnDemand), Tags: exempt}, Exempt, ReasonExemptionTag, true},
		{"history denied: cannot tell", Input{Rotation: on, HistoryError: "AccessDeniedException"}, Unknown, "AccessDeniedException", false},
		{"history denied, not rotating: it may be rotated on demand", Input{Rotation: off, HistoryError: "AccessDeniedException"}, Unknown, "AccessDeniedException", false},
		{"history not read", Input{Rotation: on}, Unknown, ReasonHistoryNotRead, false},
		{"status denied comes first", Input{RotationError: "AccessDeniedException", History: never}, Unknown, "AccessDeniedException", false},
		{"period above policy comes before a history error", Input{Rotation: &Rotation{Enabled: true, PeriodDays: 730}, HistoryError: "AccessDeniedException"}, Noncompliant, ReasonPeriodExceedsPolicy, true},
		{"too old, tags unreadable: cannot tell whether exempt", Input{Rotation: on, History: rotated(500*day, RotationAutomatic), TagsError: "ThrottlingException"}, Unknown, "ThrottlingException", true},
		{"too old, exemption expired", Input{Rotation: on, History: rotated(500*day, RotationAutomatic), Tags: map[string]string{"kms-rotation-exempt": "x", "kms-rotation-exempt-until": "2020-01-01"}}, Noncompliant, ReasonExemptionExpired, true},
		{"never rotated, creation unknown (a replica)", Input{Rotation: on, History: never}, Unknown, ReasonMaterialAgeUnknown, false},
		{"rotated, creation unknown: the rotation dates the material", Input{Rotation: on, History: rotated(10*day, RotationAutomatic)}, Compliant, ReasonRotationEnabled, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := tt.in
			in.Meta = sym("Enabled")
			if in.Created.IsZero() && !strings.Contains(tt.name, "creation unknown") {
				in.Created = created
			}
			if got := NeedsExemptionTags(in, p, testNow); got != tt.needsTags {
				t.Errorf("NeedsExemptionTags = %v, want %v", got, tt.needsTags)
			}
			if in.Tags == nil && in.TagsError == "" {
				in.Tags = map[string]string{}
			}
			if v := Decide(in, p, testNow); v.Status != tt.status || v.Reason != tt.reason {
				t.Errorf("Decide = %s/%s, want %s/%s", v.Status, v.Reason, tt.status, tt.reason)
			}
			// Without the limit, the verdict is today's whatever the history.
			in.HistoryError, in.History = "AccessDeniedException", nil
			want := Decide(Input{Meta: in.Meta, Rotation: in.Rotation, RotationError: in.RotationError, Tags: in.Tags}, testPolicy, testNow)
			if v := Decide(in, testPolicy, testNow); v != want {
				t.Errorf("without a material age limit: %s/%s, want %s/%s", v.Status, v.Reason, want.Status, want.Reason)
			}
		})
	}
	// Out of scope stays out of scope.
	if v := Decide(Input{Meta: sym("Disabled"), Rotation: on, History: never}, p, testNow); v.Status != NotApplicable {
		t.Errorf("disabled key with a limit: %s/%s", v.Status, v.Reason)
	}
	if !NeedsHistory(sym("Enabled")) || NeedsHistory(sym("Disabled")) || NeedsHistory(with(sym("Enabled"), func(m *Meta) { m.KeyManager = ManagerAWS })) {
		t.Error("the history is read for keys in scope, and only for them")
	}
}

// TestMaterialDeadline: the instant a compliant verdict resting on the
// material's age ends, and none without a limit.
func TestMaterialDeadline(t *testing.T) {
	created := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	p := Policy{MaxKeyMaterialAgeDays: 90}
	if d := MaterialDeadline(&History{}, created, p); !d.Equal(created.AddDate(0, 0, 90)) {
		t.Errorf("never rotated: %v", d)
	}
	last := created.AddDate(0, 6, 0)
	if d := MaterialDeadline(&History{LastRotation: last}, created, p); !d.Equal(last.AddDate(0, 0, 90)) {
		t.Errorf("rotated: %v", d)
	}
	if d := MaterialDeadline(&History{LastRotation: last}, created, Policy{}); !d.IsZero() {
		t.Errorf("no limit: %v", d)
	}
	if d := MaterialDeadline(nil, created, p); !d.IsZero() {
		t.Errorf("no history: %v", d)
	}
	if n := (&History{OnDemand: 24}).OnDemandLeft(); n != 1 {
		t.Errorf("24 on-demand rotations leave %d", n)
	}
	if n := (&History{OnDemand: 30}).OnDemandLeft(); n != 0 {
		t.Errorf("past the cap: %d left", n)
	}
}

// TestWhatIsReadPerKeyKind pins, for each kind of key, the two outcomes a user
// sees: whether the exporter asks AWS for the rotation status (an extra call
// against the account's quota, and an error series if AWS refuses it) and the
// verdict. AWS-managed keys are asked only when they could rotate at all
// (enabled and symmetric), and are never judged.
func TestWhatIsReadPerKeyKind(t *testing.T) {
	aws := func(state, spec string) Meta {
		return with(sym(state), func(m *Meta) { m.KeyManager = ManagerAWS; m.KeySpec = spec })
	}
	on := &Rotation{Enabled: true, PeriodDays: 365}
	tests := []struct {
		name     string
		meta     Meta
		readsRot bool
		status   Status
		reason   string
	}{
		{"customer, symmetric, enabled", sym("Enabled"), true, Compliant, ReasonRotationEnabled},
		{"customer, key spec not reported", with(sym("Enabled"), func(m *Meta) { m.KeySpec = "" }), true, Compliant, ReasonRotationEnabled},
		{"customer, disabled: not read (not applicable whatever its setting)", sym("Disabled"), false, NotApplicable, ReasonDisabled},
		{"customer, pending deletion", sym("PendingDeletion"), false, NotApplicable, ReasonPendingDeletion},
		{"customer, RSA", with(sym("Enabled"), func(m *Meta) { m.KeySpec = "RSA_2048" }), false, NotApplicable, ReasonAsymmetric},
		{"customer, imported material", with(sym("Enabled"), func(m *Meta) { m.Origin = OriginExternal }), false, NotApplicable, ReasonExternalOrigin},
		{"AWS managed, symmetric, enabled: read, shown, not judged", aws("Enabled", SpecSymmetric), true, NotApplicable, ReasonAWSManaged},
		{"AWS managed, key spec not reported", aws("Enabled", ""), true, NotApplicable, ReasonAWSManaged},
		{"AWS managed, RSA", aws("Enabled", "RSA_4096"), false, NotApplicable, ReasonAWSManaged},
		{"AWS managed, ECC", aws("Enabled", "ECC_NIST_P256"), false, NotApplicable, ReasonAWSManaged},
		{"AWS managed, HMAC", aws("Enabled", "HMAC_256"), false, NotApplicable, ReasonAWSManaged},
		{"AWS managed, symmetric, disabled", aws("Disabled", SpecSymmetric), false, NotApplicable, ReasonAWSManaged},
		{"AWS managed, symmetric, pending deletion", aws("PendingDeletion", SpecSymmetric), false, NotApplicable, ReasonAWSManaged},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := NeedsRotationStatus(tt.meta); got != tt.readsRot {
				t.Errorf("NeedsRotationStatus = %v, want %v", got, tt.readsRot)
			}
			in := Input{Meta: tt.meta}
			if tt.readsRot {
				in.Rotation = on
			}
			if v := Decide(in, testPolicy, testNow); v.Status != tt.status || v.Reason != tt.reason {
				t.Errorf("Decide = %s/%s, want %s/%s", v.Status, v.Reason, tt.status, tt.reason)
			}
		})
	}
}

// TestRotationPeriodAgainstPolicy pins the verdict at and around the policy's
// maximum period, and for a policy without one (MaxRotationPeriodDays 0):
// then any rotating key is compliant and its tags are not needed.
func TestRotationPeriodAgainstPolicy(t *testing.T) {
	tests := []struct {
		name      string
		max       int
		period    int32
		status    Status
		reason    string
		needsTags bool
	}{
		{"at the maximum", 365, 365, Compliant, ReasonRotationEnabled, false},
		{"one day over the maximum", 365, 366, Noncompliant, ReasonPeriodExceedsPolicy, true},
		{"unreported period is 365, at a 365-day maximum", 365, 0, Compliant, ReasonRotationEnabled, false},
		{"unreported period is 365, over a 364-day maximum", 364, 0, Noncompliant, ReasonPeriodExceedsPolicy, true},
		{"the 90-day minimum under a 90-day maximum", 90, 90, Compliant, ReasonRotationEnabled, false},
		{"no maximum, the longest period KMS allows", 0, 2560, Compliant, ReasonRotationEnabled, false},
		{"no maximum, unreported period", 0, 0, Compliant, ReasonRotationEnabled, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := Policy{MaxRotationPeriodDays: tt.max, ExemptionTag: testPolicy.ExemptionTag}
			r := &Rotation{Enabled: true, PeriodDays: tt.period}
			if got := NeedsExemptionTags(Input{Meta: sym("Enabled"), Rotation: r}, p, testNow); got != tt.needsTags {
				t.Errorf("NeedsExemptionTags = %v, want %v", got, tt.needsTags)
			}
			v := Decide(Input{Meta: sym("Enabled"), Rotation: r, Tags: map[string]string{}}, p, testNow)
			if v.Status != tt.status || v.Reason != tt.reason {
				t.Errorf("Decide = %s/%s, want %s/%s", v.Status, v.Reason, tt.status, tt.reason)
			}
		})
	}
	// Without a maximum, a key that does not rotate is still noncompliant.
	if v := Decide(Input{Meta: sym("Enabled"), Rotation: &Rotation{}, Tags: map[string]string{}}, Policy{}, testNow); v.Status != Noncompliant || v.Reason != ReasonRotationDisabled {
		t.Errorf("no maximum, not rotating: %s/%s", v.Status, v.Reason)
	}
}

// FuzzParseExemptionUntil checks ParseExemptionUntil against an independent
// reading of the "-until" tag: it accepts exactly what time.Parse(DateOnly)
// accepts once surrounding white space is removed; the end is midnight UTC,
// exactly 24 hours after the start of the named day, and formats back to that
// day; and a key exempt until that day is exempt one nanosecond before the
// end and noncompliant (exemption_expired) at it.
func FuzzParseExemptionUntil(f *testing.F) {
	for _, s := range []string{"2026-11-27", " 2027-01-01 ", "\t2028-02-29\n", "2026-02-30", "2027-02-29", "", " ",
		"27/11/2026", "2026-1-5", "2026-01-05T00:00:00Z", "0000-01-01", "9999-12-31", "+2026-11-27", "2026-11-27x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		end, err := ParseExemptionUntil(s)
		day, refErr := time.Parse(time.DateOnly, strings.TrimFunc(s, unicode.IsSpace))
		if (err == nil) != (refErr == nil) {
			t.Fatalf("ParseExemptionUntil(%q): err %v, but time.Parse of the trimmed text: err %v", s, err, refErr)
		}
		if err != nil {
			return
		}
		if !end.Equal(day.Add(24 * time.Hour)) {
			t.Fatalf("ParseExemptionUntil(%q) = %v, want 24h after %v", s, end, day)
		}
		if end.Location() != time.UTC || end.Hour() != 0 || end.Minute() != 0 || end.Second() != 0 || end.Nanosecond() != 0 {
			t.Fatalf("ParseExemptionUntil(%q) = %v: not midnight UTC", s, end)
		}
		if got, want := end.AddDate(0, 0, -1).Format(time.DateOnly), strings.TrimFunc(s, unicode.IsSpace); got != want {
			t.Fatalf("ParseExemptionUntil(%q) = %v: the day before formats as %q", s, end, got)
		}
		// What a user sees: exempt up to the end of the named day, expired from then on.
		in := Input{Meta: sym("Enabled"), Rotation: &Rotation{}, Tags: map[string]string{
			testPolicy.ExemptionTag: "x", testPolicy.ExemptionUntilTag(): s}}
		if v := Decide(in, testPolicy, end.Add(-time.Nanosecond)); v.Status != Exempt || !v.ExemptionExpiry.Equal(end) {
			t.Fatalf("until %q, just before %v: %s/%s (expiry %v)", s, end, v.Status, v.Reason, v.ExemptionExpiry)
		}
		if v := Decide(in, testPolicy, end); v.Status != Noncompliant || v.Reason != ReasonExemptionExpired {
			t.Fatalf("until %q, at %v: %s/%s", s, end, v.Status, v.Reason)
		}
	})
}

// TestValidRotationPeriod: KMS accepts 90 to 2560 days, both included.
func TestValidRotationPeriod(t *testing.T) {
	for days, want := range map[int]bool{0: false, 89: false, 90: true, 365: true, 2560: true, 2561: false} {
		if got := ValidRotationPeriod(days); got != want {
			t.Errorf("ValidRotationPeriod(%d) = %v, want %v", days, got, want)
		}
	}
}
