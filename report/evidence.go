package report

import (
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"encoding/csv"
	"html/template"
	"io"
	"iter"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/common/version"

	"github.com/kms-exporter/kms_exporter/model"
	"github.com/kms-exporter/kms_exporter/policy"
)

// KeyRecord is one key as every output shows it: the fields of the JSON
// output, and through columns the cells of the CSV and HTML reports.
type KeyRecord struct {
	AccountID       string     `json:"account_id"`
	Region          string     `json:"region"`
	KeyID           string     `json:"key_id"`
	KeyARN          string     `json:"key_arn"`
	Aliases         []string   `json:"aliases"`
	KeyManager      string     `json:"key_manager"`
	KeySpec         string     `json:"key_spec"`
	KeyState        string     `json:"key_state"`
	Origin          string     `json:"origin"`
	MultiRegionType string     `json:"multi_region_type,omitempty"`
	CreationDate    *time.Time `json:"creation_date,omitempty"`
	DeletionDate    *time.Time `json:"deletion_date,omitempty"`
	Status          string     `json:"status"`
	Reason          string     `json:"reason"`
	model.RotationView
	// HistoryView is nil where the rotation history was not read.
	*HistoryView
	// HistoryError is the error code of a failed rotation history read.
	HistoryError    string     `json:"rotation_history_error,omitempty"`
	ExemptionReason string     `json:"exemption_reason,omitempty"`
	ExemptionExpiry *time.Time `json:"exemption_expiry,omitempty"`
	Stale           bool       `json:"stale"`
	ReadError       string     `json:"read_error,omitempty"`
	// Tags holds the values of the tags named by --metrics.tag-label.
	Tags map[string]string `json:"tags,omitempty"`
}

// HistoryView is a key's rotation history (ListKeyRotations) as the reports
// show it.
type HistoryView struct {
	// LastRotation is nil when the key never rotated.
	LastRotation          *time.Time `json:"last_rotation,omitempty"`
	LastRotationType      string     `json:"last_rotation_type,omitempty"`
	AutomaticRotations    int32      `json:"automatic_rotations"`
	OnDemandRotations     int32      `json:"on_demand_rotations"`
	OnDemandRotationsLeft int32      `json:"on_demand_rotations_left"`
	// KeyMaterialAgeDays is how many whole days old the current key
	// material is: since the last rotation, or the key's creation.
	KeyMaterialAgeDays int `json:"key_material_age_days"`
}

// TargetRecord is one account and region in the reports.
type TargetRecord struct {
	AccountID   string     `json:"account_id"`
	Region      string     `json:"region"`
	Success     bool       `json:"success"`
	Error       string     `json:"error,omitempty"`
	LastSuccess *time.Time `json:"last_success,omitempty"`
	Keys        int        `json:"keys"`
	// Counts is the number of the target's keys per verdict status, every
	// status present.
	Counts map[policy.Status]int `json:"counts"`
	Stale  int                   `json:"stale"`
}

// evidence is what the JSON, CSV and HTML reports show of one snapshot, as
// of one instant. Its keys are made one at a time as they are written, so
// that a report of a large inventory holds no copy of it.
type evidence struct {
	GeneratedAt time.Time
	Targets     []TargetRecord
	// Counts is the number of keys per verdict status, every status present.
	Counts    map[policy.Status]int
	Total     int
	Statuses  []policy.Status
	TagLabels []string
	Columns   []column
	snapshot  *model.Snapshot
}

func newEvidence(s *model.Snapshot, now time.Time) *evidence {
	e := &evidence{GeneratedAt: now.UTC(), Targets: []TargetRecord{}, Counts: zeroCounts(),
		Statuses: policy.Statuses[:], TagLabels: s.TagLabels, Columns: columns(s.TagLabels), snapshot: s}
	for _, t := range s.Targets {
		tr := TargetRecord{AccountID: t.AccountID, Region: t.Region, Success: t.Success, Error: t.Error,
			LastSuccess: utc(t.LastSuccess), Keys: len(t.Keys), Counts: zeroCounts()}
		for _, k := range t.Keys {
			tr.Counts[k.Verdict.Get().Status]++
			e.Counts[k.Verdict.Get().Status]++
			if k.Stale {
				tr.Stale++
			}
		}
		e.Total += len(t.Keys)
		e.Targets = append(e.Targets, tr)
	}
	return e
}

func zeroCounts() map[policy.Status]int {
	c := make(map[policy.Status]int, len(policy.Statuses))
	for _, s := range policy.Statuses {
		c[s] = 0
	}
	return c
}

// Keys yields the record of every key, target by target.
func (e *evidence) Keys() iter.Seq[*KeyRecord] {
	return func(yield func(*KeyRecord) bool) {
		for _, t := range e.snapshot.Targets {
			for _, k := range t.Keys {
				r := record(k, e.TagLabels, e.GeneratedAt)
				if !yield(&r) {
					return
				}
			}
		}
	}
}

