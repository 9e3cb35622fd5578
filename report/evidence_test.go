package report

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/csv"
	"encoding/json"
	"flag"
	"os"
	"slices"
	"strings"
	"testing"

	"golang.org/x/net/html"

	"github.com/kms-exporter/kms_exporter/model"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func render(t *testing.T, s *model.Snapshot, format string) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := write(&b, s, format, now); err != nil {
		t.Fatalf("writing %s: %v", format, err)
	}
	return b.Bytes()
}

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := "testdata/" + name
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from what was written (go test ./report -update rewrites it):\n%s", path, got)
	}
}

// wantCells are cells of each key's row by column, as a reader must find
// them in the CSV (with the formula guard) and, unguarded, in the page.
var wantCells = map[string]map[string]string{
	compliantKey.ID: {"aliases": "alias/payments,alias/payments-v2", "status": "compliant", "reason": "rotation_enabled",
		"rotation_enabled": "true", "rotation_period_days": "90", "next_rotation": "2026-04-02T00:00:00Z",
		"last_rotation": "2026-01-02T00:00:00Z", "last_rotation_type": "AUTOMATIC", "automatic_rotations": "9",
		"on_demand_rotations": "2", "on_demand_rotations_left": "23", "key_material_age_days": "58", "stale": "false",
		"tag:owner": `=HYPERLINK("http://attacker.example/","open")`},
	// Never rotated: the material is as old as the key.
	neverRotatedKey.ID: {"status": "noncompliant", "reason": "rotation_disabled", "rotation_enabled": "false",
		"rotation_period_days": "", "next_rotation": "", "last_rotation": "", "last_rotation_type": "",
		"automatic_rotations": "0", "on_demand_rotations": "0", "on_demand_rotations_left": "25",
		"key_material_age_days": "781", "creation_date": "2024-01-10T00:00:00Z", "tag:owner": "+1"},
	// The history could not be read: nothing of it is shown but why.
	historyNotReadKey.ID: {"aliases": "", "status": "compliant", "rotation_enabled": "true", "rotation_period_days": "",
		"last_rotation": "", "automatic_rotations": "", "on_demand_rotations": "", "on_demand_rotations_left": "",
		"key_material_age_days": "", "rotation_history_error": "AccessDeniedException", "tag:owner": "-2"},
	exemptKey.ID: {"aliases": "alias/vendor-appliance," + hostileAlias, "status": "exempt", "reason": "exemption_tag", "exemption_reason": hostile,
		"exemption_expiry": "2100-01-01T00:00:00Z", "last_rotation_type": "ON_DEMAND", "on_demand_rotations": "25",
		"on_demand_rotations_left": "0", "key_material_age_days": "393", "tag:owner": "@SUM(1+1)"},
	unknownKey.ID: {"status": "unknown", "reason": "AccessDeniedException", "rotation_enabled": "", "automatic_rotations": "",
		"key_material_age_days": "", "tag:owner": "\tx"},
	staleKey.ID: {"region": "us-east-1", "status": "compliant", "stale": "true", "read_error": "ThrottlingException",
		"key_material_age_days": "244", "tag:owner": "\rx"},
	pendingDeletionKey.ID: {"region": "us-east-1", "key_state": "PendingDeletion", "status": "not_applicable",
		"reason": "pending_deletion", "deletion_date": "2026-03-08T00:00:00Z", "rotation_enabled": "", "tag:owner": "team a"},
}

