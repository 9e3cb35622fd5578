// Package report prints audits and remediations for people and for CI jobs,
// and makes the evidence report: every key with its verdict and rotation
// history, as CSV or as one self-contained HTML page, for the audit command
// and for the exporter's read-only /report route.
package report

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kms-exporter/kms_exporter/model"
	"github.com/kms-exporter/kms_exporter/policy"
)

// Exit codes of the audit and remediate commands.
const (
	ExitOK      = 0 // nothing noncompliant / every remediation done
	ExitFinding = 1 // something noncompliant / a remediation refused or failed
	ExitError   = 2 // the audit itself failed
)

// Audit runs the audit command: one refresh, every key with its verdict on
// w, and the exit code (AuditExitCode).
func Audit(ctx context.Context, refresh func(context.Context) *model.Snapshot, w io.Writer, format string) (int, error) {
	s := refresh(ctx)
	if err := WriteAudit(w, s, format); err != nil {
		return ExitError, fmt.Errorf("writing the audit: %w", err)
	}
	return AuditExitCode(s), nil
}

// AuditExitCode is ExitError when any target failed, else ExitFinding when
// any key is noncompliant, else ExitOK.
func AuditExitCode(s *model.Snapshot) int {
	for _, t := range s.Targets {
		if !t.Success {
			return ExitError
		}
	}
	if s.Counts()[policy.Noncompliant] > 0 {
		return ExitFinding
	}
	return ExitOK
}

// Output formats of WriteAudit.
const (
	FormatTable = "table"
	FormatJSON  = "json"
	FormatCSV   = "csv"
	FormatHTML  = "html"
)

// WriteAudit prints every key with its verdict: as a table, as JSON, as
// CSV or as the HTML evidence report, material ages counted to now.
func WriteAudit(w io.Writer, s *model.Snapshot, format string) error {
	return write(w, s, format, time.Now())
}

func write(w io.Writer, s *model.Snapshot, format string, now time.Time) error {
	switch format {
	case FormatTable:
		return writeTable(w, s)
	case FormatJSON:
		return writeJSON(w, newEvidence(s, now))
	case FormatCSV:
		return writeCSV(w, newEvidence(s, now))
	case FormatHTML:
		return writeHTML(w, newEvidence(s, now))
	}
	return fmt.Errorf("unknown output format %q", format)
}

func writeJSON(w io.Writer, e *evidence) error {
	out := struct {
		GeneratedAt time.Time             `json:"generated_at"`
		Targets     []TargetRecord        `json:"targets"`
		Keys        []*KeyRecord          `json:"keys"`
		Counts      map[policy.Status]int `json:"counts"`
	}{GeneratedAt: e.GeneratedAt, Targets: e.Targets, Keys: slices.Collect(e.Keys()), Counts: e.Counts}
	if out.Keys == nil {
		out.Keys = []*KeyRecord{}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

func writeTable(w io.Writer, s *model.Snapshot) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ACCOUNT\tREGION\tKEY ID\tALIASES\tSTATUS\tREASON")
	for _, t := range s.Targets {
		for _, k := range t.Keys {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", k.AccountID, k.Region, k.ID, orDash(strings.Join(k.Aliases, ",")), k.Verdict.Get().Status, k.Verdict.Get().Reason)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	c := s.Counts()
	fmt.Fprintf(w, "\n%d compliant, %d noncompliant, %d exempt, %d not applicable, %d unknown\n",
		c[policy.Compliant], c[policy.Noncompliant], c[policy.Exempt], c[policy.NotApplicable], c[policy.Unknown])
	for _, t := range s.Targets {
		if !t.Success {
			fmt.Fprintf(w, "account %s, region %s: refresh failed: %s\n", orDash(t.AccountID), t.Region, t.Error)
		}
	}
	return nil
}

// RemediationLine is one key of the remediate command's output.
type RemediationLine struct {
	AccountID, Region, KeyID, Aliases string
	// Result is the outcome, Detail what it means for this key.
	Result, Detail string
	// OK: remediated, or would be in a dry run.
	OK, DryRun bool
}

// WriteRemediations prints one line per key and a summary; it returns
// ExitOK when every key was remediated (or would be, in a dry run).
func WriteRemediations(w io.Writer, lines []RemediationLine) int {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ACCOUNT\tREGION\tKEY ID\tALIASES\tRESULT\tDETAIL")
	code, ok := ExitOK, 0
	for _, l := range lines {
		if l.OK {
			ok++
		} else {
			code = ExitFinding
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", orDash(l.AccountID), l.Region, l.KeyID, orDash(l.Aliases), l.Result, l.Detail)
	}
	_ = tw.Flush()
	if len(lines) > 0 && lines[0].DryRun {
		fmt.Fprintf(w, "\n%d of %d keys would be remediated (dry run: nothing was changed)\n", ok, len(lines))
	} else {
		fmt.Fprintf(w, "\n%d of %d keys remediated\n", ok, len(lines))
	}
	return code
}

// Days says a rotation period for people.
func Days(d int32) string {
	if d == 0 {
		return "not reported"
	}
	return fmt.Sprintf("%d days", d)
}
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
