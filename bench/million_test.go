package bench

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/kms-exporter/kms_exporter/awsclient"
	"github.com/kms-exporter/kms_exporter/internal/fastkms"
	"github.com/kms-exporter/kms_exporter/internal/harness"
	"github.com/kms-exporter/kms_exporter/internal/kmstest"
	"github.com/kms-exporter/kms_exporter/policy"
)

// What BenchmarkMillion measures per size.
const (
	// millionRefreshes is how many back-to-back refreshes of the exporter are
	// timed (the refresh time is their median); the peak RSS is read after them.
	millionRefreshes = 3
	// scrapesGzip and scrapesPlain are the timed scrapes of /metrics.
	scrapesGzip  = 21
	scrapesPlain = 3
)

// Targets at 1M keys (issue 10).
const (
	targetRatio       = 1.10
	targetPublish     = 5 * time.Second
	targetRSSPerKey   = 1536
	targetPeakPerKey  = 2048
	targetScrapeGzipS = 0.020
)

// millionFigures is what BenchmarkMillion measured at one size.
type millionFigures struct {
	keys                    int
	bare, exporter          time.Duration // medians
	bareRuns                int           // len(refreshKinds)
	refreshes               []time.Duration
	publish                 time.Duration // of the first refresh: everything encoded
	incrementalPublish      time.Duration // of the last back-to-back refresh: unchanged keys reused
	rss, peak               float64       // bytes
	gzipScrape, plainScrape time.Duration // medians
	gzipSize, plainSize     int64
	// floorScrape: the same number of bytes served from one slice by a
	// plain handler in the benchmark's process, read the same way: what a
	// scrape of that size costs on this machine whatever the exporter does.
	floorScrape time.Duration
	series      int
	// Calls per key of one full audit: of a later refresh (the last of
	// each), and of a first sight (the exporter's first refresh, the bare
	// client's first run), which reads every key's rotation history too.
	bareCalls, exporterCalls           float64
	bareFirstCalls, exporterFirstCalls float64
	// CPU time of one full audit of a later refresh, the fake's included:
	// less sensitive than the wall time to whatever else runs on the machine.
	bareCPU, exporterCPU time.Duration
	exporterOwnCPU       time.Duration // the exporter process's alone
	// With --metrics.per-key=attention (skipped with KMS_BENCH_ATTENTION=0).
	attentionSeries int
	attentionRSS    float64
	attentionScrape time.Duration
	attentionSize   int64
	fakeRate        float64 // calls/s the fake served to the bare client
}

// BenchmarkMillion audits inventories of KMS_BENCH_SIZES keys (default
// 100,000, 300,000 and 1,000,000) served by internal/fastkms, with a bare SDK
// client making only the calls the verdicts need and with the real
// kms_exporter binary refreshing back to back, and prints a table of the
// figures next to the targets of issue 10. Scrapes are taken while the
// exporter's next refresh runs, as they would be in production.
func BenchmarkMillion(b *testing.B) {
	sizes := benchSizes(b, "KMS_BENCH_SIZES", "10000,100000,300000,1000000")
	bin := buildExporter(b)
	var all []millionFigures
	for _, n := range sizes {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			srv, err := fastkms.Start(n, fastkms.Options{Region: region})
			if err != nil {
				b.Fatal(err)
			}
			defer srv.Close()
			f := millionFigures{keys: n}
			// The bare client's runs and the exporter's alternate, so that
			// a machine getting slower or faster within the run (other
			// tenants of its host) weighs on both alike: a bare first
			// sight, the exporter refreshing once, a bare first sight and
			// a later audit, the exporter refreshing back to back.
			kinds := refreshKinds()
			bare := &bareAudits{srv: srv, f: &f}
			bare.run(b, kinds[0])
			first := exporterOnce(b, srv, bin, &f)
			for _, firstSight := range kinds[1:] {
				bare.run(b, firstSight)
			}
			bare.finish()
			exporterLoop(b, srv, bin, &f, first)
			exporterAttention(b, srv, bin, &f)
			b.ReportMetric(f.bare.Seconds(), "s-bare")
			b.ReportMetric(f.exporter.Seconds(), "s-exporter")
			b.ReportMetric(f.rss/float64(n), "B/key-RSS")
			b.ReportMetric(f.peak/float64(n), "B/key-peak")
			b.ReportMetric(ms(f.gzipScrape), "ms/scrape-gzip")
			all = append(all, f)
		})
	}
	printMillion(all)
}

