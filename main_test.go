package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/kms-exporter/kms_exporter/collector"
	"github.com/kms-exporter/kms_exporter/internal/eventstest"
	"github.com/kms-exporter/kms_exporter/internal/harness"
	"github.com/kms-exporter/kms_exporter/internal/kmstest"
	"github.com/kms-exporter/kms_exporter/policy"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kms_exporter-test-")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "kms_exporter")
	if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building kms_exporter: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// testEnv is the environment the binary runs in: the test's without its AWS_
// and KMS_EXPORTER_ variables, then static credentials, no instance metadata,
// no shared files, eu-west-1, every AWS service at endpoint, then overrides
// (NAME=VALUE; the last value of a name wins).
func testEnv(endpoint string, overrides ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "AWS_") && !strings.HasPrefix(kv, "KMS_EXPORTER_") {
			env = append(env, kv)
		}
	}
	env = append(env, "AWS_ENDPOINT_URL="+endpoint, "AWS_ENDPOINT_URL_KMS="+endpoint, "AWS_REGION=eu-west-1",
		"AWS_ACCESS_KEY_ID=x", "AWS_SECRET_ACCESS_KEY=x", "AWS_EC2_METADATA_DISABLED=true",
		"AWS_CONFIG_FILE="+os.DevNull, "AWS_SHARED_CREDENTIALS_FILE="+os.DevNull)
	return append(env, overrides...)
}

// process is the exporter serving under a test.
type process struct {
	addr   string
	logs   *harness.Buffer
	cmd    *exec.Cmd
	exited chan struct{} // closed once the process has exited
}

// start runs the binary as the README and the issue do, against endpoint, on
// a free port; the test's cleanup stops it with SIGINT.
func start(t *testing.T, endpoint string, args ...string) *process {
	t.Helper()
	return launch(t, args, testEnv(endpoint))
}

// launch runs the binary with args (and --web.listen-address on a free
// port) and env until the test ends; the cleanup stops it with SIGINT and
// shows its log if the test failed.
func launch(t *testing.T, args, env []string) *process {
	t.Helper()
	p := &process{addr: harness.FreeAddr(t), logs: &harness.Buffer{}, exited: make(chan struct{})}
	p.cmd = exec.Command(binary, append(slices.Clip(args), "--web.listen-address="+p.addr)...)
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(os.Interrupt)
		select {
		case <-p.exited:
		case <-time.After(15 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.exited
			t.Errorf("exporter did not stop within 15s of SIGINT")
		}
		if t.Failed() {
			t.Logf("kms_exporter %q log:\n%s", args, p.logs)
		}
	})
	return p
}

// waitExit returns the exit code, failing the test if the process still runs after within.
func (p *process) waitExit(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case <-p.exited:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(within):
		t.Fatalf("still running %s later:\n%s", within, p.logs)
		return 0
	}
}