// record returns what the reports show of k, its material's age as of now.
func record(k *model.Key, tagLabels []string, now time.Time) KeyRecord {
	meta := k.Meta.Get()
	r := KeyRecord{AccountID: k.AccountID, Region: k.Region, KeyID: k.ID, KeyARN: k.ARN, Aliases: k.Aliases,
		KeyManager: meta.KeyManager, KeySpec: meta.KeySpec, KeyState: meta.KeyState, Origin: meta.Origin,
		MultiRegionType: k.MultiRegionType(), CreationDate: utc(k.CreationDate), DeletionDate: utc(k.Deletion()),
		Status: string(k.Verdict.Get().Status), Reason: k.Verdict.Get().Reason, RotationView: model.ViewRotation(k.Rotation),
		ExemptionReason: k.Verdict.Get().ExemptionReason, ExemptionExpiry: utc(k.Verdict.Get().ExemptionExpiry),
		Stale: k.Stale, ReadError: k.ReadError}
	if r.Aliases == nil {
		r.Aliases = []string{}
	}
	if r.NextRotation != nil {
		r.NextRotation = utc(*r.NextRotation)
	}
	if h := k.RotationHistory(); h != nil {
		r.HistoryView = &HistoryView{LastRotation: utc(h.LastRotation), LastRotationType: h.LastType,
			AutomaticRotations: h.Automatic, OnDemandRotations: h.OnDemand, OnDemandRotationsLeft: h.OnDemandLeft(),
			KeyMaterialAgeDays: int(now.Sub(h.MaterialSince(k.CreationDate)) / (24 * time.Hour))}
	} else if k.History != nil {
		r.HistoryError = k.History.Error
	}
	if len(tagLabels) > 0 {
		r.Tags = make(map[string]string, len(tagLabels))
		for i, label := range tagLabels {
			if i < len(k.TagValues) {
				r.Tags[label] = k.TagValues[i]
			}
		}
	}
	return r
}

// utc returns t in UTC, or nil for the zero time (not known, or none).
func utc(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}

// column is one per-key field of the CSV and HTML reports. An empty cell
// means not known, not read, or none.
type column struct {
	// Name is the CSV header, the JSON field's name.
	Name string
	// Title is the HTML report's header.
	Title string
	// Kind tells the HTML report's sorter how to order the cells: "text",
	// "number" or "date".
	Kind  string
	Value func(*KeyRecord) string
}

// keyColumns are the columns of every report, in their stable order; tag
// columns (--metrics.tag-label) follow them.
var keyColumns = []column{
	text("account_id", "Account", func(r *KeyRecord) string { return r.AccountID }),
	text("region", "Region", func(r *KeyRecord) string { return r.Region }),
	text("key_id", "Key ID", func(r *KeyRecord) string { return r.KeyID }),
	text("aliases", "Aliases", func(r *KeyRecord) string { return strings.Join(r.Aliases, ",") }),
	text("key_manager", "Manager", func(r *KeyRecord) string { return r.KeyManager }),
	text("key_spec", "Spec", func(r *KeyRecord) string { return r.KeySpec }),
	text("key_state", "State", func(r *KeyRecord) string { return r.KeyState }),
	text("origin", "Origin", func(r *KeyRecord) string { return r.Origin }),
	text("multi_region_type", "Multi-Region", func(r *KeyRecord) string { return r.MultiRegionType }),
	text("status", "Verdict", func(r *KeyRecord) string { return r.Status }),
	text("reason", "Reason", func(r *KeyRecord) string { return r.Reason }),
	text("rotation_enabled", "Rotation on", func(r *KeyRecord) string {
		if r.RotationEnabled == nil {
			return ""
		}
		return strconv.FormatBool(*r.RotationEnabled)
	}),
	number("rotation_period_days", "Period (days)", func(r *KeyRecord) string {
		if r.RotationPeriodDays == 0 {
			return ""
		}
		return strconv.Itoa(int(r.RotationPeriodDays))
	}),
	date("next_rotation", "Next rotation", func(r *KeyRecord) *time.Time { return r.NextRotation }),
	date("last_rotation", "Last rotation", func(r *KeyRecord) *time.Time { return history(r).LastRotation }),
	text("last_rotation_type", "Last rotation type", func(r *KeyRecord) string { return history(r).LastRotationType }),
	count("automatic_rotations", "Automatic rotations", func(h *HistoryView) int { return int(h.AutomaticRotations) }),
	count("on_demand_rotations", "On-demand rotations", func(h *HistoryView) int { return int(h.OnDemandRotations) }),
	count("on_demand_rotations_left", "On-demand left", func(h *HistoryView) int { return int(h.OnDemandRotationsLeft) }),
	count("key_material_age_days", "Material age (days)", func(h *HistoryView) int { return h.KeyMaterialAgeDays }),
	text("rotation_history_error", "History error", func(r *KeyRecord) string { return r.HistoryError }),
	text("exemption_reason", "Exemption", func(r *KeyRecord) string { return r.ExemptionReason }),
	date("exemption_expiry", "Exemption ends", func(r *KeyRecord) *time.Time { return r.ExemptionExpiry }),
	text("stale", "Stale", func(r *KeyRecord) string { return strconv.FormatBool(r.Stale) }),
	text("read_error", "Read error", func(r *KeyRecord) string { return r.ReadError }),
	date("creation_date", "Created", func(r *KeyRecord) *time.Time { return r.CreationDate }),
	date("deletion_date", "Deletion", func(r *KeyRecord) *time.Time { return r.DeletionDate }),
	text("key_arn", "ARN", func(r *KeyRecord) string { return r.KeyARN }),
}

