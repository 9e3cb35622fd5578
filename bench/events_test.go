package bench

import (
	"bytes"
	"fmt"
	"math"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/kms-exporter/kms_exporter/collector"
	"github.com/kms-exporter/kms_exporter/internal/eventstest"
	"github.com/kms-exporter/kms_exporter/internal/fastkms"
	"github.com/kms-exporter/kms_exporter/internal/harness"
	"github.com/kms-exporter/kms_exporter/policy"
)

// What BenchmarkEvents measures.
const (
	// eventRounds keys have their rotation disabled one after the other per
	// size, the exporter showing only the keys that need attention;
	// allRounds more with every key's series, as a cross-check.
	eventRounds = 100
	allRounds   = 5
	// eventPoll is the pause between two polls of /metrics; eventWithin
	// fails a round.
	eventPoll   = 20 * time.Millisecond
	eventWithin = 30 * time.Second

	// The calls per day are measured at callsKeys keys, the refresh ticks
	// of events mode over callsTicks ticks of 1 s with a resync of 288 s
	// (the ratio of 5 minutes to 24 hours).
	callsKeys  = 10000
	callsTicks = 30
	// ticksPerDay: refreshes a day at --refresh.interval=5m.
	ticksPerDay = 288
	// eventsPerDay is assumed: "an inventory that changes a few times a
	// day", counted generously.
	eventsPerDay = 100
)

// Targets (issue 11).
const (
	targetEventP99   = 2 * time.Second
	targetCallsRatio = 50
)

// eventFigures is what BenchmarkEvents measured at one size.
type eventFigures struct {
	keys  int
	ready time.Duration // the first full refresh
	// From the CLI's return to the key noncompliant on /metrics: with
	// --metrics.per-key=attention and only kms_key_compliance, and with
	// every key's series (the cross-check).
	latency, allLatency []time.Duration
	// The polls of /metrics while the rounds ran (each a scrape, gunzipped
	// and read up to the key's series), and the size of a whole gzip body.
	polls, allPolls       []time.Duration
	pollSize, allPollSize int64
	readsPerEvent         float64 // KMS read calls per event
}

// callsFigures is what BenchmarkEvents measured of the KMS calls at callsKeys keys.
type callsFigures struct {
	fullRefresh     int64 // calls of a full refresh (today's default: every refresh)
	ticks           int
	window          time.Duration // between the ends of the first and the last tick counted
	listing, reads  int64         // calls over the ticks: ListKeys and ListAliases, the others
	readsPerEvent   float64       // measured by the rounds of the first size
	readsEventsSize int
}

// BenchmarkEvents measures the event path of the real kms_exporter binary
// against internal/fastkms, with moto's EventBridge and SQS: for each size
// of KMS_BENCH_EVENT_SIZES (default 10,000 and 100,000 keys), how long after
// a key's rotation is disabled with the AWS CLI (and its CloudTrail event put
// on the bus) the key shows noncompliant on /metrics; and at 10,000 keys the
// KMS calls a day of today's default (every key every 5 minutes) against
// events mode (a 24 h resync). It prints a table of the figures.
func BenchmarkEvents(b *testing.B) {
	sizes := benchSizes(b, "KMS_BENCH_EVENT_SIZES", "10000,100000")
	bin := buildExporter(b)
	var all []eventFigures
	for _, n := range sizes {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			f := eventsLatency(b, bin, n)
			b.ReportMetric(percentile(f.latency, 0.50).Seconds(), "s-p50")
			b.ReportMetric(percentile(f.latency, 0.99).Seconds(), "s-p99")
			all = append(all, f)
		})
	}
	var calls *callsFigures
	if len(all) > 0 {
		b.Run(fmt.Sprintf("calls/keys=%d", callsKeys), func(b *testing.B) {
			c := eventsCalls(b, bin)
			c.readsPerEvent, c.readsEventsSize = all[0].readsPerEvent, all[0].keys
			calls = &c
		})
	}
	printEvents(all, calls)
}

// readOps are the calls of a (re-)read; rotation changes are not counted.
var readOps = []string{"ListKeys", "ListAliases", "DescribeKey", "GetKeyRotationStatus", "ListResourceTags", "ListKeyRotations"}

