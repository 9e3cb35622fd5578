package report

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/kms-exporter/kms_exporter/internal/harness"
)

// startBrowser runs Debian's chromium headless for the test, with a
// profile of its own and no way out: every name resolves to nothing and
// every request but loopback goes to a closed port. The test's cleanup
// ends the browser and checks that its process is gone.
func startBrowser(t *testing.T) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(harness.Tool(t, "chromium")),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1600, 900),
		chromedp.Flag("host-resolver-rules", "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"),
		chromedp.ProxyServer("http://127.0.0.1:9"),
	)
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox) // chromium refuses to run its sandbox as root
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx)
	if err := chromedp.Do(ctx); err != nil {
		cancel()
		cancelAlloc()
		t.Fatalf("starting chromium: %v", err)
	}
	pid := chromedp.FromContext(ctx).Browser.Process().Pid
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
		harness.Poll(t, 10*time.Second, func() string {
			if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
				return ""
			}
			return fmt.Sprintf("chromium (pid %d) still runs", pid)
		})
	})
	return ctx
}

// pageWatch records what a page logs as errors and the requests it makes.
type pageWatch struct {
	mu       sync.Mutex
	errors   []string
	requests []string
}

func (w *pageWatch) listen(ev any) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch ev := ev.(type) {
	case *runtime.EventConsoleAPICalled:
		if ev.Type == runtime.ConsoleAPICalledTypeError || ev.Type == runtime.ConsoleAPICalledTypeWarning || ev.Type == runtime.ConsoleAPICalledTypeAssert {
			var args []string
			for _, a := range ev.Args {
				args = append(args, string(a.Value)+a.Description)
			}
			w.errors = append(w.errors, fmt.Sprintf("console.%s: %s", ev.Type, strings.Join(args, " ")))
		}
	case *runtime.EventExceptionThrown:
		d := ev.ExceptionDetails
		w.errors = append(w.errors, fmt.Sprintf("exception at %s:%d: %s", d.URL, d.LineNumber+1, d.Text))
	case *log.EventEntryAdded:
		if ev.Entry.Level == log.EntryLevelError || ev.Entry.Level == log.EntryLevelWarning {
			w.errors = append(w.errors, fmt.Sprintf("%s %s: %s %s", ev.Entry.Source, ev.Entry.Level, ev.Entry.Text, ev.Entry.URL))
		}
	case *network.EventRequestWillBeSent:
		w.requests = append(w.requests, ev.Request.URL)
	case *network.EventLoadingFailed:
		w.errors = append(w.errors, fmt.Sprintf("loading failed: %s %s", ev.ErrorText, ev.BlockedReason))
	}
}

// domView is what the test reads of the page's DOM.
type domView struct {
	Rows       int
	KeyIDs     []string
	Exemption  string
	Aliases    string
	Scripts    int
	Images     int
	Handlers   []string
	Pwned      string
	Counts     []string
	Generated  string
	SortColumn string
}

const readDOM = `(() => {
  const names = Array.from(document.querySelectorAll("#keys thead th"), (th) => th.dataset.name);
  const column = (name) => Array.from(document.querySelectorAll("#keys tbody tr"), (tr) => tr.cells[names.indexOf(name)].textContent);
  for (const td of document.querySelectorAll("td")) {
    td.dispatchEvent(new MouseEvent("mouseover", { bubbles: true }));
  }
  const exempt = Array.from(document.querySelectorAll("#keys tbody tr")).find((tr) => tr.classList.contains("exempt"));
  const sorted = document.querySelector('#keys th:not([aria-sort="none"])');
  return {
    Rows: document.querySelectorAll("#keys tbody tr").length,
    KeyIDs: column("key_id"),
    Exemption: exempt.cells[names.indexOf("exemption_reason")].textContent,
    Aliases: exempt.cells[names.indexOf("aliases")].textContent,
    Scripts: document.scripts.length,
    Images: document.images.length,
    Handlers: Array.from(document.querySelectorAll("*")).flatMap((el) => Array.from(el.attributes, (a) => a.name).filter((n) => n.startsWith("on"))),
    Pwned: String(window.pwned),
    Counts: Array.from(document.querySelectorAll("#counts tbody td"), (td) => td.textContent),
    Generated: document.getElementById("generated-at").getAttribute("datetime"),
    SortColumn: sorted ? sorted.dataset.name + " " + sorted.getAttribute("aria-sort") : "",
  };
})()`

// columnCells returns the cells of a column of the keys' table, top to bottom.
func columnCells(name string) string {
	return fmt.Sprintf(`(() => {
  const i = Array.from(document.querySelectorAll("#keys thead th")).findIndex((th) => th.dataset.name === %q);
  return Array.from(document.querySelectorAll("#keys tbody tr"), (tr) => tr.cells[i].textContent);
})()`, name)
}

