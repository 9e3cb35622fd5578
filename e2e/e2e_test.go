// Package e2e runs the whole monitoring stack on loopback: local-kms (behind
// the AWS-faithful proxy) with a mixed inventory, kms_exporter with
// remediation on, the real Prometheus (Debian's) evaluating the shipped alert
// rules with shortened for:, and the real Alertmanager (Debian's) whose
// webhook calls the exporter. `make e2e` runs it; `make test` too.
package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/kms-exporter/kms_exporter/internal/eventstest"
	"github.com/kms-exporter/kms_exporter/internal/harness"
	"github.com/kms-exporter/kms_exporter/internal/kmstest"
)

const region = "eu-west-1"

// start runs a program until the test ends; its output is shown if the test fails.
func start(t *testing.T, name string, env []string, path string, args ...string) {
	t.Helper()
	cmd := exec.Command(path, args...)
	cmd.Env = append(os.Environ(), env...)
	logFile, err := os.Create(filepath.Join(t.TempDir(), name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			out, _ := os.ReadFile(logFile.Name())
			if len(out) > 6000 {
				out = out[len(out)-6000:]
			}
			t.Logf("%s log (tail):\n%s", name, out)
		}
		logFile.Close()
	})
}

func getJSON(url string, v any) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return fmt.Errorf("%s: %d %s", url, resp.StatusCode, body)
	}
	return json.Unmarshal(body, v)
}

type promAlert struct {
	Labels      map[string]string
	Annotations map[string]string
	State       string
}

// firing lists the firing alerts, or nil when Prometheus does not answer (yet).
func firing(prom string) []promAlert {
	var r struct{ Data struct{ Alerts []promAlert } }
	if err := getJSON(prom+"/api/v1/alerts", &r); err != nil {
		return nil
	}
	out := []promAlert{}
	for _, a := range r.Data.Alerts {
		if a.State == "firing" {
			out = append(out, a)
		}
	}
	return out
}

func describe(alerts []promAlert) string {
	var s []string
	for _, a := range alerts {
		s = append(s, a.Labels["alertname"]+"/"+a.Labels["key_id"])
	}
	sort.Strings(s)
	return strings.Join(s, " ")
}

var forClause = regexp.MustCompile(`(?m)^(\s+)for: \S+$`)