// benchSizes reads the inventory sizes from the environment variable env
// (numbers of keys, comma-separated), def when it is not set.
func benchSizes(b *testing.B, env, def string) []int {
	v := os.Getenv(env)
	if v == "" {
		v = def
	}
	var sizes []int
	for _, s := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			b.Fatalf("%s=%q: %q is not a number of keys", env, v, s)
		}
		sizes = append(sizes, n)
	}
	return sizes
}

// buildExporter builds the kms_exporter binary for a benchmark.
func buildExporter(b *testing.B) string {
	bin := filepath.Join(b.TempDir(), "kms_exporter")
	if out, err := exec.Command("go", "build", "-o", bin, kmstest.RepoRoot()).CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

func totalCalls(c map[string]int64) int64 {
	var t int64
	for _, v := range c {
		t += v
	}
	return t
}

func median[T int64 | float64 | time.Duration](v []T) T {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// refreshKinds says, for each refresh of the exporter that exporterOnce and
// exporterLoop time (the refresh of an exporter refreshing once, then the
// first and the later ones of one refreshing back to back), whether it is a first
// sight of the keys: the exporter reads every key's rotation history then
// (ListKeyRotations), and at a later refresh only where it can have changed
// (another CurrentKeyMaterialId, a rotation date passed: none here). The
// bare client's runs mirror them one for one, so that the medians compare
// the same mix of refreshes.
func refreshKinds() []bool {
	kinds := make([]bool, millionRefreshes)
	for i := range kinds {
		kinds[i] = i < 2
	}
	return kinds
}

// bareAudits times whole audits by a bare SDK client, one per refresh the
// exporter's runs time (refreshKinds): those mirroring a first sight read
// every key's rotation history, the others do not, as a client keeping the
// histories it read would. Each runs in a process of its own
// (TestBareAuditProcess in this test binary), as the exporter does: a
// client in the fake's process would be favoured, its calls never crossing
// between processes (measured at 100k keys: 26 s of CPU in process, 35 s out
// of it). The calls and CPU compared with the exporter's later refresh are
// the last run's, a later refresh too.
type bareAudits struct {
	srv   *fastkms.Server
	f     *millionFigures
	times []time.Duration
	cpu   time.Duration
	calls int64
}

// run times one bare audit.
func (a *bareAudits) run(b *testing.B, firstSight bool) {
	srv, f := a.srv, a.f
	want := fastkms.Expected(f.keys)
	before, fakeBefore := srv.Calls(), selfCPU()
	cmd := exec.Command(os.Args[0], "-test.run=^TestBareAuditProcess$", "-test.timeout=0")
	cmd.Env = append(os.Environ(), bareURLEnv+"="+srv.URL, bareHistoryEnv+"="+strconv.FormatBool(firstSight))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		b.Fatalf("bare audit of %d keys: %v\n%s", f.keys, err, out)
	}
	var r bareResult
	_, line, _ := strings.Cut(string(out), bareResultPrefix)
	line, _, _ = strings.Cut(line, "\n")
	if err := json.Unmarshal([]byte(line), &r); err != nil {
		b.Fatalf("bare audit of %d keys: no result (%v) in its output:\n%s", f.keys, err, out)
	}
	if !maps.Equal(r.Counts, want) {
		b.Fatalf("bare audit of %d keys: %v, want %v", f.keys, r.Counts, want)
	}
	usage := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	a.cpu = time.Duration(usage.Utime.Nano()+usage.Stime.Nano()) + selfCPU() - fakeBefore
	a.calls = totalCalls(srv.Calls()) - totalCalls(before)
	if len(a.times) == 0 {
		f.bareFirstCalls = float64(a.calls) / float64(f.keys)
	}
	elapsed := time.Duration(r.Nanoseconds)
	a.times = append(a.times, elapsed)
	fmt.Fprintf(os.Stderr, "%d keys: bare audit %s (first sight: %v), CPU %s, %.0f calls/s\n", f.keys, elapsed.Round(time.Millisecond),
		firstSight, a.cpu.Round(time.Millisecond), float64(a.calls)/elapsed.Seconds())
	f.fakeRate = float64(a.calls) / elapsed.Seconds()
}

// finish records the median time and the last run's calls and CPU.
func (a *bareAudits) finish() {
	a.f.bareRuns = len(a.times)
	a.f.bare, a.f.bareCPU = median(a.times), a.cpu
	a.f.bareCalls = float64(a.calls) / float64(a.f.keys)
}

// The bare audit's process: BenchmarkMillion runs this test binary with
// bareURLEnv set to the fake's URL and bareHistoryEnv to whether the audit
// is a first sight (it reads the rotation histories), and reads
// bareResultPrefix + JSON (bareResult) from its output.
const (
	bareURLEnv       = "KMS_BENCH_BARE_URL"
	bareHistoryEnv   = "KMS_BENCH_BARE_HISTORY"
	bareResultPrefix = "bare audit result: "
)

type bareResult struct {
	Nanoseconds int64
	Counts      map[string]int
}

// TestBareAuditProcess is the bare audit of BenchmarkMillion, in a process of
// its own; without bareURLEnv it is skipped.
func TestBareAuditProcess(t *testing.T) {
	url := os.Getenv(bareURLEnv)
	if url == "" {
		t.Skip("run by BenchmarkMillion only")
	}
	// The same HTTP transport settings as the exporter's (awsclient): the SDK's
	// default keeps 10 idle connections per host, which would make 16
	// workers open and close connections all the time. And the exporter's
	// default attempts per call (--aws.max-attempts): now and then the SDK
	// fails to read a large ListKeys page from a connection net/http has
	// just closed, and its default three quick attempts can all meet that.
	// (The SDK closes a request's body while net/http may still be checking
	// it; the exporter's awsclient works around that, bodyReadAfterClose, a
	// bare client does not: 5 connections reopened in 30,000 DescribeKey
	// calls against none for the exporter.)
	c := kms.New(kms.Options{Region: region, BaseEndpoint: aws.String(url), RetryMaxAttempts: 5,
		Credentials: credentials.NewStaticCredentialsProvider("x", "x", ""),
		HTTPClient: awshttp.NewBuildableClient().WithTransportOptions(func(t *http.Transport) {
			t.MaxIdleConnsPerHost = workers
		})})
	firstSight, err := strconv.ParseBool(os.Getenv(bareHistoryEnv))
	if err != nil {
		t.Fatalf("%s: %v", bareHistoryEnv, err)
	}
	start := time.Now()
	counts, err := bareAudit(c, firstSight)
	elapsed := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := json.Marshal(bareResult{Nanoseconds: elapsed.Nanoseconds(), Counts: counts})
	fmt.Printf("%s%s\n", bareResultPrefix, out)
}

// selfCPU is the CPU time (user and system) this process has used.
func selfCPU() time.Duration {
	var r syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &r); err != nil {
		return 0
	}
	return time.Duration(r.Utime.Nano() + r.Stime.Nano())
}