func readCalls(c map[string]int64) int64 {
	var t int64
	for _, op := range readOps {
		t += c[op]
	}
	return t
}

// eventsLatency runs the exporter in events mode on n keys and disables the
// rotation of eventRounds keys one after the other, then of allRounds more
// with every key's series served.
func eventsLatency(b *testing.B, bin string, n int) eventFigures {
	srv, err := fastkms.Start(n, fastkms.Options{Region: region})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	keys := rotatingKeys(n, eventRounds+allRounds)
	f := eventFigures{keys: n}
	bus := newBus(b)

	// Only the keys that need attention have series, and only
	// kms_key_compliance is served: a small body to poll.
	start := time.Now()
	e := startExporter(b, srv, bin, n, "1h", "--refresh.resync-interval=24h", "--events.sqs-queue-url="+bus.QueueURL,
		"--metrics.per-key=attention", "--metrics.allowlist=kms_key_compliance")
	e.next()
	f.ready = time.Since(start)
	_, f.pollSize = timeScrapes(b, e.url, "gzip", 1)
	before := srv.Calls()
	f.latency, f.polls = disableRounds(b, srv, bus, e, keys[:eventRounds], "")
	f.readsPerEvent = float64(readCalls(srv.Calls())-readCalls(before)) / eventRounds
	e.stop()

	// Every key's series, the whole /metrics polled.
	bus = newBus(b)
	e = startExporter(b, srv, bin, n, "1h", "--refresh.resync-interval=24h", "--events.sqs-queue-url="+bus.QueueURL)
	e.want["compliant"] -= eventRounds // disabled above
	e.want["noncompliant"] += eventRounds
	e.next()
	_, f.allPollSize = timeScrapes(b, e.url, "gzip", 1)
	f.allLatency, f.allPolls = disableRounds(b, srv, bus, e, keys[eventRounds:], "compliant")
	e.stop()
	return f
}

// newBus starts moto with the queue of KMS events behind its rule, for the
// exporter the benchmark starts next: its SQS endpoint is moto's, and its
// default region is the fake's (a queue URL of moto's names none). Each
// exporter gets a moto of its own: moto goes on with the long poll of an
// exporter that was stopped, and would hand the next message to it.
func newBus(b *testing.B) *eventstest.Bus {
	bus := eventstest.NewBus(b, region)
	b.Setenv("AWS_ENDPOINT_URL_SQS", bus.Moto.URL)
	b.Setenv("AWS_REGION", region)
	return bus
}

// rotatingKeys returns count keys of fastkms.Rotating spread over n keys,
// none of them with so few on-demand rotations left that it needs attention
// (collector.NeedsAttention) before its rotation is disabled.
func rotatingKeys(n, count int) []int {
	var out []int
	for k := range count {
		i := k * n / count
		for !fastkms.Rotating(i) || policy.MaxOnDemandRotations-fastkms.OnDemand(i) <= collector.OnDemandLow {
			i++
		}
		out = append(out, i)
	}
	return out
}

// disableRounds disables the rotation of each key with the AWS CLI, puts the
// DisableKeyRotation event on the bus, and returns how long after the CLI
// returned each key showed noncompliant on the exporter's /metrics, and how
// long each poll of /metrics took. Before, each key must show with status was
// ("": no series).
func disableRounds(b *testing.B, srv *fastkms.Server, bus *eventstest.Bus, e *exporter, keys []int, was string) (latency, polls []time.Duration) {
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	defer client.CloseIdleConnections()
	poll := func(id string) string {
		start := time.Now()
		s := complianceOf(b, client, e.url, id)
		polls = append(polls, time.Since(start))
		return s
	}
	for _, i := range keys {
		id := fastkms.KeyID(i)
		if s := poll(id); s != was {
			b.Fatalf("key %d before its rotation is disabled: status %q, want %q", i, s, was)
		}
		harness.AWSCLI(b, srv.URL, region, "kms", "disable-key-rotation", "--key-id", id)
		done := time.Now()
		bus.APICall(b, "DisableKeyRotation", fastkms.Account, region, srv.ARN(i), done)
		for poll(id) != "noncompliant" {
			if time.Since(done) > eventWithin {
				b.Fatalf("key %d not noncompliant %s after its rotation was disabled; queue: %s; the exporter's last log lines:\n%s",
					i, eventWithin, bus.Held(b), e.logTail())
			}
			time.Sleep(eventPoll)
		}
		latency = append(latency, time.Since(done))
	}
	return latency, polls
}