// waitReady polls /-/ready until the first refresh has finished.
func (p *process) waitReady(t *testing.T) {
	t.Helper()
	harness.Poll(t, 30*time.Second, func() string {
		if code, body := get(t, "http://"+p.addr+"/-/ready"); code != 200 {
			return fmt.Sprintf("/-/ready: %d %s", code, body)
		}
		return ""
	})
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func complianceLine(id, status, reason string) string {
	return fmt.Sprintf(`kms_key_compliance{account_id="%s",key_id="%s",reason="%s",region="eu-west-1",status="%s"} 1`,
		kmstest.DefaultAccount, id, reason, status)
}

func TestServeAgainstLocalKMS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv, ids := kmstest.StartMixedT(t, "eu-west-1")
	// The command of the issue, on a free port.
	p := start(t, srv.URL, "--aws.region=eu-west-1", "--refresh.interval=3s")
	base := "http://" + p.addr
	p.waitReady(t)
	if code, _ := get(t, base+"/-/healthy"); code != 200 {
		t.Errorf("/-/healthy: %d", code)
	}
	if code, body := get(t, base+"/"); code != 200 || !strings.Contains(body, "/metrics") {
		t.Errorf("landing page: %d %q", code, body)
	}
	code, metrics := get(t, base+"/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	for _, k := range kmstest.MixedInventory {
		if !strings.Contains(metrics, complianceLine(ids[k.Name], k.Status, k.Reason)) {
			t.Errorf("%s: no line %s", k.Name, complianceLine(ids[k.Name], k.Status, k.Reason))
		}
	}
	for _, want := range []string{
		`kms_refresh_success{account_id="111122223333",region="eu-west-1"} 1`,
		`kms_key_rotation_enabled{account_id="111122223333",key_id="` + ids["payments"] + `",region="eu-west-1"} 1`,
		`alias="alias/payments"`,
		`kms_api_request_errors_total{account_id="111122223333",error_code="ThrottlingException",operation="DescribeKey",region="eu-west-1"} 0`,
		"kms_exporter_build_info{", "process_resident_memory_bytes", "go_goroutines",
		"kms_last_refresh_timestamp_seconds{", "kms_refresh_duration_seconds{",
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	// A disabled key is not applicable whatever its rotation setting: it is not asked.
	if s := `kms_key_rotation_enabled{account_id="111122223333",key_id="` + ids["disabled"] + `"`; strings.Contains(metrics, s) {
		t.Errorf("/metrics has %s...: the rotation status of a disabled key was read", s)
	}
	if promtool, err := exec.LookPath("promtool"); err == nil {
		cmd := exec.Command(promtool, "check", "metrics")
		cmd.Stdin = strings.NewReader(metrics)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool check metrics: %v\n%s", err, out)
		}
	} else if harness.RequireTools(t) {
		t.Error("promtool not found")
	}

	// A change in KMS shows on a later refresh, with no restart.
	if _, err := srv.Client().EnableKeyRotation(ctx, &kms.EnableKeyRotationInput{KeyId: aws.String(ids["legacy-billing"])}); err != nil {
		t.Fatal(err)
	}
	want := complianceLine(ids["legacy-billing"], "compliant", "rotation_enabled")
	harness.Poll(t, 20*time.Second, func() string {
		if _, m := get(t, base+"/metrics"); !strings.Contains(m, want) {
			return "the enabled rotation was not seen: no " + want
		}
		return ""
	})
}

// exposition is a text exposition body: the value of each series (its name
// and labels, as written) by metric name.
type exposition map[string]map[string]string

func parseExposition(t *testing.T, body string) exposition {
	t.Helper()
	e := exposition{}
	for _, line := range strings.Split(body, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			t.Fatalf("not a sample line: %q", line)
		}
		series, value := line[:i], line[i+1:]
		name, _, _ := strings.Cut(series, "{")
		if e[name] == nil {
			e[name] = map[string]string{}
		}
		e[name][series] = value
	}
	return e
}