// checkRows compares rows (a header, then one row per key) with wantCells,
// each expected cell passed through guard first.
func checkRows(t *testing.T, rows [][]string, guard func(string) string) {
	t.Helper()
	wantHeader := []string{"account_id", "region", "key_id", "aliases", "key_manager", "key_spec", "key_state", "origin",
		"multi_region_type", "status", "reason", "rotation_enabled", "rotation_period_days", "next_rotation",
		"last_rotation", "last_rotation_type", "automatic_rotations", "on_demand_rotations", "on_demand_rotations_left",
		"key_material_age_days", "rotation_history_error", "exemption_reason", "exemption_expiry", "stale", "read_error",
		"creation_date", "deletion_date", "key_arn", "tag:owner"}
	if len(rows) == 0 || !slices.Equal(rows[0], wantHeader) {
		t.Fatalf("header:\n got %q\nwant %q", rows[:min(1, len(rows))], wantHeader)
	}
	var ids []string
	for _, row := range rows[1:] {
		if len(row) != len(wantHeader) {
			t.Fatalf("row of %d cells, want %d: %q", len(row), len(wantHeader), row)
		}
		cell := func(name string) string { return row[slices.Index(wantHeader, name)] }
		id := cell("key_id")
		ids = append(ids, id)
		for name, want := range wantCells[id] {
			if got := cell(name); got != guard(want) {
				t.Errorf("key %s, %s: %q, want %q", id, name, got, guard(want))
			}
		}
	}
	wantIDs := []string{compliantKey.ID, neverRotatedKey.ID, historyNotReadKey.ID, exemptKey.ID, unknownKey.ID, staleKey.ID, pendingDeletionKey.ID}
	if !slices.Equal(ids, wantIDs) {
		t.Errorf("keys in the order of the snapshot:\n got %q\nwant %q", ids, wantIDs)
	}
}

func TestCSV(t *testing.T) {
	out := render(t, snapshot(), FormatCSV)
	golden(t, "evidence.csv", out)
	rows, err := csv.NewReader(bytes.NewReader(out)).ReadAll()
	if err != nil {
		t.Fatalf("not CSV: %v\n%s", err, out)
	}
	checkRows(t, rows, inert)
	// What a spreadsheet would take for a formula starts with a quote.
	for _, row := range rows[1:] {
		for _, cell := range row {
			if cell != "" && strings.ContainsRune("=+-@\t\r", rune(cell[0])) {
				t.Errorf("key %s: cell %q starts a formula", row[2], cell)
			}
		}
	}
	if got := render(t, &model.Snapshot{}, FormatCSV); strings.Count(string(got), "\n") != 1 {
		t.Errorf("no key: want the header alone, got\n%s", got)
	}
}

func TestInert(t *testing.T) {
	for cell, want := range map[string]string{
		"=1+1": "'=1+1", "+1": "'+1", "-1": "'-1", "@SUM(A1)": "'@SUM(A1)", "\t=1": "'\t=1", "\r=1": "'\r=1",
		"": "", "a=1": "a=1", "alias/x": "alias/x", "'=1": "'=1", " =1": " =1", "2026-01-02T00:00:00Z": "2026-01-02T00:00:00Z",
	} {
		if got := inert(cell); got != want {
			t.Errorf("inert(%q) = %q, want %q", cell, got, want)
		}
	}
}

// parsed is an HTML page as a browser's parser builds it.
type parsed struct{ root *html.Node }

func parseHTML(t *testing.T, page []byte) parsed {
	t.Helper()
	root, err := html.Parse(bytes.NewReader(page))
	if err != nil {
		t.Fatal(err)
	}
	return parsed{root}
}

// all returns the elements for which match is true, in document order.
func (p parsed) all(match func(*html.Node) bool) []*html.Node {
	var out []*html.Node
	for n := range p.root.Descendants() {
		if n.Type == html.ElementNode && match(n) {
			out = append(out, n)
		}
	}
	return out
}

func (p parsed) tag(name string) []*html.Node {
	return p.all(func(n *html.Node) bool { return n.Data == name })
}

// byID returns the element with this id, failing the test without it.
func (p parsed) byID(t *testing.T, id string) parsed {
	t.Helper()
	found := p.all(func(n *html.Node) bool { return attr(n, "id") == id })
	if len(found) != 1 {
		t.Fatalf("%d elements with id %q", len(found), id)
	}
	return parsed{found[0]}
}