// TestPageInBrowser loads the report in a real browser, as the exporter
// serves it (its header's policy applies) and as the audit command saves it
// (a file), with no network: it must load nothing, log no error, hold every
// key, keep the hostile exemption reason and alias as text, and sort.
func TestPageInBrowser(t *testing.T) {
	browser := startBrowser(t)
	srv := httptest.NewServer(enabled())
	t.Cleanup(srv.Close)
	file := filepath.Join(t.TempDir(), "report.html")
	if err := os.WriteFile(file, render(t, snapshot(), FormatHTML), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, page := range []struct{ name, url string }{{"served", srv.URL + "/report"}, {"file", "file://" + file}} {
		t.Run(page.name, func(t *testing.T) { checkPage(t, browser, page.name, page.url) })
	}
}

func checkPage(t *testing.T, browser context.Context, name, url string) {
	watch := &pageWatch{}
	tab, closeTab := chromedp.NewContext(browser, chromedp.WithListener(watch.listen))
	defer closeTab()
	ctx, cancel := context.WithTimeout(tab, time.Minute)
	defer cancel()
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("opening a tab: %v", err)
	}
	for _, enable := range []func() error{
		func() error { _, err := chromedp.Call(ctx, network.Enable, network.EnableParams{}); return err },
		func() error { _, err := chromedp.Call(ctx, log.Enable, cdp.Empty{}); return err },
	} {
		if err := enable(); err != nil {
			t.Fatalf("enabling the page's events: %v", err)
		}
	}
	if err := chromedp.Do(ctx, chromedp.Navigate(url), chromedp.WaitVisible(chromedp.CSS("#keys tbody tr"))); err != nil {
		t.Fatalf("loading %s: %v", url, err)
	}
	dom, err := chromedp.Run(ctx, chromedp.Evaluate[domView](readDOM))
	if err != nil {
		t.Fatalf("reading the page: %v", err)
	}
	wantIDs := []string{compliantKey.ID, neverRotatedKey.ID, historyNotReadKey.ID, exemptKey.ID, unknownKey.ID, staleKey.ID, pendingDeletionKey.ID}
	if dom.Rows != len(wantIDs) || !slices.Equal(dom.KeyIDs, wantIDs) {
		t.Errorf("the table holds %d rows, keys %q; want %q", dom.Rows, dom.KeyIDs, wantIDs)
	}
	if want := []string{"3", "1", "1", "1", "1", "7"}; !slices.Equal(dom.Counts, want) {
		t.Errorf("counts %q, want %q", dom.Counts, want)
	}
	if dom.Generated != "2026-03-01T12:00:00Z" {
		t.Errorf("generated at %q", dom.Generated)
	}
	// Inert: the hostile texts are the cells' text, and nothing ran.
	if dom.Exemption != hostile || dom.Aliases != "alias/vendor-appliance,"+hostileAlias {
		t.Errorf("the exempt key's cells: exemption %q, aliases %q", dom.Exemption, dom.Aliases)
	}
	if dom.Scripts != 1 || dom.Images != 0 || len(dom.Handlers) > 0 || dom.Pwned != "undefined" {
		t.Errorf("hostile input became markup: %d scripts, %d images, handlers %q, window.pwned %s", dom.Scripts, dom.Images, dom.Handlers, dom.Pwned)
	}

	// Sorting: numbers as numbers (58 before 244, unlike text), dates as
	// dates, empty cells last in both directions.
	sortBy := func(name string) []string {
		t.Helper()
		if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(fmt.Sprintf(`#keys th[data-name=%q] button`, name)))); err != nil {
			t.Fatalf("clicking the header of %s: %v", name, err)
		}
		cells, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](columnCells(name)))
		if err != nil {
			t.Fatalf("reading %s: %v", name, err)
		}
		return cells
	}
	for _, c := range []struct {
		what, column string
		want         []string
	}{
		{"material age, ascending", "key_material_age_days", []string{"58", "244", "393", "781", "", "", ""}},
		{"material age, descending", "key_material_age_days", []string{"781", "393", "244", "58", "", "", ""}},
		{"last rotation, ascending", "last_rotation", []string{"2025-02-01T00:00:00Z", "2025-06-30T00:00:00Z", "2026-01-02T00:00:00Z", "", "", "", ""}},
	} {
		if got := sortBy(c.column); !slices.Equal(got, c.want) {
			t.Errorf("%s: %q, want %q", c.what, got, c.want)
		}
	}
	if dom, err = chromedp.Run(ctx, chromedp.Evaluate[domView](readDOM)); err != nil || dom.SortColumn != "last_rotation ascending" {
		t.Errorf("sorted by %q (%v), want last_rotation ascending", dom.SortColumn, err)
	}

	// The screenshot shows the table from its first column (a click
	// scrolls to the header it hit).
	if err := chromedp.Do(ctx, chromedp.Evaluate[chromedp.Void](`document.querySelector(".scroll").scrollLeft = 0`)); err != nil {
		t.Fatal(err)
	}
	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if !bytes.HasPrefix(shot, []byte("\x89PNG\r\n\x1a\n")) {
		t.Errorf("the screenshot is not a PNG")
	}
	path := filepath.Join(t.ArtifactDir(), "report-"+name+".png")
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)

	watch.mu.Lock()
	defer watch.mu.Unlock()
	if len(watch.errors) > 0 {
		t.Errorf("the page logged errors:\n%s", strings.Join(watch.errors, "\n"))
	}
	if i := slices.IndexFunc(watch.requests, func(u string) bool { return u != url }); i >= 0 || len(watch.requests) == 0 {
		t.Errorf("the page requested %q: want its own URL alone", watch.requests)
	}
}
