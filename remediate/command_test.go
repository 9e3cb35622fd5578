package remediate

import (
	"context"
	"strings"
	"testing"

	"github.com/kms-exporter/kms_exporter/model"
	"github.com/kms-exporter/kms_exporter/report"
)

// TestCommand runs the remediate command on a fixed inventory: what it
// prints, its exit code, and what it changed in KMS.
func TestCommand(t *testing.T) {
	const a, b = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"
	run := func(t *testing.T, inv *fakeInventory, opts CommandOptions) (int, error, string, string, *fakeKMS) {
		t.Helper()
		api := newFakeKMS()
		var out, errOut strings.Builder
		code, err := newRemediator(inv, api).Command(context.Background(),
			func(context.Context) *model.Snapshot { return inv.Snapshot() }, opts, &out, &errOut)
		return code, err, out.String(), errOut.String(), api
	}

	t.Run("every noncompliant key", func(t *testing.T) {
		code, err, out, _, api := run(t, unitKeys(a, b), CommandOptions{AllNoncompliant: true})
		if err != nil || code != report.ExitOK {
			t.Fatalf("exit %d, %v\n%s", code, err, out)
		}
		if api.enabled[a] != 365 || api.enabled[b] != 365 {
			t.Errorf("EnableKeyRotation: %v", api.enabled)
		}
		if !strings.Contains(out, "verified: rotation enabled, period 365 days, now compliant") || !strings.Contains(out, "2 of 2 keys remediated") {
			t.Errorf("output:\n%s", out)
		}
	})

	t.Run("dry run of one key, its region from the inventory", func(t *testing.T) {
		code, err, out, _, api := run(t, unitKeys(a), CommandOptions{KeyID: a, DryRun: true, RotationPeriodDays: 180})
		if err != nil || code != report.ExitOK || len(api.enabled) != 0 {
			t.Fatalf("exit %d, %v, changed %v\n%s", code, err, api.enabled, out)
		}
		if !strings.Contains(out, "would enable rotation every 180 days") || !strings.Contains(out, "1 of 1 keys would be remediated (dry run") {
			t.Errorf("output:\n%s", out)
		}
	})

	t.Run("a key that is not in the inventory is a finding", func(t *testing.T) {
		code, err, out, _, _ := run(t, unitKeys(a), CommandOptions{KeyID: b})
		if err != nil || code != report.ExitFinding || !strings.Contains(out, "not_found") {
			t.Errorf("exit %d, %v\n%s", code, err, out)
		}
	})

	t.Run("a failed audit changes nothing", func(t *testing.T) {
		inv := unitKeys(a)
		inv.snap.Targets[0].Success, inv.snap.Targets[0].Error = false, "ListKeys: KMSInternalException"
		code, err, out, errOut, api := run(t, inv, CommandOptions{AllNoncompliant: true})
		if err == nil || code != report.ExitError || len(api.enabled) != 0 || out != "" {
			t.Errorf("exit %d, %v, changed %v, output %q", code, err, api.enabled, out)
		}
		if !strings.Contains(errOut, "KMSInternalException") {
			t.Errorf("the failed audit is not shown: %q", errOut)
		}
	})

	t.Run("several regions: a key needs its region", func(t *testing.T) {
		inv := unitKeys(a)
		inv.snap.Targets = append(inv.snap.Targets, &model.TargetState{AccountID: unitAccount, Region: "us-east-1", Success: true})
		code, _, out, _, api := run(t, inv, CommandOptions{KeyID: a})
		if code != report.ExitFinding || len(api.enabled) != 0 || !strings.Contains(out, "invalid_request") {
			t.Errorf("exit %d, changed %v\n%s", code, api.enabled, out)
		}
	})
}