// processCPU is the CPU time (user and system) process pid has used, from
// /proc/PID/stat (in clock ticks of 1/100 s, USER_HZ on Linux).
func processCPU(pid int) time.Duration {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The fields after the command name, which is in parentheses: state is the
	// first, utime and stime the 12th and 13th.
	f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	user, _ := strconv.ParseInt(f[11], 10, 64)
	system, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(user+system) * 10 * time.Millisecond
}

// bareAudit is what a hand-written audit would do: list the keys and the
// aliases, then with 16 workers DescribeKey each key, GetKeyRotationStatus
// only for keys that can rotate (enabled, symmetric, AWS_KMS origin, no
// custom key store; customer or AWS-managed), on a first sight
// ListKeyRotations for the keys in scope (the exporter reads a key's
// rotation history when it first sees it), and ListResourceTags only for
// keys in scope that rotate too rarely or not at all. It keeps the key ids
// and the verdict counts.
func bareAudit(c *kms.Client, firstSight bool) (map[string]int, error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var ids []string
	keys := kms.NewListKeysPaginator(c, &kms.ListKeysInput{Limit: aws.Int32(1000)})
	for keys.HasMorePages() {
		page, err := keys.NextPage(ctx)
		if err != nil {
			return nil, err
		}
		for _, k := range page.Keys {
			ids = append(ids, aws.ToString(k.KeyId))
		}
	}
	aliases := kms.NewListAliasesPaginator(c, &kms.ListAliasesInput{Limit: aws.Int32(100)})
	for aliases.HasMorePages() {
		if _, err := aliases.NextPage(ctx); err != nil {
			return nil, err
		}
	}

	pol := policy.Policy{MaxRotationPeriodDays: 365, ExemptionTag: "kms-rotation-exempt"}
	now := time.Now()
	var (
		mu       sync.Mutex
		counts   = map[string]int{}
		firstErr atomic.Pointer[error]
		wg       sync.WaitGroup
	)
	for _, s := range policy.Statuses {
		counts[string(s)] = 0
	}
	fail := func(err error) {
		if firstErr.CompareAndSwap(nil, &err) {
			cancel()
		}
	}
	work := make(chan string)
	for range workers {
		wg.Go(func() {
			mine := make([]int, len(policy.Statuses))
			for id := range work {
				in, err := bareKey(ctx, c, id, pol, firstSight)
				if err != nil {
					fail(err)
					continue
				}
				mine[slices.Index(policy.Statuses[:], policy.Decide(in, pol, now).Status)]++
			}
			mu.Lock()
			for i, s := range policy.Statuses {
				counts[string(s)] += mine[i]
			}
			mu.Unlock()
		})
	}
	for _, id := range ids {
		work <- id
	}
	close(work)
	wg.Wait()
	if err := firstErr.Load(); err != nil {
		return nil, *err
	}
	return counts, nil
}