// complianceOf scrapes url (gzip) and returns the status label of key id's
// kms_key_compliance series, "" when it has none. It reads the body line by
// line up to that series, and parses that line only.
func complianceOf(b *testing.B, client *http.Client, url, id string) string {
	prefix, key := []byte("kms_key_compliance{"), []byte(`key_id="`+id+`"`)
	status := ""
	scanExposition(b, client, url, func(line []byte) bool {
		if !bytes.HasPrefix(line, prefix) || !bytes.Contains(line, key) {
			return true
		}
		_, s, ok := bytes.Cut(line, []byte(`status="`))
		end := bytes.IndexByte(s, '"')
		if !ok || end < 0 {
			b.Fatalf("kms_key_compliance without a status: %s", line)
		}
		status = string(s[:end])
		return false
	})
	return status
}

// percentile returns the p-th percentile of v, by nearest rank.
func percentile(v []time.Duration, p float64) time.Duration {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[max(0, int(math.Ceil(p*float64(len(s))))-1)]
}

// eventsCalls counts the KMS calls of the exporter at callsKeys keys: of a
// full refresh, with today's default flags; and of callsTicks refresh ticks
// in events mode, 1 s apart with a resync of 288 s, which re-read the keys
// of 1/288 of the resync each, as 5 minutes do of 24 hours.
func eventsCalls(b *testing.B, bin string) callsFigures {
	srv, err := fastkms.Start(callsKeys, fastkms.Options{Region: region})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	var c callsFigures

	before := srv.Calls()
	e := startExporter(b, srv, bin, callsKeys, "5m")
	c.fullRefresh = totalCalls(e.next().calls) - totalCalls(before)
	e.stop()

	bus := newBus(b)
	e = startExporter(b, srv, bin, callsKeys, "1s", "--refresh.resync-interval=288s", "--events.sqs-queue-url="+bus.QueueURL)
	e.next() // the first refresh reads every key
	first := e.next()
	start := time.Now()
	last := first
	for range callsTicks {
		last = e.next()
	}
	c.window = time.Since(start)
	e.stop()
	c.ticks = callsTicks
	for _, op := range readOps {
		d := last.calls[op] - first.calls[op]
		if op == "ListKeys" || op == "ListAliases" {
			c.listing += d
		} else {
			c.reads += d
		}
	}
	if other := totalCalls(last.calls) - totalCalls(first.calls) - c.listing - c.reads; other != 0 {
		b.Errorf("%d calls other than reads during the ticks", other)
	}
	return c
}