func attr(n *html.Node, name string) string {
	for _, a := range n.Attr {
		if a.Key == name {
			return a.Val
		}
	}
	return ""
}

func textOf(n *html.Node) string {
	var b strings.Builder
	for d := range n.Descendants() {
		if d.Type == html.TextNode {
			b.WriteString(d.Data)
		}
	}
	return b.String()
}

// rows returns the text of each row's cells, header rows included.
func (p parsed) rows() [][]string {
	var out [][]string
	for _, tr := range p.tag("tr") {
		var row []string
		for c := range tr.ChildNodes() {
			if c.Type == html.ElementNode && (c.Data == "td" || c.Data == "th") {
				row = append(row, textOf(c))
			}
		}
		out = append(out, row)
	}
	return out
}

func TestHTML(t *testing.T) {
	doc := parseHTML(t, render(t, snapshot(), FormatHTML))

	keys := doc.byID(t, "keys")
	header := keys.all(func(n *html.Node) bool { return n.Data == "th" })
	rows := keys.rows()
	for i, th := range header {
		rows[0][i] = attr(th, "data-name") // the column's name; its text is the title
	}
	// A parser reads a carriage return as a line feed (HTML's newline normalisation).
	checkRows(t, rows, func(s string) string { return strings.ReplaceAll(s, "\r", "\n") })
	kinds := map[string]string{}
	for _, th := range header {
		kinds[attr(th, "data-name")] = attr(th, "data-kind")
	}
	for name, kind := range map[string]string{"key_id": "text", "rotation_period_days": "number", "key_material_age_days": "number",
		"on_demand_rotations_left": "number", "last_rotation": "date", "exemption_expiry": "date", "next_rotation": "date"} {
		if kinds[name] != kind {
			t.Errorf("column %s sorts as %q, want %q", name, kinds[name], kind)
		}
	}

	// The summary: every status, then each target.
	counts := doc.byID(t, "counts").rows()
	wantCounts := [][]string{{"compliant", "noncompliant", "not_applicable", "unknown", "exempt", "total"}, {"3", "1", "1", "1", "1", "7"}}
	if !slices.EqualFunc(counts, wantCounts, slices.Equal) {
		t.Errorf("counts:\n got %q\nwant %q", counts, wantCounts)
	}
	targets := doc.byID(t, "targets").rows()
	wantTargets := [][]string{
		{"account", "region", "refresh", "last success", "keys", "compliant", "noncompliant", "not_applicable", "unknown", "exempt", "stale"},
		{"111122223333", "eu-west-1", "success", "2026-03-01T11:59:00Z", "5", "2", "1", "0", "1", "1", "0"},
		{"111122223333", "us-east-1", "error: ThrottlingException", "2026-03-01T11:00:00Z", "2", "1", "0", "1", "0", "0", "1"},
	}
	if !slices.EqualFunc(targets, wantTargets, slices.Equal) {
		t.Errorf("targets:\n got %q\nwant %q", targets, wantTargets)
	}
	if got := attr(doc.byID(t, "generated-at").root, "datetime"); got != "2026-03-01T12:00:00Z" {
		t.Errorf("generated at %q", got)
	}

	// The hostile exemption reason is text: no element, no attribute.
	if scripts := doc.tag("script"); len(scripts) != 1 {
		t.Errorf("%d script elements, want the page's own", len(scripts))
	}
	for _, n := range doc.all(func(*html.Node) bool { return true }) {
		for _, a := range n.Attr {
			if strings.HasPrefix(a.Key, "on") {
				t.Errorf("<%s> has an event handler attribute %s=%q", n.Data, a.Key, a.Val)
			}
		}
	}
}