func bareKey(ctx context.Context, c *kms.Client, id string, pol policy.Policy, history bool) (policy.Input, error) {
	d, err := c.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: &id})
	if err != nil {
		return policy.Input{}, err
	}
	m := d.KeyMetadata
	in := policy.Input{Meta: policy.Meta{KeyManager: string(m.KeyManager), KeySpec: string(m.KeySpec),
		KeyUsage: string(m.KeyUsage), KeyState: string(m.KeyState), Origin: string(m.Origin),
		CustomKeyStoreID: aws.ToString(m.CustomKeyStoreId)}}
	if m.KeyState != "Enabled" || m.KeySpec != "SYMMETRIC_DEFAULT" || m.Origin != "AWS_KMS" || m.CustomKeyStoreId != nil {
		return in, nil
	}
	r, err := c.GetKeyRotationStatus(ctx, &kms.GetKeyRotationStatusInput{KeyId: &id})
	if err != nil {
		return in, err
	}
	rot := awsclient.Rotation(r)
	in.Rotation = &rot
	if history && policy.NeedsHistory(in.Meta) {
		if in.History, err = bareHistory(ctx, c, id); err != nil {
			return in, err
		}
	}
	if !policy.NeedsExemptionTags(in, pol, time.Now()) {
		return in, nil
	}
	t, err := c.ListResourceTags(ctx, &kms.ListResourceTagsInput{KeyId: &id})
	if err != nil {
		return in, err
	}
	in.Tags = map[string]string{}
	for _, tag := range t.Tags {
		in.Tags[aws.ToString(tag.TagKey)] = aws.ToString(tag.TagValue)
	}
	return in, nil
}

// bareHistory reads a key's rotation history as the exporter does: every
// page of ListKeyRotations (1000 a page), the completed rotations counted by
// type, and the last.
func bareHistory(ctx context.Context, c *kms.Client, id string) (*policy.History, error) {
	h := &policy.History{}
	p := kms.NewListKeyRotationsPaginator(c, &kms.ListKeyRotationsInput{KeyId: &id, Limit: aws.Int32(1000)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, err
		}
		for _, r := range page.Rotations {
			at := aws.ToTime(r.RotationDate)
			if at.IsZero() {
				continue
			}
			if r.RotationType == types.RotationTypeOnDemand {
				h.OnDemand++
			} else {
				h.Automatic++
			}
			if at.After(h.LastRotation) {
				h.LastRotation, h.LastType = at, string(r.RotationType)
			}
		}
	}
	return h, nil
}

// refreshLog is one `msg="refresh finished"` line of the exporter.
type refreshLog struct {
	duration, publish time.Duration
	counts            map[string]int // the verdict counts it logs, where it does
	calls             map[string]int64
	// CPU times when the line was read: of the exporter, and of this
	// process (the fake; nothing else runs in it between refreshes).
	exporterCPU, fakeCPU time.Duration
}

// exporter is a run of the kms_exporter binary against the fake.
type exporter struct {
	b       *testing.B
	cmd     *exec.Cmd
	url     string
	exited  chan struct{}
	logs    chan refreshLog
	tailMu  sync.Mutex
	tail    []string // the last lines of the log, for failures
	within  time.Duration
	want    map[string]int
	keys    int
	flushed []refreshLog
}

