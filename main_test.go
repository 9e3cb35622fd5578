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
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/kms-exporter/kms_exporter/internal/harness"
	"github.com/kms-exporter/kms_exporter/internal/kmstest"
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

// syncBuffer is a bytes.Buffer that a running process may write while the test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startExporter runs the binary as the README and the issue do, against endpoint.
func startExporter(t *testing.T, endpoint string, args ...string) (addr string, logs *syncBuffer) {
	t.Helper()
	addr = harness.FreeAddr(t)
	cmd := exec.Command(binary, append([]string{"--web.listen-address=" + addr}, args...)...)
	cmd.Env = append(os.Environ(), "AWS_ENDPOINT_URL_KMS="+endpoint, "AWS_REGION=eu-west-1",
		"AWS_ACCESS_KEY_ID=x", "AWS_SECRET_ACCESS_KEY=x", "AWS_EC2_METADATA_DISABLED=true", "AWS_CONFIG_FILE=/dev/null",
		"AWS_SHARED_CREDENTIALS_FILE=/dev/null")
	logs = &syncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			t.Errorf("exporter did not stop within 15s of SIGINT")
		}
		if t.Failed() {
			t.Logf("exporter log:\n%s", logs)
		}
	})
	return addr, logs
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
	addr, _ := startExporter(t, srv.URL, "--aws.region=eu-west-1", "--refresh.interval=3s")
	base := "http://" + addr

	harness.Poll(t, 30*time.Second, func() string {
		if code, body := get(t, base+"/-/ready"); code != 200 {
			return fmt.Sprintf("/-/ready: %d %s", code, body)
		}
		return ""
	})
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
	if promtool, err := exec.LookPath("promtool"); err == nil {
		cmd := exec.Command(promtool, "check", "metrics")
		cmd.Stdin = strings.NewReader(metrics)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool check metrics: %v\n%s", err, out)
		}
	} else if os.Getenv("KMS_EXPORTER_REQUIRE_TOOLS") != "" {
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
	addr, _ := startExporter(t, "http://"+l.Addr().String(), "--aws.timeout=1m", "--aws.max-attempts=1")
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

func TestBadFlagsStopStartup(t *testing.T) {
	tests := []struct {
		args []string
		flag string
	}{
		{[]string{"--aws.region=moon-base-1x"}, "--aws.region"},
		{[]string{"--aws.region=all,eu-west-1"}, "--aws.region"},
		{[]string{"--aws.assume-role=arn:aws:s3:::bucket"}, "--aws.assume-role"},
		{[]string{"--aws.assume-role=arn:aws:iam::123456789012:role/audit,externalid"}, "--aws.assume-role"},
		{[]string{"--no-aws.own-account"}, "--aws.assume-role"},
		{[]string{"--refresh.interval=0s"}, "--refresh.interval"},
		{[]string{"--refresh.interval=often"}, "refresh.interval"},
		{[]string{"--compliance.max-rotation-period-days=30"}, "--compliance.max-rotation-period-days"},
		{[]string{"--aws.max-concurrency=0"}, "--aws.max-concurrency"},
		{[]string{"--aws.requests-per-second=-1"}, "--aws.requests-per-second"},
		{[]string{"--log.level=loud"}, "log.level"},
		{[]string{"--no-such-flag"}, "--no-such-flag"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			cmd := exec.Command(binary, append([]string{"--web.listen-address=" + harness.FreeAddr(t)}, tt.args...)...)
			cmd.Env = append(os.Environ(), "AWS_REGION=eu-west-1", "AWS_EC2_METADATA_DISABLED=true")
			done := make(chan struct{})
			var out []byte
			var err error
			go func() { out, err = cmd.CombinedOutput(); close(done) }()
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				_ = cmd.Process.Kill()
				t.Fatal("still running 20s after a bad flag")
			}
			if err == nil {
				t.Fatalf("exit status 0 with %v", tt.args)
			}
			if !strings.Contains(string(out), tt.flag) {
				t.Errorf("message does not name %s: %s", tt.flag, out)
			}
		})
	}
}