// columns returns keyColumns and a column per tag label.
func columns(tagLabels []string) []column {
	out := keyColumns[:len(keyColumns):len(keyColumns)]
	for _, label := range tagLabels {
		out = append(out, text("tag:"+label, "Tag "+label, func(r *KeyRecord) string { return r.Tags[label] }))
	}
	return out
}

func text(name, title string, value func(*KeyRecord) string) column {
	return column{Name: name, Title: title, Kind: "text", Value: value}
}

func number(name, title string, value func(*KeyRecord) string) column {
	return column{Name: name, Title: title, Kind: "number", Value: value}
}

// count is a number of the rotation history: empty where it was not read.
func count(name, title string, value func(*HistoryView) int) column {
	return number(name, title, func(r *KeyRecord) string {
		if r.HistoryView == nil {
			return ""
		}
		return strconv.Itoa(value(r.HistoryView))
	})
}

// date is an instant in RFC 3339, UTC.
func date(name, title string, value func(*KeyRecord) *time.Time) column {
	return column{Name: name, Title: title, Kind: "date", Value: func(r *KeyRecord) string {
		if t := value(r); t != nil {
			return t.UTC().Format(time.RFC3339)
		}
		return ""
	}}
}

// history returns r's rotation history, empty where it was not read.
func history(r *KeyRecord) *HistoryView {
	if r.HistoryView == nil {
		return &HistoryView{}
	}
	return r.HistoryView
}

// writeCSV writes a header row, then a row per key.
func writeCSV(w io.Writer, e *evidence) error {
	cw := csv.NewWriter(w)
	row := make([]string, len(e.Columns))
	for i, c := range e.Columns {
		row[i] = c.Name
	}
	if err := cw.Write(row); err != nil {
		return err
	}
	for r := range e.Keys() {
		for i, c := range e.Columns {
			row[i] = inert(c.Value(r))
		}
		if err := cw.Write(row); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

// inert keeps a spreadsheet from taking a cell for a formula (OWASP, "CSV
// Injection"): aliases, tag values and exemption reasons are written by
// whoever may tag a key. A cell starting with = + - @, a tab or a carriage
// return gets a leading single quote.
func inert(cell string) string {
	if cell != "" && strings.IndexByte("=+-@\t\r", cell[0]) >= 0 {
		return "'" + cell
	}
	return cell
}

var (
	//go:embed page.html
	pageSource string
	//go:embed page.css
	pageStyle string
	//go:embed page.js
	pageScript string

	page = template.Must(template.New("page").Parse(pageSource))

	// pagePolicy lets the page run its own script and style, and load
	// nothing: no font, frame or connection, no image but its empty
	// favicon (data:, which keeps the browser from asking for
	// /favicon.ico). It is in the page (a saved file keeps it) and in the
	// served report's header, which adds what a meta element cannot hold.
	pagePolicy = "default-src 'none'; script-src " + sourceHash(pageScript) + "; style-src " + sourceHash(pageStyle) +
		"; img-src data:; base-uri 'none'; form-action 'none'"
	headerPolicy = pagePolicy + "; frame-ancestors 'none'"
)

// sourceHash is the Content-Security-Policy source of an inline element.
func sourceHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
}

// pageData is what the page template reads.
type pageData struct {
	*evidence
	Policy  string
	Version string
	Style   template.CSS
	Script  template.JS
}

// writeHTML writes the report as one page that needs nothing else: its
// style and its table sorter are inline.
func writeHTML(w io.Writer, e *evidence) error {
	return page.Execute(w, pageData{evidence: e, Policy: pagePolicy, Version: version.Version,
		Style: template.CSS(pageStyle), Script: template.JS(pageScript)})
}