// startExporter runs the binary with the given refresh interval and flags.
func startExporter(b *testing.B, srv *fastkms.Server, bin string, keys int, interval string, flags ...string) *exporter {
	addr := harness.FreeAddr(b)
	args := append([]string{"--web.listen-address=" + addr, "--aws.region=" + region, "--refresh.interval=" + interval,
		"--aws.requests-per-second=0", "--aws.list-key-rotations-per-second=0", "--log.format=logfmt"}, flags...)
	e := &exporter{b: b, cmd: exec.Command(bin, args...), url: "http://" + addr + "/metrics", exited: make(chan struct{}),
		logs: make(chan refreshLog, 100), within: 10*time.Minute + time.Duration(keys)*time.Millisecond,
		want: fastkms.Expected(keys), keys: keys}
	e.cmd.Env = append(os.Environ(), "AWS_ENDPOINT_URL_KMS="+srv.URL, "AWS_ACCESS_KEY_ID=x", "AWS_SECRET_ACCESS_KEY=x",
		"AWS_EC2_METADATA_DISABLED=true")
	logs, stderr := io.Pipe()
	e.cmd.Stderr = stderr
	if err := e.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	go func() {
		_ = e.cmd.Wait()
		stderr.Close()
		close(e.exited)
	}()
	go func() {
		s := bufio.NewScanner(logs)
		s.Buffer(make([]byte, 64*1024), 1024*1024)
		for s.Scan() {
			line := s.Text()
			e.tailMu.Lock()
			e.tail = append(e.tail, line)
			if len(e.tail) > 20 {
				e.tail = e.tail[1:]
			}
			e.tailMu.Unlock()
			if v, _ := logfmtValue(line, "msg"); v == "refresh finished" {
				select {
				case e.logs <- parseRefreshLog(b, line, srv.Calls(), processCPU(e.cmd.Process.Pid), selfCPU()):
				default: // more than the benchmark reads: never block the exporter's log
				}
			}
		}
		_, _ = io.Copy(io.Discard, logs)
	}()
	return e
}

// next waits for the next refresh to finish and checks its verdict counts.
func (e *exporter) next() refreshLog {
	select {
	case r := <-e.logs:
		if r.counts != nil && !maps.Equal(r.counts, e.want) {
			e.b.Fatalf("a refresh of %d keys logged %v, want %v", e.keys, r.counts, e.want)
		}
		fmt.Fprintf(os.Stderr, "%d keys: exporter refresh took %s (publish %s)\n", e.keys, r.duration, r.publish)
		return r
	case <-e.exited:
		e.b.Fatalf("the exporter exited; its last log lines:\n%s", e.logTail())
	case <-time.After(e.within):
		e.b.Fatalf("no refresh finished within %s; the exporter's last log lines:\n%s", e.within, e.logTail())
	}
	panic("unreachable")
}

func (e *exporter) logTail() string {
	e.tailMu.Lock()
	defer e.tailMu.Unlock()
	return strings.Join(e.tail, "\n")
}

// memory returns the exporter's resident and peak resident memory in bytes.
func (e *exporter) memory() (rss, peak float64) {
	rss, peak = procMemory(e.b, e.cmd.Process.Pid)
	return rss * 1024 * 1024, peak * 1024 * 1024
}

func (e *exporter) stop() {
	_ = e.cmd.Process.Kill()
	<-e.exited
}

// The exporter binary is measured against the fake in three runs:
//   - exporterOnce, refreshing once (--refresh.interval=1h): the full
//     refresh and publish, the resident memory 2 s after it (what an
//     exporter keeps between refreshes), and scrapes of an idle exporter;
//   - exporterLoop, refreshing back to back (--refresh.interval=1s), twice:
//     the refresh times and the peak resident memory, which the second
//     refresh reaches (the previous snapshot and its encoding are live
//     through it);
//   - exporterAttention, with --metrics.per-key=attention, refreshing once:
//     its series, memory and scrapes.
//
// The refresh time compared with the bare client is the median of the three
// refreshes of the first two runs.

// exporterOnce runs the exporter refreshing once and returns that refresh.
func exporterOnce(b *testing.B, srv *fastkms.Server, bin string, f *millionFigures) refreshLog {
	before := totalCalls(srv.Calls())
	once := startExporter(b, srv, bin, f.keys, "1h")
	first := once.next()
	f.exporterFirstCalls = float64(totalCalls(first.calls)-before) / float64(f.keys)
	f.publish = first.publish
	time.Sleep(2 * time.Second)
	f.rss, _ = once.memory()
	f.gzipScrape, f.gzipSize = timeScrapes(b, once.url, "gzip", scrapesGzip)
	f.plainScrape, f.plainSize = timeScrapes(b, once.url, "identity", scrapesPlain)
	f.floorScrape = timeStaticScrapes(b, f.gzipSize, scrapesGzip)
	series, counts := readExposition(b, once.url)
	if !maps.Equal(counts, once.want) {
		b.Fatalf("kms_keys at %d keys: %v, want %v", f.keys, counts, once.want)
	}
	f.series = series
	once.stop()
	return first
}