// names returns the metric names with a series, sorted.
func (e exposition) names() []string {
	var out []string
	for n := range e {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// seriesOf returns the series of metric name that keep says to, sorted.
func (e exposition) seriesOf(name string, keep func(series string) bool) []string {
	var out []string
	for s := range e[name] {
		if keep(s) {
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return out
}

// inventorySeries counts the series of the inventory's metric families.
func (e exposition) inventorySeries() int {
	n := 0
	for _, f := range collector.FamilyNames() {
		n += len(e[f])
	}
	return n
}

// TestServeMetricSelection: with --metrics.per-key=attention and with
// --metrics.denylist, the exporter serves a part of what it serves by
// default over the same keys (an exporter run with the defaults beside).
func TestServeMetricSelection(t *testing.T) {
	srv, ids := kmstest.StartMixedT(t, "eu-west-1")
	modes := map[string][]string{
		"default":   nil,
		"attention": {"--metrics.per-key=attention"},
		"denylist":  {"--metrics.denylist=kms_key_info"},
	}
	processes := map[string]*process{}
	for mode, args := range modes {
		processes[mode] = start(t, srv.URL, append([]string{"--aws.region=eu-west-1"}, args...)...)
	}
	served := map[string]exposition{}
	for mode, p := range processes {
		p.waitReady(t)
		code, body := get(t, "http://"+p.addr+"/metrics")
		if code != 200 {
			t.Fatalf("%s: /metrics: %d %s", mode, code, body)
		}
		served[mode] = parseExposition(t, body)
		// The exporter's count of what it serves.
		want := fmt.Sprint(served[mode].inventorySeries())
		if got := served[mode]["kms_exporter_inventory_series"]["kms_exporter_inventory_series"]; got != want {
			t.Errorf("%s: kms_exporter_inventory_series %q, want %s (the inventory's series served)", mode, got, want)
		}
	}
	all, attention, denied := served["default"], served["attention"], served["denylist"]

	// attention: per-key series of the keys needing attention only; the
	// per-target series all there.
	needs := map[string]bool{}
	counts := map[string]int{}
	for _, k := range kmstest.MixedInventory {
		counts[k.Status]++
		needs[ids[k.Name]] = k.Status == "noncompliant" || k.Status == "unknown" || k.Status == "exempt" || k.Reason == "pending_deletion"
		line := complianceLine(ids[k.Name], k.Status, k.Reason)
		series, value, _ := strings.Cut(line, "} ")
		if got, ok := attention["kms_key_compliance"][series+"}"]; ok != needs[ids[k.Name]] || ok && got != value {
			t.Errorf("attention: %s (%s, %s): kms_key_compliance served %v, want %v", k.Name, k.Status, k.Reason, ok, needs[ids[k.Name]])
		}
	}
	keyID := regexp.MustCompile(`[{,]key_id="([^"]*)"`)
	for _, f := range collector.FamilyNames() {
		want := all.seriesOf(f, func(s string) bool {
			m := keyID.FindStringSubmatch(s)
			return m == nil || needs[m[1]]
		})
		if got := attention.seriesOf(f, func(string) bool { return true }); !slices.Equal(got, want) {
			t.Errorf("attention: %s series\n%s\nwant those of the keys needing attention, and every per-target one:\n%s",
				f, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}
	for _, st := range policy.Statuses {
		series := fmt.Sprintf(`kms_keys{account_id="%s",region="eu-west-1",status="%s"}`, kmstest.DefaultAccount, st)
		if got, want := attention["kms_keys"][series], fmt.Sprint(counts[string(st)]); got != want {
			t.Errorf("attention: %s %q, want %s: kms_keys counts every key", series, got, want)
		}
	}

	// denylist: kms_key_info gone, everything else as served by default.
	if len(all["kms_key_info"]) != len(kmstest.MixedInventory) || len(denied["kms_key_info"]) != 0 {
		t.Errorf("kms_key_info: %d series by default, %d with --metrics.denylist=kms_key_info; want %d and 0",
			len(all["kms_key_info"]), len(denied["kms_key_info"]), len(kmstest.MixedInventory))
	}
	for _, n := range all.names() {
		if _, ok := denied[n]; !ok && n != "kms_key_info" {
			t.Errorf("denylist: %s is not served; only kms_key_info should be dropped", n)
		}
	}
	for _, n := range denied.names() {
		if _, ok := all[n]; !ok {
			t.Errorf("denylist: %s is served, and not by default", n)
		}
	}
	for _, f := range collector.FamilyNames() {
		if f == "kms_key_info" {
			continue
		}
		every := func(string) bool { return true }
		if got, want := denied.seriesOf(f, every), all.seriesOf(f, every); !slices.Equal(got, want) {
			t.Errorf("denylist: %s series\n%s\nwant those served by default:\n%s", f, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}
}

// TestNotReadyBeforeFirstRefresh points the exporter at an endpoint that
// accepts connections and never answers.
func TestNotReadyBeforeFirstRefresh(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	addr := start(t, "http://"+l.Addr().String(), "--aws.timeout=1m", "--aws.max-attempts=1").addr
	harness.Poll(t, 20*time.Second, func() string {
		if code, _ := get(t, "http://"+addr+"/-/healthy"); code != 200 {
			return fmt.Sprintf("/-/healthy: %d", code)
		}
		return ""
	})
	if code, body := get(t, "http://"+addr+"/-/ready"); code != http.StatusServiceUnavailable {
		t.Errorf("/-/ready before the first refresh: %d %s, want 503", code, body)
	}
}

// awsEndpoint is a stand-in AWS endpoint on loopback that counts the
// connections it gets (and closes them).
type awsEndpoint struct {
	url         string
	connections atomic.Int64
}

func startAWSEndpoint(t *testing.T) *awsEndpoint {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	e := &awsEndpoint{url: "http://" + l.Addr().String()}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			e.connections.Add(1)
			c.Close()
		}
	}()
	return e
}

// TestBadConfiguration: a bad flag or variable stops every command at once
// with exit code 2 and a message naming it, before any AWS request.
func TestBadConfiguration(t *testing.T) {
	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	emptyToken := file("empty-token", "\n")
	badWebConfig := file("web-bad.yml", "tls_server_config: [\n")
	webConfigWithoutCert := file("web-nocert.yml", "tls_server_config:\n  key_file: key.pem\n")
	badProfile := file("aws-config", "[default]\nregion = moon\n")
	tests := []struct {
		args []string
		env  []string // NAME=VALUE over testEnv's
		want []string // what the message names
	}{
		{args: []string{"--aws.region=moon-base-1x"}, want: []string{"--aws.region", "moon-base-1x"}},
		{args: []string{"--aws.region=all,eu-west-1"}, want: []string{"--aws.region"}},
		{env: []string{"AWS_REGION="}, want: []string{"--aws.region: no region"}},
		{env: []string{"AWS_REGION=moon"}, want: []string{"AWS_REGION", "moon"}},
		{env: []string{"AWS_REGION=", "AWS_CONFIG_FILE=" + badProfile}, want: []string{`AWS profile "default"`, "moon"}},
		{args: []string{"--aws.assume-role=arn:aws:s3:::bucket"}, want: []string{"--aws.assume-role"}},
		{args: []string{"--aws.assume-role=arn:aws:iam::123456789012:role/audit,externalid"}, want: []string{"--aws.assume-role"}},
		{args: []string{"--no-aws.own-account"}, want: []string{"--aws.assume-role"}},
		{args: []string{"--aws.max-concurrency=0"}, want: []string{"--aws.max-concurrency"}},
		{args: []string{"--aws.requests-per-second=-1"}, want: []string{"--aws.requests-per-second"}},
		{args: []string{"--aws.max-attempts=0"}, want: []string{"--aws.max-attempts"}},
		{args: []string{"--aws.timeout=0s"}, want: []string{"--aws.timeout"}},
		{args: []string{"--refresh.interval=0"}, want: []string{"--refresh.interval"}},
		{args: []string{"--refresh.interval=often"}, want: []string{"--refresh.interval"}},
		{args: []string{"--refresh.max-stale-age=-5m"}, want: []string{"--refresh.max-stale-age"}},
		{args: []string{"--compliance.max-rotation-period-days=30"}, want: []string{"--compliance.max-rotation-period-days"}},
		{args: []string{"--compliance.max-rotation-period-days=3000"}, want: []string{"--compliance.max-rotation-period-days"}},
		{args: []string{"--metrics.tag-label=cost-center", "--metrics.tag-label=cost_center"},
			want: []string{"--metrics.tag-label", `"cost-center"`, `"cost_center"`}},
		{args: []string{"--metrics.tag-label=team", "--metrics.tag-label=owner", "--metrics.tag-label=team.name", "--metrics.tag-label=team_name"},
			want: []string{"--metrics.tag-label", `"team.name"`, `"team_name"`}},
		{args: []string{"--web.telemetry-path=/api/v1/remediate"}, want: []string{"--web.telemetry-path"}},
		{args: []string{"--web.telemetry-path=/api/v1/remediate/bulk"}, want: []string{"--web.telemetry-path"}},
		{args: []string{"--web.telemetry-path=/api/v1/alertmanager"}, want: []string{"--web.telemetry-path"}},
		{args: []string{"--web.telemetry-path=/-/healthy"}, want: []string{"--web.telemetry-path"}},
		{args: []string{"--web.telemetry-path=/-/ready"}, want: []string{"--web.telemetry-path"}},
		{args: []string{"--web.telemetry-path=metrics"}, want: []string{"--web.telemetry-path"}},
		{args: []string{"--web.config.file=" + filepath.Join(dir, "missing.yml")}, want: []string{"--web.config.file"}},
		{args: []string{"--web.config.file=" + badWebConfig}, want: []string{"--web.config.file"}},
		{args: []string{"--web.config.file=" + webConfigWithoutCert}, want: []string{"--web.config.file"}},
		{args: []string{"--web.shutdown-timeout=0s"}, want: []string{"--web.shutdown-timeout"}},
		{args: []string{"--web.listen-address=nonsense"}, want: []string{"--web.listen-address"}},
		{args: []string{"--metrics.per-key=some"}, want: []string{"--metrics.per-key", "some"}},
		{args: []string{"--metrics.allowlist=kms_keys", "--metrics.denylist=kms_key_info"}, want: []string{"--metrics.denylist", "--metrics.allowlist"}},
		{args: []string{"--metrics.allowlist=kms_key_("}, want: []string{"--metrics.allowlist", `"kms_key_("`}},
		{args: []string{"--metrics.denylist=kms_key"}, want: []string{"--metrics.denylist", `"kms_key"`, "matches no metric family"}},
		{args: []string{"--remediation.enabled"}, want: []string{"--remediation.token-file"}},
		{args: []string{"--events.sqs-queue-url=https://sqs.eu-west-1.amazonaws.com/111122223333/q", "--total-shards=2"}, want: []string{"--events.sqs-queue-url", "--total-shards=2"}},
		{args: []string{"--events.sqs-queue-url=https://example.com/111122223333/q"}, want: []string{"--events.sqs-queue-url", "not an SQS endpoint"}},
		{args: []string{"--refresh.interval=10m", "--refresh.resync-interval=5m"}, want: []string{"--refresh.resync-interval", "shorter than --refresh.interval"}},
		{args: []string{"--remediation.enabled", "--remediation.token-file=" + emptyToken}, want: []string{"--remediation.token-file"}},
		{args: []string{"--remediation.enabled", "--remediation.token-file=" + filepath.Join(dir, "missing")}, want: []string{"--remediation.token-file"}},
		{args: []string{"--remediation.enabled", "--remediation.token-file=" + dir}, want: []string{"--remediation.token-file"}},
		{args: []string{"--remediation.requests-per-second=0"}, want: []string{"--remediation.requests-per-second"}},
		{args: []string{"--remediation.timeout=0s"}, want: []string{"--remediation.timeout"}},
		{args: []string{"--remediation.aws-requests-per-second=-1"}, want: []string{"--remediation.aws-requests-per-second"}},
		{args: []string{"--shard=first"}, want: []string{"--shard"}},
		{args: []string{"--shard=2"}, want: []string{"--total-shards"}},
		{args: []string{"--total-shards=0"}, want: []string{"--total-shards"}},
		{args: []string{"--log.level=loud"}, want: []string{"--log.level"}},
		{args: []string{"--no-such-flag"}, want: []string{"--no-such-flag"}},
		{args: []string{"--aws.region"}, want: []string{"--aws.region"}},
		{args: []string{"--aws.region", "--refresh.interval=1m"}, want: []string{"--aws.region"}},
		{args: []string{"serve", "--metrics.tag-label=a-b", "--metrics.tag-label=a.b"}, want: []string{"--metrics.tag-label"}},
		{args: []string{"audit", "--output=xml"}, want: []string{"--output"}},
		{args: []string{"audit", "--refresh.interval=0s"}, want: []string{"--refresh.interval"}},
		{args: []string{"audit", "--aws.region=moon-base-1x"}, want: []string{"--aws.region"}},
		{args: []string{"audit"}, env: []string{"AWS_REGION=moon"}, want: []string{"AWS_REGION"}},
		{args: []string{"audit", "--no-such-flag"}, want: []string{"--no-such-flag"}},
		{args: []string{"audit", "--output"}, want: []string{"--output"}},
		{args: []string{"audit", "--metrics.allowlist=kms_key"}, want: []string{"--metrics.allowlist"}},
		{args: []string{"remediate"}, want: []string{"--key-id"}},
		{args: []string{"remediate", "--key-id=k", "--rotation-period-days=30"}, want: []string{"--rotation-period-days"}},
		{args: []string{"remediate", "--all-noncompliant", "--compliance.max-rotation-period-days=3000"}, want: []string{"--compliance.max-rotation-period-days"}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(append(tt.env, tt.args...), " "), func(t *testing.T) {
			aws := startAWSEndpoint(t)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, binary, append([]string{"--web.listen-address=" + harness.FreeAddr(t)}, tt.args...)...)
			cmd.Env = testEnv(aws.url, tt.env...)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			_ = cmd.Run()
			if ctx.Err() != nil {
				t.Fatalf("still running 20s later:\n%s%s", stdout.String(), stderr.String())
			}
			if code := cmd.ProcessState.ExitCode(); code != 2 {
				t.Errorf("exit code %d, want 2", code)
			}
			for _, w := range tt.want {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("the message does not name %s:\n%s", w, stderr.String())
				}
			}
			if n := aws.connections.Load(); n != 0 {
				t.Errorf("%d connections reached the AWS endpoint", n)
			}
		})
	}
}

// TestServeErrorExitCode: serve exits 2 on an error after start-up too.
func TestServeErrorExitCode(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, errOut, code := runCLI(t, "http://127.0.0.1:1", "--web.listen-address="+l.Addr().String())
	if code != 2 || !strings.Contains(errOut, "address already in use") {
		t.Errorf("serving on a port in use: exit %d, want 2:\n%s", code, errOut)
	}
}

// runCLI runs a sub-command against endpoint and returns its output and exit code.
func runCLI(t *testing.T, endpoint string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = testEnv(endpoint)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code = cmd.ProcessState.ExitCode()
	if err != nil && code < 0 {
		t.Fatalf("%v: %v", args, err)
	}
	return out.String(), errOut.String(), code
}

func TestAuditCommand(t *testing.T) {
	srv, ids := kmstest.StartMixedT(t, "eu-west-1")
	out, errOut, code := runCLI(t, srv.URL, "audit")
	if code != 1 {
		t.Errorf("audit with noncompliant keys: exit %d, want 1\n%s%s", code, out, errOut)
	}
	for _, want := range []string{ids["legacy-billing"], "alias/legacy-billing", "noncompliant", "rotation_disabled", "2 compliant, 2 noncompliant, 1 exempt, 6 not applicable, 0 unknown"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	out, _, code = runCLI(t, srv.URL, "audit", "--output=json")
	var report struct {
		Keys []struct {
			KeyID, Status, Reason string
			Aliases               []string
		}
		Counts map[string]int
	}
	if err := json.Unmarshal([]byte(out), &report); err != nil || code != 1 {
		t.Fatalf("json audit: exit %d, %v\n%s", code, err, out)
	}
	if len(report.Keys) != len(kmstest.MixedInventory) || report.Counts["noncompliant"] != 2 {
		t.Errorf("json audit: %d keys, counts %v", len(report.Keys), report.Counts)
	}
	// KMS unreachable: an error, not a clean bill of health.
	if _, _, code := runCLI(t, "http://127.0.0.1:1", "audit", "--aws.max-attempts=1"); code != 2 {
		t.Errorf("audit against a dead endpoint: exit %d, want 2", code)
	}
}

func TestRemediateCommand(t *testing.T) {
	srv, ids := kmstest.StartMixedT(t, "eu-west-1")
	if _, errOut, code := runCLI(t, srv.URL, "remediate"); code == 0 || !strings.Contains(errOut, "--key-id") {
		t.Errorf("remediate without a key: exit %d: %s", code, errOut)
	}
	out, _, code := runCLI(t, srv.URL, "remediate", "--key-id", ids["legacy-billing"], "--dry-run")
	if code != 0 || !strings.Contains(out, "dry_run") || !strings.Contains(out, "1 of 1 keys would be remediated (dry run: nothing was changed)") {
		t.Errorf("dry run: exit %d\n%s", code, out)
	}
	out, _, code = runCLI(t, srv.URL, "remediate", "--key-id", ids["signing-rsa"])
	if code != 1 || !strings.Contains(out, "not applicable: asymmetric") {
		t.Errorf("asymmetric key: exit %d, want 1\n%s", code, out)
	}
	out, _, code = runCLI(t, srv.URL, "remediate", "--all-noncompliant")
	if code != 0 || !strings.Contains(out, "2 of 2 keys remediated") || !strings.Contains(out, "verified: rotation enabled") {
		t.Errorf("--all-noncompliant: exit %d\n%s", code, out)
	}
	if out, _, code := runCLI(t, srv.URL, "audit"); code != 0 {
		t.Errorf("audit after remediation: exit %d, want 0\n%s", code, out)
	}
}

// The token of the remediation API in the tests.
const token = "s3cret-token"

// startWithRemediation starts the exporter with the remediation API enabled.
func startWithRemediation(t *testing.T, endpoint string, args ...string) *process {
	t.Helper()
	return start(t, endpoint, append([]string{"--remediation.enabled", "--remediation.token-file=" + tokenFile(t)}, args...)...)
}

// tokenFile writes the remediation token to a file of the test's.
func tokenFile(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(path, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// postRemediation asks the API to remediate a key in eu-west-1 and returns the
// response's status and body.
func postRemediation(addr, keyID string) (int, string, error) {
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/api/v1/remediate",
		strings.NewReader(`{"region":"eu-west-1","key_id":"`+keyID+`"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

func TestServeWithRemediation(t *testing.T) {
	srv, ids := kmstest.StartMixedT(t, "eu-west-1")
	p := startWithRemediation(t, srv.URL)
	base := "http://" + p.addr
	p.waitReady(t)
	if code, body, err := postRemediation(p.addr, ids["legacy-billing"]); err != nil || code != 200 || !strings.Contains(body, `"outcome":"enabled"`) {
		t.Fatalf("remediate: %d %s %v", code, body, err)
	}
	_, metrics := get(t, base+"/metrics")
	for _, want := range []string{complianceLine(ids["legacy-billing"], "compliant", "rotation_enabled"),
		`kms_remediations_total{result="enabled"} 1`, `kms_remediations_total{result="unauthorized"} 0`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(p.logs.String(), token) {
		t.Error("the token appears in the logs")
	}
}

func TestRemediationOffByDefault(t *testing.T) {
	srv, ids := kmstest.StartMixedT(t, "eu-west-1")
	p := start(t, srv.URL)
	p.waitReady(t)
	resp, err := http.Post("http://"+p.addr+"/api/v1/remediate", "application/json",
		strings.NewReader(`{"region":"eu-west-1","key_id":"`+ids["legacy-billing"]+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 403 || !strings.Contains(string(body), "not enabled") {
		t.Errorf("remediation without --remediation.enabled: %d %s", resp.StatusCode, body)
	}
	if rotating, err := srv.Client().GetKeyRotationStatus(context.Background(), &kms.GetKeyRotationStatusInput{KeyId: aws.String(ids["legacy-billing"])}); err != nil || rotating.KeyRotationEnabled {
		t.Errorf("the key changed: %v %v", rotating, err)
	}
}

// TestGracefulShutdownDuringRefresh sends SIGTERM while a refresh waits on a
// KMS that does not answer: the exporter stops promptly and cleanly.
func TestGracefulShutdownDuringRefresh(t *testing.T) {
	srv, _ := kmstest.StartMixedT(t, "eu-west-1")
	proxy := kmstest.NewProxy(t, srv.URL)
	proxy.AddFault(&kmstest.Fault{Op: "DescribeKey", Delay: time.Minute})
	p := start(t, proxy.URL, "--aws.timeout=1m")
	harness.Poll(t, 20*time.Second, func() string {
		if proxy.Calls("DescribeKey") == 0 {
			return "the refresh has not reached DescribeKey"
		}
		return ""
	})
	if code, _ := get(t, "http://"+p.addr+"/-/ready"); code != http.StatusServiceUnavailable {
		t.Errorf("ready while the first refresh hangs: %d", code)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.waitExit(t, 10*time.Second); code != 0 || !strings.Contains(p.logs.String(), "msg=stopped") {
		t.Errorf("exit code %d after SIGTERM, want 0 and a clean stop:\n%s", code, p.logs)
	}
}

// remediateInFlight starts the exporter with remediation against a KMS whose
// EnableKeyRotation answers after delay, sends a remediation request and
// returns once KMS has it; the response comes on the channel.
func remediateInFlight(t *testing.T, delay time.Duration, args ...string) (*process, <-chan string) {
	t.Helper()
	srv, ids := kmstest.StartMixedT(t, "eu-west-1")
	proxy := kmstest.NewProxy(t, srv.URL)
	proxy.AddFault(&kmstest.Fault{Op: "EnableKeyRotation", Delay: delay})
	p := startWithRemediation(t, proxy.URL, args...)
	p.waitReady(t)
	response := make(chan string, 1)
	go func() {
		code, body, err := postRemediation(p.addr, ids["legacy-billing"])
		response <- fmt.Sprintf("%d %s %v", code, body, err)
	}()
	harness.Poll(t, 20*time.Second, func() string {
		if proxy.Calls("EnableKeyRotation") == 0 {
			return "the remediation has not reached EnableKeyRotation"
		}
		return ""
	})
	return p, response
}

// TestShutdownWaitsForRequestsInFlight: on SIGTERM a request in flight still
// gets its answer, then the exporter stops cleanly.
func TestShutdownWaitsForRequestsInFlight(t *testing.T) {
	p, response := remediateInFlight(t, 3*time.Second)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-response:
		if !strings.HasPrefix(r, "200 ") || !strings.Contains(r, `"outcome":"enabled"`) {
			t.Errorf("the request in flight at SIGTERM got %s, want 200 and enabled", r)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no response 30s after SIGTERM")
	}
	if code := p.waitExit(t, 10*time.Second); code != 0 || !strings.Contains(p.logs.String(), "msg=stopped") {
		t.Errorf("exit code %d, want 0 and a clean stop:\n%s", code, p.logs)
	}
}

// TestShutdownTimeout: the wait for requests in flight ends after
// --web.shutdown-timeout, with exit code 2 and a message naming the flag.
func TestShutdownTimeout(t *testing.T) {
	p, _ := remediateInFlight(t, time.Minute, "--web.shutdown-timeout=1s", "--aws.timeout=2m")
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.waitExit(t, 15*time.Second); code != 2 || !strings.Contains(p.logs.String(), "--web.shutdown-timeout") {
		t.Errorf("exit code %d, want 2 and a message naming --web.shutdown-timeout:\n%s", code, p.logs)
	}
}

// TestSecondSignal: while the exporter waits for the requests in flight, a
// second SIGTERM ends it at once.
func TestSecondSignal(t *testing.T) {
	p, _ := remediateInFlight(t, time.Minute)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	harness.Poll(t, 10*time.Second, func() string {
		if !strings.Contains(p.logs.String(), "waiting for the requests in flight") {
			return "the exporter does not wait for the request in flight"
		}
		return ""
	})
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.waitExit(t, 5*time.Second); code != -1 {
		t.Errorf("exit code %d after a second SIGTERM, want the signal's end (-1)", code)
	}
}

// TestReadmeDocumentsEveryFlagAndMetric: every flag the binary's --help
// lists has a row in the README's flags table, and every metric the
// exporter serves (its own and the inventory's) a row in the metrics table.
func TestReadmeDocumentsEveryFlagAndMetric(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	section := func(title string) string {
		s := string(readme)
		i := strings.Index(s, "\n## "+title+"\n")
		if i < 0 {
			t.Fatalf("README has no section %q", title)
		}
		s = s[i+len(title)+5:]
		if j := strings.Index(s, "\n## "); j >= 0 {
			s = s[:j]
		}
		return s
	}
	out, _ := exec.Command(binary, "--help").CombinedOutput()
	flags := regexp.MustCompile(`(?m)^\s+(?:-\w, )?--(?:\[no-\])?([a-z0-9-]+(?:\.[a-z0-9-]+)*)(?:=|\s|$)`).FindAllStringSubmatch(string(out), -1)
	if len(flags) < 20 {
		t.Fatalf("--help lists %d flags:\n%s", len(flags), out)
	}
	table := section("Flags")
	for _, f := range flags {
		if f[1] == "help" || f[1] == "help-long" || f[1] == "version" {
			continue
		}
		if !strings.Contains(table, "\n| `--"+f[1]+"`") && !strings.Contains(table, "\n| `--[no-]"+f[1]+"`") {
			t.Errorf("the README's flags table has no row for --%s", f[1])
		}
	}

	srv, _ := kmstest.StartMixedT(t, "eu-west-1")
	bus := eventstest.NewBus(t, "eu-west-1")
	p := launch(t, []string{"--remediation.enabled", "--remediation.token-file=" + tokenFile(t), "--events.sqs-queue-url=" + bus.QueueURL},
		testEnv(srv.URL, "AWS_ENDPOINT_URL_SQS="+bus.Moto.URL))
	p.waitReady(t)
	_, body := get(t, "http://"+p.addr+"/metrics")
	metrics := section("Metrics")
	for _, name := range parseExposition(t, body).names() {
		if strings.HasPrefix(name, "go_") || strings.HasPrefix(name, "process_") || strings.HasPrefix(name, "promhttp_") {
			continue
		}
		base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_count"), "_sum")
		if !strings.Contains(metrics, "`"+name+"`") && !strings.Contains(metrics, "`"+base+"`") {
			t.Errorf("the README's metrics table has no row for %s", name)
		}
	}
}