func TestNoRegionAnywhere(t *testing.T) {
	cmd := exec.Command(binary, "--web.listen-address="+harness.FreeAddr(t))
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "AWS_EC2_METADATA_DISABLED=true"}
	out, err := cmd.CombinedOutput()
	if err == nil || !regexp.MustCompile(`--aws.region: no region`).Match(out) {
		t.Errorf("want a start-up error naming --aws.region, got %v: %s", err, out)
	}
}

// runCLI runs a sub-command against endpoint and returns its output and exit code.
func runCLI(t *testing.T, endpoint string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), "AWS_ENDPOINT_URL_KMS="+endpoint, "AWS_REGION=eu-west-1",
		"AWS_ACCESS_KEY_ID=x", "AWS_SECRET_ACCESS_KEY=x", "AWS_EC2_METADATA_DISABLED=true",
		"AWS_CONFIG_FILE=/dev/null", "AWS_SHARED_CREDENTIALS_FILE=/dev/null")
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

func TestServeWithRemediation(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"--remediation.enabled"}, {"--remediation.enabled", "--remediation.token-file=" + empty},
		{"--remediation.enabled", "--remediation.token-file=" + filepath.Join(dir, "missing")}} {
		if _, errOut, code := runCLI(t, "http://127.0.0.1:1", append([]string{"--web.listen-address=" + harness.FreeAddr(t)}, args...)...); code == 0 ||
			!strings.Contains(errOut, "--remediation.token-file") {
			t.Errorf("%v: exit %d: %s", args, code, errOut)
		}
	}

	srv, ids := kmstest.StartMixedT(t, "eu-west-1")
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("s3cret-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	addr, logs := startExporter(t, srv.URL, "--remediation.enabled", "--remediation.token-file="+tokenFile)
	base := "http://" + addr
	harness.Poll(t, 30*time.Second, func() string {
		if code, _ := get(t, base+"/-/ready"); code != 200 {
			return "not ready"
		}
		return ""
	})
	req, _ := http.NewRequest(http.MethodPost, base+"/api/v1/remediate",
		strings.NewReader(`{"region":"eu-west-1","key_id":"`+ids["legacy-billing"]+`"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer s3cret-token")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"outcome":"enabled"`) {
		t.Fatalf("remediate: %d %s", resp.StatusCode, body)
	}
	_, metrics := get(t, base+"/metrics")
	for _, want := range []string{complianceLine(ids["legacy-billing"], "compliant", "rotation_enabled"),
		`kms_remediations_total{result="enabled"} 1`, `kms_remediations_total{result="unauthorized"} 0`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(logs.String(), "s3cret-token") {
		t.Error("the token appears in the logs")
	}
}

func TestRemediationOffByDefault(t *testing.T) {
	srv, ids := kmstest.StartMixedT(t, "eu-west-1")
	addr, _ := startExporter(t, srv.URL)
	harness.Poll(t, 30*time.Second, func() string {
		if code, _ := get(t, "http://"+addr+"/-/ready"); code != 200 {
			return "not ready"
		}
		return ""
	})
	resp, err := http.Post("http://"+addr+"/api/v1/remediate", "application/json",
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
	addr := harness.FreeAddr(t)
	cmd := exec.Command(binary, "--web.listen-address="+addr, "--aws.timeout=1m")
	cmd.Env = append(os.Environ(), "AWS_ENDPOINT_URL_KMS="+proxy.URL, "AWS_REGION=eu-west-1",
		"AWS_ACCESS_KEY_ID=x", "AWS_SECRET_ACCESS_KEY=x", "AWS_EC2_METADATA_DISABLED=true")
	logs := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill() }()
	harness.Poll(t, 20*time.Second, func() string {
		if proxy.Calls("DescribeKey") == 0 {
			return "the refresh has not reached DescribeKey"
		}
		return ""
	})
	if code, _ := get(t, "http://"+addr+"/-/ready"); code != http.StatusServiceUnavailable {
		t.Errorf("ready while the first refresh hangs: %d", code)
	}
	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v\n%s", err, logs)
		}
		if took := time.Since(start); !strings.Contains(logs.String(), "msg=stopped") {
			t.Errorf("no clean stop after %s:\n%s", took, logs)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("still running 10s after SIGTERM during a refresh:\n%s", logs)
	}
}