// printEvents prints the figures next to the targets of issue 11.
func printEvents(all []eventFigures, calls *callsFigures) {
	if len(all) == 0 {
		return
	}
	s := func(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	row := tableRow(w, all)
	fmt.Printf("\nkms_exporter in events mode (--refresh.interval=1h --refresh.resync-interval=24h --events.sqs-queue-url) against\n"+
		"internal/fastkms on %d CPUs, shared by the fake, moto, the AWS CLI and the exporter. Per key: its rotation disabled with\n"+
		"Debian's AWS CLI against the fake, then its CloudTrail-shaped DisableKeyRotation event put on moto's EventBridge, routed\n"+
		"by the rule to moto's SQS queue, long-polled by the exporter; timed from the CLI's return to the key's kms_key_compliance\n"+
		"series showing status=\"noncompliant\" on /metrics (polled %s apart with gzip; the end of the poll that saw it).\n"+
		"With --metrics.per-key=attention and --metrics.allowlist=kms_key_compliance the body is small, and the key's series\n"+
		"appears with the same publish that turns it noncompliant in a full exposition (a publish re-encodes the changed key's\n"+
		"block either way); the cross-check polls the whole /metrics of an exporter serving every key's series.\n"+
		"Not measured: CloudTrail's own delay in delivering the event to EventBridge (minutes in AWS); the bus is moto's.\n",
		runtime.NumCPU(), eventPoll)
	row("keys", func(f eventFigures) string { return strconv.Itoa(f.keys) })
	row("start to ready (first full refresh)", func(f eventFigures) string { return s(f.ready) })
	row(fmt.Sprintf("--metrics.per-key=attention, kms_key_compliance only: disabled -> noncompliant, %d keys", eventRounds),
		func(eventFigures) string { return "" })
	row("  p50", func(f eventFigures) string { return s(percentile(f.latency, 0.50)) })
	row(fmt.Sprintf("  p99 (target < %s)", targetEventP99), func(f eventFigures) string {
		p := percentile(f.latency, 0.99)
		return s(p) + " " + verdict(p < targetEventP99)
	})
	row("  max", func(f eventFigures) string { return s(slices.Max(f.latency)) })
	row("  a poll of /metrics: median time, gzip body", func(f eventFigures) string {
		return fmt.Sprintf("%.1f ms, %.0f KiB", ms(median(f.polls)), float64(f.pollSize)/1024)
	})
	row(fmt.Sprintf("every key's series (cross-check): disabled -> noncompliant, %d keys, p50 / max", allRounds), func(f eventFigures) string {
		return s(percentile(f.allLatency, 0.50)) + " / " + s(slices.Max(f.allLatency))
	})
	row("  a poll of /metrics: median time, gzip body", func(f eventFigures) string {
		return fmt.Sprintf("%.1f ms, %.0f KiB", ms(median(f.allPolls)), float64(f.allPollSize)/1024)
	})
	row("KMS read calls per event (the key re-read)", func(f eventFigures) string { return fmt.Sprintf("%.2f", f.readsPerEvent) })
	_ = w.Flush()
	if calls == nil {
		return
	}

	c := calls
	full := float64(c.fullRefresh) * ticksPerDay
	listing := float64(c.listing) / float64(c.ticks) * ticksPerDay
	// The ticks covered c.window of a 288 s resync, which re-reads every key
	// once: 24 hours' worth of re-reads is reads * 288 s / window.
	reads := float64(c.reads) * 288 / c.window.Seconds()
	events := c.readsPerEvent * eventsPerDay
	mode := listing + reads + events
	fmt.Printf("\nKMS calls per day at %d keys, %d refreshes a day (--refresh.interval=5m). Today's default: the calls of one full\n"+
		"refresh (every key re-read at every refresh). Events mode (--refresh.resync-interval=24h): each tick lists the keys and\n"+
		"re-reads those due in its slice of the resync, measured over %d ticks of the binary run with --refresh.interval=1s\n"+
		"--refresh.resync-interval=288s (the same 1:288 ratio); plus the re-reads of events:\n",
		callsKeys, ticksPerDay, c.ticks)
	w = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "today's default: %d calls per full refresh x %d\t%.0f/day\t\n", c.fullRefresh, ticksPerDay, full)
	fmt.Fprintf(w, "events mode: listing, %.1f calls per tick x %d\t%.0f/day\t\n", float64(c.listing)/float64(c.ticks), ticksPerDay, listing)
	fmt.Fprintf(w, "  resync re-reads, %d calls in %.1f s of a 288 s resync\t%.0f/day\t\n", c.reads, c.window.Seconds(), reads)
	fmt.Fprintf(w, "  events: %.2f calls per event (measured at %d keys) x %d events/day (assumed)\t%.0f/day\t\n",
		c.readsPerEvent, c.readsEventsSize, eventsPerDay, events)
	fmt.Fprintf(w, "  total\t%.0f/day\t\n", mode)
	fmt.Fprintf(w, "ratio today's default / events mode (target >= %dx)\t%.0fx %s\t\n", targetCallsRatio, full/mode, verdict(full/mode >= targetCallsRatio))
	_ = w.Flush()
}
