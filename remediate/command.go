package remediate

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/kms-exporter/kms_exporter/model"
	"github.com/kms-exporter/kms_exporter/report"
)

// CommandOptions are the remediate command's flags.
type CommandOptions struct {
	KeyID              string // --key-id
	Region             string // --region
	AccountID          string // --account-id
	AllNoncompliant    bool   // --all-noncompliant
	DryRun             bool   // --dry-run
	RotationPeriodDays int    // --rotation-period-days; 0 = the policy maximum
}

// Command runs the remediate command: one refresh, then the keys the command
// line names, one line per key and a summary on out (the failed audit on
// errOut, when the refresh fails: nothing is changed then). It returns the
// exit code: report.ExitOK when every key was remediated, ExitFinding when
// some were refused or failed. A bulk run cut short prints what it did,
// and returns the error.
func (r *Remediator) Command(ctx context.Context, refresh func(context.Context) *model.Snapshot, opts CommandOptions, out, errOut io.Writer) (int, error) {
	s := refresh(ctx)
	if report.AuditExitCode(s) == report.ExitError {
		_ = report.WriteAudit(errOut, s, "table")
		return report.ExitError, errors.New("the audit before remediation failed; nothing was changed")
	}
	var period *int
	if opts.RotationPeriodDays != 0 {
		period = &opts.RotationPeriodDays
	}
	if opts.Region == "" {
		opts.Region = onlyRegion(s)
	}
	if !opts.AllNoncompliant {
		res := r.Remediate(ctx, Request{AccountID: opts.AccountID, Region: opts.Region,
			KeyID: opts.KeyID, DryRun: opts.DryRun, RotationPeriodDays: period}, "command line")
		return report.WriteRemediations(out, lines([]Result{res})), nil
	}
	results, err := r.RemediateAll(ctx, Selector{AccountID: opts.AccountID, Region: opts.Region,
		DryRun: opts.DryRun, RotationPeriodDays: period, AllNoncompliant: true}, "command line")
	if errors.Is(err, ErrInvalidSelector) {
		return report.ExitError, err
	}
	code := report.WriteRemediations(out, lines(results))
	if err != nil {
		return report.ExitError, fmt.Errorf("remediation: %w", err)
	}
	return code, nil
}

// onlyRegion returns the region of the audited targets when they are all
// in one, else "": a key then needs no --region.
func onlyRegion(s *model.Snapshot) string {
	region := ""
	for _, t := range s.Targets {
		if region != "" && t.Region != region {
			return ""
		}
		region = t.Region
	}
	return region
}

func lines(results []Result) []report.RemediationLine {
	out := make([]report.RemediationLine, len(results))
	for i, res := range results {
		detail := res.Reason
		if res.Outcome == OutcomeEnabled {
			detail = fmt.Sprintf("verified: rotation enabled, period %s, now %s", report.Days(res.RotationPeriodDays), res.Verdict)
		}
		out[i] = report.RemediationLine{AccountID: res.AccountID, Region: res.Region, KeyID: res.KeyID, Aliases: res.Aliases,
			Result: res.Outcome, Detail: detail, OK: res.OK(), DryRun: res.DryRun}
	}
	return out
}