// exporterLoop runs the exporter refreshing back to back; the bare
// client's figures must be in f already, for the calls to be compared.
func exporterLoop(b *testing.B, srv *fastkms.Server, bin string, f *millionFigures, first refreshLog) {
	loop := startExporter(b, srv, bin, f.keys, "1s")
	got := []refreshLog{first}
	for range millionRefreshes - 1 {
		got = append(got, loop.next())
	}
	_, f.peak = loop.memory()
	loop.stop()
	last, prev := got[len(got)-1], got[len(got)-2]
	f.incrementalPublish = last.publish

	var durations []time.Duration
	for _, r := range got {
		durations = append(durations, r.duration)
	}
	f.refreshes = durations
	f.exporter = median(durations)
	// The last two refreshes ran back to back: the calls and the CPU time
	// between their ends are one refresh's (give or take what was done while
	// the line was being read); no scrape is counted in.
	f.exporterCalls = float64(totalCalls(last.calls)-totalCalls(prev.calls)) / float64(f.keys)
	f.exporterCPU = last.exporterCPU - prev.exporterCPU + last.fakeCPU - prev.fakeCPU
	f.exporterOwnCPU = last.exporterCPU - prev.exporterCPU
	if other := srv.Calls()["other"]; other != 0 {
		b.Errorf("the exporter made %d calls of operations the fake does not know", other)
	}
	// The bare client must make the calls the exporter makes, for the
	// ratios to compare like with like (a hundredth of a call per key of
	// slack: keys whose next rotation date passes while the benchmark runs
	// have their history read again).
	if d := f.exporterFirstCalls - f.bareFirstCalls; d > 0.01 || d < -0.01 {
		b.Errorf("first sight: the exporter made %.3f calls per key, the bare client %.3f", f.exporterFirstCalls, f.bareFirstCalls)
	}
	if d := f.exporterCalls - f.bareCalls; d > 0.01 || d < -0.01 {
		b.Errorf("later refresh: the exporter made %.3f calls per key, the bare client %.3f", f.exporterCalls, f.bareCalls)
	}
}

// exporterAttention runs the exporter with --metrics.per-key=attention,
// refreshing once (skipped with KMS_BENCH_ATTENTION=0).
func exporterAttention(b *testing.B, srv *fastkms.Server, bin string, f *millionFigures) {
	if os.Getenv("KMS_BENCH_ATTENTION") == "0" {
		return
	}
	att := startExporter(b, srv, bin, f.keys, "1h", "--metrics.per-key=attention")
	att.next()
	time.Sleep(2 * time.Second)
	f.attentionRSS, _ = att.memory()
	var counts map[string]int
	f.attentionScrape, f.attentionSize = timeScrapes(b, att.url, "gzip", scrapesGzip)
	f.attentionSeries, counts = readExposition(b, att.url)
	if !maps.Equal(counts, att.want) {
		b.Fatalf("kms_keys at %d keys, attention: %v, want %v", f.keys, counts, att.want)
	}
	att.stop()
}

func parseRefreshLog(b *testing.B, line string, calls map[string]int64, exporterCPU, fakeCPU time.Duration) refreshLog {
	r := refreshLog{calls: calls, exporterCPU: exporterCPU, fakeCPU: fakeCPU}
	v, _ := logfmtValue(line, "duration")
	d, err := time.ParseDuration(v)
	if err != nil {
		b.Errorf("refresh log without a duration: %s", line)
	}
	r.duration = d
	if v, ok := logfmtValue(line, "publish"); ok {
		if r.publish, err = time.ParseDuration(v); err != nil {
			b.Errorf("refresh log with a bad publish duration: %s", line)
		}
	}
	for _, s := range policy.Statuses {
		v, ok := logfmtValue(line, string(s))
		if !ok {
			return r // not every status logged: do not check them
		}
		n, _ := strconv.Atoi(v)
		if r.counts == nil {
			r.counts = map[string]int{}
		}
		r.counts[string(s)] = n
	}
	return r
}

// logfmtValue returns the value of key in a logfmt line.
func logfmtValue(line, key string) (string, bool) {
	for line != "" {
		line = strings.TrimLeft(line, " ")
		eq := strings.IndexAny(line, "= ")
		if eq < 0 {
			return "", false
		}
		k := line[:eq]
		if line[eq] == ' ' { // a key without value
			line = line[eq:]
			continue
		}
		line = line[eq+1:]
		var v string
		if strings.HasPrefix(line, `"`) {
			end := 1
			for end < len(line) && line[end] != '"' {
				if line[end] == '\\' {
					end++
				}
				end++
			}
			end = min(end+1, len(line))
			v, line = line[:end], line[end:]
			if u, err := strconv.Unquote(v); err == nil {
				v = u
			}
		} else {
			end := strings.IndexByte(line, ' ')
			if end < 0 {
				end = len(line)
			}
			v, line = line[:end], line[end:]
		}
		if k == key {
			return v, true
		}
	}
	return "", false
}