func TestStack(t *testing.T) {
	if testing.Short() {
		t.Skip("runs Prometheus, Alertmanager, local-kms and the exporter")
	}
	prometheusBin, alertmanagerBin := harness.Tool(t, "prometheus"), harness.Tool(t, "prometheus-alertmanager")
	root := kmstest.RepoRoot()
	dir := t.TempDir()

	// KMS: the mixed inventory, a key rotating every two years, one key
	// whose status cannot be read.
	srv, ids := kmstest.StartMixedT(t, region)
	proxy := kmstest.NewProxy(t, srv.URL)
	ctx := context.Background()
	c := kmstest.Client(proxy.URL, region)
	slow, err := c.CreateKey(ctx, &kms.CreateKeyInput{})
	if err != nil {
		t.Fatal(err)
	}
	ids["legacy-archive"] = aws.ToString(slow.KeyMetadata.KeyId)
	// A rotation in the history of a key, so that every panel of the
	// rotation evidence has data.
	if _, err := c.RotateKeyOnDemand(ctx, &kms.RotateKeyOnDemandInput{KeyId: aws.String(ids["payments"])}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.EnableKeyRotation(ctx, &kms.EnableKeyRotationInput{KeyId: slow.KeyMetadata.KeyId, RotationPeriodInDays: aws.Int32(730)}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateAlias(ctx, &kms.CreateAliasInput{AliasName: aws.String("alias/legacy-archive"), TargetKeyId: slow.KeyMetadata.KeyId}); err != nil {
		t.Fatal(err)
	}
	unreadable, err := c.CreateKey(ctx, &kms.CreateKeyInput{})
	if err != nil {
		t.Fatal(err)
	}
	ids["unreadable"] = aws.ToString(unreadable.KeyMetadata.KeyId)
	unreadableFault := &kmstest.Fault{Op: "GetKeyRotationStatus", KeyID: ids["unreadable"], Code: "AccessDeniedException"}
	proxy.AddFault(unreadableFault)

	// The exporter, remediation on for alias/legacy* only: legacy-billing and
	// legacy-archive get fixed, old-exemption stays noncompliant.
	exporter := filepath.Join(dir, "kms_exporter")
	if out, err := exec.Command("go", "build", "-o", exporter, root).CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	token := filepath.Join(dir, "token")
	if err := os.WriteFile(token, []byte("e2e-token-5f1c\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	exporterAddr, promAddr, amAddr := harness.FreeAddr(t), harness.FreeAddr(t), harness.FreeAddr(t)
	// Events on, from moto's EventBridge and SQS, as a deployment with
	// deploy/events has them.
	bus := eventstest.NewBus(t, region)
	start(t, "kms_exporter", []string{"AWS_ENDPOINT_URL_KMS=" + proxy.URL, "AWS_ENDPOINT_URL_SQS=" + bus.Moto.URL, "AWS_REGION=" + region, "AWS_ACCESS_KEY_ID=x",
		"AWS_SECRET_ACCESS_KEY=x", "AWS_EC2_METADATA_DISABLED=true", "AWS_CONFIG_FILE=/dev/null", "AWS_SHARED_CREDENTIALS_FILE=/dev/null"},
		exporter, "--web.listen-address="+exporterAddr, "--aws.region="+region, "--refresh.interval=2s", "--refresh.max-stale-age=10m",
		"--events.sqs-queue-url="+bus.QueueURL,
		"--remediation.enabled", "--remediation.token-file="+token, "--remediation.allow-alias-prefix=alias/legacy",
		"--remediation.requests-per-second=50")

	// Alertmanager: the noncompliance alerts go to the exporter's webhook.
	amConfig := fmt.Sprintf(`route:
  receiver: "null"
  group_by: [alertname, account_id, region, key_id]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1m
  routes:
    - matchers: ['alertname=~"KMSKeyRotationNoncompliant|KMSKeyRotationPeriodAbovePolicy"']
      receiver: kms-remediation
receivers:
  - name: "null"
  - name: kms-remediation
    webhook_configs:
      - url: http://%s/api/v1/alertmanager
        send_resolved: false
        http_config:
          authorization:
            type: Bearer
            credentials_file: %s
`, exporterAddr, token)
	writeFile(t, filepath.Join(dir, "alertmanager.yml"), amConfig)
	start(t, "alertmanager", nil, alertmanagerBin, "--config.file="+filepath.Join(dir, "alertmanager.yml"),
		"--storage.path="+filepath.Join(dir, "am-data"), "--web.listen-address="+amAddr, "--cluster.listen-address=")

	// Prometheus: the shipped rules, for: shortened to 2s.
	rules, err := os.ReadFile(filepath.Join(root, "deploy/prometheus/kms-rotation.rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "rules.yml"), forClause.ReplaceAllString(string(rules), "${1}for: 2s"))
	writeFile(t, filepath.Join(dir, "prometheus.yml"), fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [%s]
alerting:
  alertmanagers:
    - static_configs:
        - targets: ["%s"]
scrape_configs:
  - job_name: kms-exporter
    static_configs:
      - targets: ["%s"]
`, filepath.Join(dir, "rules.yml"), amAddr, exporterAddr))
	start(t, "prometheus", nil, prometheusBin, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "prom-data"), "--web.listen-address="+promAddr)
	prom := "http://" + promAddr

	// The noncompliant keys alert; Alertmanager calls the exporter; the keys
	// it may fix become compliant in KMS and their alerts resolve.
	fixed := []string{ids["legacy-billing"], ids["legacy-archive"]}
	harness.Poll(t, 90*time.Second, func() string {
		for _, id := range fixed {
			st, err := srv.Client().GetKeyRotationStatus(ctx, &kms.GetKeyRotationStatusInput{KeyId: aws.String(id)})
			if err != nil || !st.KeyRotationEnabled {
				return fmt.Sprintf("key %s not remediated yet (firing: %s)", id, describe(firing(prom)))
			}
		}
		if p := proxy.Calls("EnableKeyRotation"); p < 2 {
			return "EnableKeyRotation not called through the proxy"
		}
		return ""
	})
	// The key pending deletion (retired, a customer key) alerts with its date.
	want := "KMSKeyRotationNoncompliant/" + ids["old-exemption"] + " KMSKeyRotationStatusUnknown/" + ids["unreadable"] +
		" KMSKeyPendingDeletion/" + ids["retired"]
	wantSorted := strings.Fields(want)
	sort.Strings(wantSorted)
	harness.Poll(t, 60*time.Second, func() string {
		if got := describe(firing(prom)); got != strings.Join(wantSorted, " ") {
			return fmt.Sprintf("firing alerts %q, want %q (nothing for compliant, exempt or not-applicable keys)", got, want)
		}
		return ""
	})

	// The owner of the key pending deletion learns when it goes: the date
	// KMS reports, in the alert's words.
	retired, err := srv.Client().DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(ids["retired"])})
	if err != nil || retired.KeyMetadata.DeletionDate == nil {
		t.Fatalf("DescribeKey of the key pending deletion: %v, %+v", err, retired)
	}
	deletion := retired.KeyMetadata.DeletionDate.UTC().Format("2006-01-02 15:04:05")
	for _, a := range firing(prom) {
		if a.Labels["alertname"] == "KMSKeyPendingDeletion" && !strings.Contains(a.Annotations["description"], "scheduled for deletion on "+deletion) {
			t.Errorf("KMSKeyPendingDeletion says %q, want the deletion date %s", a.Annotations["description"], deletion)
		}
	}

	// The remediations went through the webhook, were verified and counted.
	var q struct {
		Data struct {
			Result []struct {
				Metric map[string]string
				Value  []any
			}
		}
	}
	if err := getJSON(prom+"/api/v1/query?query="+url.QueryEscape(`kms_remediations_total{result="enabled"}`), &q); err != nil {
		t.Fatal(err)
	}
	if len(q.Data.Result) != 1 || q.Data.Result[0].Value[1] == "0" {
		t.Errorf("kms_remediations_total{result=\"enabled\"}: %+v", q.Data.Result)
	}

	// Every dashboard query returns data from this Prometheus, but those of
	// the panels that need what this KMS does not give (panelNeeds): they
	// must still run.
	served := historyServed(ctx, c, ids)
	queries := harness.DashboardQueries(t, filepath.Join(root, "grafana/kms-rotation.json"), "1m", "10m")
	panels := map[string]bool{}
	for where := range queries {
		panels[panelTitle(where)] = true
	}
	for title := range panelNeeds {
		if !panels[title] {
			t.Errorf("panelNeeds names %q, which is no panel of the dashboard", title)
		}
	}
	for where, expr := range queries {
		var r struct {
			Status string
			Data   struct{ Result []json.RawMessage }
		}
		if err := getJSON(prom+"/api/v1/query?query="+url.QueryEscape(expr), &r); err != nil {
			t.Errorf("%s: %v", where, err)
			continue
		}
		if len(r.Data.Result) > 0 {
			continue
		}
		if need := panelNeeds[panelTitle(where)]; need != "" && !served[need] {
			t.Logf("%s returns no data: it needs %s, which this KMS endpoint does not give (TestDashboardOnGoldenExposition checks it)", where, need)
			continue
		}
		t.Errorf("%s returns no data: %s", where, expr)
	}

	// An outage after listing: KMS lists the keys, then fails every per-key
	// call. No verdict changes, so the noncompliance alert stays firing, and
	// the refresh failure is alerted. After recovery all is as before.
	for _, op := range []string{"DescribeKey", "GetKeyRotationStatus", "ListResourceTags"} {
		proxy.AddFault(&kmstest.Fault{Op: op, Code: "KMSInternalException", Status: 500})
	}
	outage := []string{"KMSExporterRefreshFailing/"}
	outage = append(outage, wantSorted...)
	sort.Strings(outage)
	stillFiring := func() string {
		alerts := firing(prom)
		if alerts == nil {
			return "Prometheus did not answer"
		}
		got := describe(alerts)
		for _, a := range wantSorted {
			if !strings.Contains(" "+got+" ", " "+a+" ") {
				t.Errorf("during the outage %s resolved (firing: %s)", a, got)
			}
		}
		return got
	}
	harness.Poll(t, 60*time.Second, func() string {
		if got := stillFiring(); got != strings.Join(outage, " ") {
			return fmt.Sprintf("during the outage: firing %q, want %q", got, strings.Join(outage, " "))
		}
		return ""
	})
	// Several more refreshes and evaluations into the outage: still firing.
	for deadline := time.Now().Add(8 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		stillFiring()
	}
	proxy.ClearFaults()
	proxy.AddFault(unreadableFault)
	harness.Poll(t, 60*time.Second, func() string {
		if got := describe(firing(prom)); got != strings.Join(wantSorted, " ") {
			return fmt.Sprintf("after recovery: firing %q, want %q", got, strings.Join(wantSorted, " "))
		}
		return ""
	})
}

// panelNeeds are the panels of the rotation evidence and what they need
// from KMS to show data: the rotation history (ListKeyRotations), or a key
// whose history lists a rotation. The test proxy serves both (local-kms
// alone answers ListKeyRotations with HTTP 501), and the test rotates a key
// on demand, so these panels must show data here; were the endpoint to
// serve neither, they would only be logged (the dashboard's tests check
// them on the golden exposition, TestDashboardOnGoldenExposition).
var panelNeeds = map[string]string{
	"Oldest key material":               needHistory,
	"Key material age":                  needHistory,
	"Rotations by type":                 needHistory,
	"Keys with the oldest key material": needHistory,
	"On-demand rotations left":          needHistory,
	"Last rotations":                    needRotation,
}

const (
	needHistory  = "the rotation history (ListKeyRotations)"
	needRotation = "a key whose rotation history lists a rotation"
)

// panelTitle is the panel of a query of harness.DashboardQueries
// (`panel "TITLE", target N`), "" for a variable's.
func panelTitle(where string) string {
	rest, ok := strings.CutPrefix(where, "panel ")
	if !ok {
		return ""
	}
	quoted, err := strconv.QuotedPrefix(rest)
	if err != nil {
		return ""
	}
	title, _ := strconv.Unquote(quoted)
	return title
}

// historyServed asks the KMS endpoint, as the exporter would, for the
// rotation history of the sample keys, and tells what it gives.
func historyServed(ctx context.Context, c *kms.Client, ids map[string]string) map[string]bool {
	served := map[string]bool{}
	for _, id := range ids {
		out, err := c.ListKeyRotations(ctx, &kms.ListKeyRotationsInput{KeyId: aws.String(id)})
		if err != nil {
			continue
		}
		served[needHistory] = true
		for _, r := range out.Rotations {
			if r.RotationDate != nil {
				served[needRotation] = true
			}
		}
	}
	return served
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
