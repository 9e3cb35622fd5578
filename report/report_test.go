package report

import (
	"time"

	"github.com/kms-exporter/kms_exporter/internal/harness"
	"github.com/kms-exporter/kms_exporter/model"
	"github.com/kms-exporter/kms_exporter/policy"
)

// now is the instant the tests' reports are made.
var now = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// hostile is an exemption reason written to break out of the HTML page;
// hostileAlias an alias (KMS refuses such names; a compromised or faked
// endpoint need not).
const (
	hostile      = `<script>window.pwned = "script"</script>" onmouseover="window.pwned = 'attribute'`
	hostileAlias = `alias/<img src="/x" onerror="window.pwned = 'alias'">`
)

func day(s string) time.Time {
	t, err := time.Parse(time.DateOnly, s)
	if err != nil {
		panic(err)
	}
	return t
}

func symmetric(state string) policy.Meta {
	return policy.Meta{KeyManager: policy.ManagerCustomer, KeySpec: policy.SpecSymmetric, KeyUsage: "ENCRYPT_DECRYPT",
		KeyState: state, Origin: policy.OriginAWSKMS}
}

func key(id string, aliases ...string) model.Key {
	return model.Key{AccountID: "111122223333", Region: "eu-west-1", ID: id,
		ARN: "arn:aws:kms:eu-west-1:111122223333:key/" + id, Aliases: aliases, Meta: model.MetaOf(symmetric(policy.StateEnabled)),
		CreationDate: day("2024-01-10")}
}

// The keys of every shape the report shows, by name.
var (
	compliantKey = func() model.Key {
		k := key("11111111-1111-1111-1111-111111111111", "alias/payments", "alias/payments-v2")
		k.Rotation = &policy.Rotation{Enabled: true, PeriodDays: 90, NextRotation: day("2026-04-02")}
		k.History = &policy.History{LastRotation: day("2026-01-02"), LastType: policy.RotationAutomatic, Automatic: 9, OnDemand: 2}
		k.Verdict = model.VerdictOf(policy.Verdict{Status: policy.Compliant, Reason: policy.ReasonRotationEnabled})
		k.TagValues = []string{"=HYPERLINK(\"http://attacker.example/\",\"open\")"}
		return k
	}()
	neverRotatedKey = func() model.Key {
		k := key("22222222-2222-2222-2222-222222222222", "alias/legacy-billing")
		k.Rotation = &policy.Rotation{}
		k.History = &policy.History{}
		k.Verdict = model.VerdictOf(policy.Verdict{Status: policy.Noncompliant, Reason: policy.ReasonRotationDisabled})
		k.TagValues = []string{"+1"}
		return k
	}()
	historyNotReadKey = func() model.Key {
		k := key("33333333-3333-3333-3333-333333333333")
		k.Rotation = &policy.Rotation{Enabled: true}
		k.History = &policy.History{Error: "AccessDeniedException"}
		k.Verdict = model.VerdictOf(policy.Verdict{Status: policy.Compliant, Reason: policy.ReasonRotationEnabled})
		k.TagValues = []string{"-2"}
		return k
	}()
	exemptKey = func() model.Key {
		k := key("44444444-4444-4444-4444-444444444444", "alias/vendor-appliance", hostileAlias)
		k.Rotation = &policy.Rotation{}
		k.History = &policy.History{LastRotation: day("2025-02-01"), LastType: policy.RotationOnDemand, OnDemand: 25}
		k.Verdict = model.VerdictOf(policy.Verdict{Status: policy.Exempt, Reason: policy.ReasonExemptionTag, ExemptionReason: hostile,
			ExemptionExpiry: day("2100-01-01")})
		k.TagValues = []string{"@SUM(1+1)"}
		return k
	}()
	unknownKey = func() model.Key {
		k := key("55555555-5555-5555-5555-555555555555", "alias/locked")
		k.Verdict = model.VerdictOf(policy.Verdict{Status: policy.Unknown, Reason: "AccessDeniedException"})
		k.TagValues = []string{"\tx"}
		return k
	}()
	staleKey = func() model.Key {
		k := key("66666666-6666-6666-6666-666666666666")
		k.Region = "us-east-1"
		k.ARN = "arn:aws:kms:us-east-1:111122223333:key/" + k.ID
		k.Rotation = &policy.Rotation{Enabled: true, PeriodDays: 365, NextRotation: day("2026-06-30")}
		k.History = &policy.History{LastRotation: day("2025-06-30"), LastType: policy.RotationAutomatic, Automatic: 1}
		k.Verdict = model.VerdictOf(policy.Verdict{Status: policy.Compliant, Reason: policy.ReasonRotationEnabled})
		k.Stale, k.ReadError = true, "ThrottlingException"
		k.TagValues = []string{"\rx"}
		return k
	}()
	pendingDeletionKey = func() model.Key {
		k := key("77777777-7777-7777-7777-777777777777", "alias/retired")
		k.Region = "us-east-1"
		k.ARN = "arn:aws:kms:us-east-1:111122223333:key/" + k.ID
		k.Meta = model.MetaOf(symmetric("PendingDeletion"))
		k.DeletionDate = new(day("2026-03-08"))
		k.Verdict = model.VerdictOf(policy.Verdict{Status: policy.NotApplicable, Reason: policy.ReasonPendingDeletion})
		k.TagValues = []string{"team a"}
		return k
	}()
)

// snapshot holds a key of every shape in two targets, the second's last
// refresh failed.
func snapshot() *model.Snapshot {
	return &model.Snapshot{TagLabels: []string{"owner"}, Targets: []*model.TargetState{
		{AccountID: "111122223333", Region: "eu-west-1", Success: true, LastSuccess: now.Add(-time.Minute),
			Keys: harness.Keys(compliantKey, neverRotatedKey, historyNotReadKey, exemptKey, unknownKey)},
		{AccountID: "111122223333", Region: "us-east-1", Success: false, Error: "ThrottlingException", LastSuccess: now.Add(-time.Hour),
			Keys: harness.Keys(staleKey, pendingDeletionKey)},
	}}
}