// timeScrapes scrapes url n times one after the other, asking for the
// encoding as Prometheus does and reading the body without decompressing it
// (the transfer), and returns the median time and the last body's size.
func timeScrapes(b *testing.B, url, encoding string, n int) (time.Duration, int64) {
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	defer client.CloseIdleConnections()
	var times []time.Duration
	var size int64
	for range n {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Header.Set("Accept-Encoding", encoding)
		start := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		size, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		times = append(times, time.Since(start))
		if err != nil || resp.StatusCode != http.StatusOK {
			b.Fatalf("scrape: %s, %v", resp.Status, err)
		}
		if got := resp.Header.Get("Content-Encoding"); (encoding == "gzip") != (got == "gzip") {
			b.Fatalf("asked for %s, got Content-Encoding %q", encoding, got)
		}
	}
	return median(times), size
}

// timeStaticScrapes serves size bytes from one slice on loopback and times
// n reads of them as timeScrapes does.
func timeStaticScrapes(b *testing.B, size int64, n int) time.Duration {
	body := make([]byte, size)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Encoding", "gzip")
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
		_, _ = w.Write(body)
	}))
	defer srv.Close()
	d, got := timeScrapes(b, srv.URL, "gzip", n)
	if got != size {
		b.Fatalf("static scrape read %d bytes, want %d", got, size)
	}
	return d
}

var kmsKeysLine = regexp.MustCompile(`^kms_keys\{.*\bstatus="([^"]*)".*\} (\S+)$`)

// readExposition scrapes url once (gzip, decompressed here) and returns the
// number of samples and the kms_keys values summed by status.
func readExposition(b *testing.B, url string) (series int, counts map[string]int) {
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	defer client.CloseIdleConnections()
	counts = map[string]int{}
	scanExposition(b, client, url, func(l []byte) bool {
		line := string(l)
		if line == "" || line[0] == '#' {
			return true
		}
		series++
		if m := kmsKeysLine.FindStringSubmatch(line); m != nil {
			v, err := strconv.ParseFloat(m[2], 64)
			if err != nil {
				b.Fatalf("kms_keys sample %q", line)
			}
			counts[m[1]] += int(v)
		}
		return true
	})
	return series, counts
}

// scanExposition scrapes url once with client (gzip, decompressed here) and
// hands the lines of the body to line, until it returns false.
func scanExposition(b *testing.B, client *http.Client, url string, line func([]byte) bool) {
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Accept-Encoding", "gzip")
	resp, err := client.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := gzip.NewReader(resp.Body)
	if err != nil {
		b.Fatal(err)
	}
	s := bufio.NewScanner(body)
	s.Buffer(make([]byte, 64*1024), 1024*1024)
	for s.Scan() {
		if !line(s.Bytes()) {
			return
		}
	}
	if err := s.Err(); err != nil {
		b.Fatal(err)
	}
}

// verdict says whether a figure meets its target.
func verdict(ok bool) string {
	if ok {
		return "meets"
	}
	return "MISSES"
}

// tableRow returns what writes a row of a table on w: a name, then a cell
// per figures of all.
func tableRow[F any](w io.Writer, all []F) func(name string, cell func(f F) string) {
	return func(name string, cell func(f F) string) {
		fmt.Fprint(w, name+"\t")
		for _, f := range all {
			fmt.Fprint(w, cell(f)+"\t")
		}
		fmt.Fprintln(w)
	}
}