// TestPageLoadsNothing: the page names no URL but its empty favicon, and
// its Content-Security-Policy allows exactly its own script and style.
func TestPageLoadsNothing(t *testing.T) {
	doc := parseHTML(t, render(t, snapshot(), FormatHTML))
	for _, n := range doc.all(func(*html.Node) bool { return true }) {
		for _, a := range n.Attr {
			if (a.Key == "src" || a.Key == "href" || a.Key == "action" || a.Key == "srcset") && a.Val != "data:," {
				t.Errorf("<%s %s=%q>: the page must load nothing", n.Data, a.Key, a.Val)
			}
		}
	}
	hash := func(n *html.Node) string {
		sum := sha256.Sum256([]byte(textOf(n)))
		return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
	}
	script, style := doc.tag("script"), doc.tag("style")
	if len(script) != 1 || len(style) != 1 {
		t.Fatalf("%d scripts, %d styles: want one of each", len(script), len(style))
	}
	want := "default-src 'none'; script-src " + hash(script[0]) + "; style-src " + hash(style[0]) + "; img-src data:; base-uri 'none'; form-action 'none'"
	metas := doc.all(func(n *html.Node) bool { return n.Data == "meta" && attr(n, "http-equiv") == "Content-Security-Policy" })
	if len(metas) != 1 {
		t.Fatalf("%d Content-Security-Policy meta elements, want 1", len(metas))
	}
	if got := attr(metas[0], "content"); got != want {
		t.Errorf("the page's policy:\n got %q\nwant %q", got, want)
	}
	if headerPolicy != want+"; frame-ancestors 'none'" {
		t.Errorf("the served policy %q is not the page's, framing refused", headerPolicy)
	}
}

func TestHTMLWithoutTargets(t *testing.T) {
	doc := parseHTML(t, render(t, &model.Snapshot{}, FormatHTML))
	if got := textOf(doc.byID(t, "no-targets").root); !strings.Contains(got, "first refresh has not finished") {
		t.Errorf("no target: %q", got)
	}
	if rows := doc.byID(t, "keys").rows(); len(rows) != 1 {
		t.Errorf("no key: %d rows, want the header alone", len(rows))
	}
}

func TestJSON(t *testing.T) {
	var out struct {
		GeneratedAt string                       `json:"generated_at"`
		Keys        []map[string]any             `json:"keys"`
		Counts      map[string]int               `json:"counts"`
		Targets     []struct{ Counts, Keys any } `json:"targets"`
	}
	if err := json.Unmarshal(render(t, snapshot(), FormatJSON), &out); err != nil {
		t.Fatal(err)
	}
	if out.GeneratedAt != "2026-03-01T12:00:00Z" || len(out.Keys) != 7 || len(out.Targets) != 2 || out.Counts["noncompliant"] != 1 {
		t.Fatalf("generated at %s, %d keys, %d targets, counts %v", out.GeneratedAt, len(out.Keys), len(out.Targets), out.Counts)
	}
	compliant, notRead := out.Keys[0], out.Keys[2]
	for name, want := range map[string]any{"last_rotation": "2026-01-02T00:00:00Z", "key_material_age_days": 58.0,
		"on_demand_rotations_left": 23.0, "rotation_period_days": 90.0, "next_rotation": "2026-04-02T00:00:00Z"} {
		if compliant[name] != want {
			t.Errorf("compliant key's %s: %v, want %v", name, compliant[name], want)
		}
	}
	for _, name := range []string{"last_rotation", "automatic_rotations", "key_material_age_days"} {
		if v, ok := notRead[name]; ok {
			t.Errorf("key whose history was not read has %s: %v", name, v)
		}
	}
	if notRead["rotation_history_error"] != "AccessDeniedException" {
		t.Errorf("rotation_history_error: %v", notRead["rotation_history_error"])
	}
}

func TestUnknownFormat(t *testing.T) {
	if err := write(&bytes.Buffer{}, snapshot(), "xml", now); err == nil || !strings.Contains(err.Error(), `"xml"`) {
		t.Errorf("format xml: %v", err)
	}
}