// printMillion prints the figures of every size next to the targets, which
// issue 10 sets at 1M keys (the ratio at every size).
func printMillion(all []millionFigures) {
	if len(all) == 0 {
		return
	}
	// The memory, publish and scrape targets are set at a million keys.
	at1M := func(f millionFigures, ok bool) string {
		if f.keys < 1000000 {
			return ""
		}
		return verdict(ok)
	}
	mb := func(v float64) float64 { return v / (1 << 20) }
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	row := tableRow(w, all)
	fmt.Printf("\nkms_exporter against internal/fastkms on %d CPUs: the fake in the benchmark's process, the bare client (%d workers) "+
		"and the exporter (%d requests in flight) each in a process of its own; memory after a refresh and scrapes of an exporter "+
		"that refreshed once; peak memory over %d refreshes back to back (--refresh.interval=1s):\n", runtime.NumCPU(), workers, workers, millionRefreshes-1)
	row("keys", func(f millionFigures) string { return strconv.Itoa(f.keys) })
	row("full audit, bare SDK client (median)", func(f millionFigures) string {
		return fmt.Sprintf("%.2f s of %d", f.bare.Seconds(), f.bareRuns)
	})
	row("full refresh, exporter (median)", func(f millionFigures) string {
		return fmt.Sprintf("%.2f s of %d", f.exporter.Seconds(), len(f.refreshes))
	})
	row("  each refresh", func(f millionFigures) string {
		s := make([]string, len(f.refreshes))
		for i, d := range f.refreshes {
			s[i] = fmt.Sprintf("%.1f", d.Seconds())
		}
		return strings.Join(s, " ") + " s"
	})
	row(fmt.Sprintf("ratio exporter / bare (target <= %.2fx)", targetRatio), func(f millionFigures) string {
		r := f.exporter.Seconds() / f.bare.Seconds()
		return fmt.Sprintf("%.2fx %s", r, verdict(r <= targetRatio))
	})
	row(fmt.Sprintf("full publish, 1st refresh (target at 1M < %s)", targetPublish), func(f millionFigures) string {
		return fmt.Sprintf("%.2f s %s", f.publish.Seconds(), at1M(f, f.publish < targetPublish))
	})
	row("publish, unchanged keys reused (last refresh)", func(f millionFigures) string {
		return fmt.Sprintf("%.2f s", f.incrementalPublish.Seconds())
	})
	row(fmt.Sprintf("RSS 2 s after the refresh (target at 1M <= %d B/key)", targetRSSPerKey), func(f millionFigures) string {
		per := f.rss / float64(f.keys)
		return fmt.Sprintf("%.0f MiB, %.0f B/key %s", mb(f.rss), per, at1M(f, per <= targetRSSPerKey))
	})
	row(fmt.Sprintf("peak RSS, refreshes back to back (target at 1M <= %d B/key)", targetPeakPerKey), func(f millionFigures) string {
		per := f.peak / float64(f.keys)
		return fmt.Sprintf("%.0f MiB, %.0f B/key %s", mb(f.peak), per, at1M(f, per <= targetPeakPerKey))
	})
	row(fmt.Sprintf("scrape gzip, median of %d (target at 1M < %.0f ms)", scrapesGzip, targetScrapeGzipS*1000), func(f millionFigures) string {
		return fmt.Sprintf("%.1f ms, %.1f MiB %s", ms(f.gzipScrape), mb(float64(f.gzipSize)), at1M(f, f.gzipScrape.Seconds() < targetScrapeGzipS))
	})
	row("  the same bytes from one slice, median (floor)", func(f millionFigures) string {
		return fmt.Sprintf("%.1f ms", ms(f.floorScrape))
	})
	row(fmt.Sprintf("scrape plain, median of %d", scrapesPlain), func(f millionFigures) string {
		return fmt.Sprintf("%.1f ms, %.1f MiB", ms(f.plainScrape), mb(float64(f.plainSize)))
	})
	row("series (samples in /metrics)", func(f millionFigures) string {
		return fmt.Sprintf("%d, %.1f/key", f.series, float64(f.series)/float64(f.keys))
	})
	row("--metrics.per-key=attention: series", func(f millionFigures) string {
		if f.attentionSeries == 0 {
			return "not run"
		}
		return fmt.Sprintf("%d, %.2f/key", f.attentionSeries, float64(f.attentionSeries)/float64(f.keys))
	})
	row("  RSS 2 s after the refresh", func(f millionFigures) string {
		return fmt.Sprintf("%.0f MiB, %.0f B/key", mb(f.attentionRSS), f.attentionRSS/float64(f.keys))
	})
	row(fmt.Sprintf("  scrape gzip, median of %d (target at 1M < %.0f ms)", scrapesGzip, targetScrapeGzipS*1000), func(f millionFigures) string {
		return fmt.Sprintf("%.1f ms, %.1f MiB %s", ms(f.attentionScrape), mb(float64(f.attentionSize)),
			at1M(f, f.attentionScrape.Seconds() < targetScrapeGzipS))
	})
	row("exporter process CPU per refresh", func(f millionFigures) string {
		return fmt.Sprintf("%.1f s", f.exporterOwnCPU.Seconds())
	})
	row("CPU per later refresh incl. the fake, exporter / bare", func(f millionFigures) string {
		return fmt.Sprintf("%.1f s / %.1f s = %.2fx", f.exporterCPU.Seconds(), f.bareCPU.Seconds(), f.exporterCPU.Seconds()/f.bareCPU.Seconds())
	})
	row("KMS calls per key, later refresh, exporter / bare", func(f millionFigures) string {
		return fmt.Sprintf("%.3f / %.3f", f.exporterCalls, f.bareCalls)
	})
	row("KMS calls per key, first sight (histories read), exporter / bare", func(f millionFigures) string {
		return fmt.Sprintf("%.3f / %.3f", f.exporterFirstCalls, f.bareFirstCalls)
	})
	row("calls/s the fake served the bare client (last run)", func(f millionFigures) string {
		return fmt.Sprintf("%.0f", f.fakeRate)
	})
	_ = w.Flush()
}
