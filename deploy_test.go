package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/kms-exporter/kms_exporter/events"
	"github.com/kms-exporter/kms_exporter/internal/harness"
	"github.com/kms-exporter/kms_exporter/internal/kmstest"
	"github.com/kms-exporter/kms_exporter/remediate"

	"github.com/kms-exporter/kms_exporter/awsclient"
)

type iamPolicy struct {
	Version   string
	Statement []struct {
		Effect    string
		Action    []string
		Resource  string
		Condition map[string]map[string]string
	}
}

func readPolicy(t *testing.T, path string) iamPolicy {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var p iamPolicy
	if err := json.Unmarshal(raw, &p); err != nil {
		t.Fatalf("%s is not a valid policy: %v", path, err)
	}
	if p.Version != "2012-10-17" {
		t.Errorf("%s: Version %q", path, p.Version)
	}
	return p
}

// TestRemediationPolicy: the remediation addition allows EnableKeyRotation
// only, with the period bounded by the default policy.
func TestRemediationPolicy(t *testing.T) {
	p := readPolicy(t, "deploy/iam/kms-exporter-remediation.json")
	if len(p.Statement) != 1 {
		t.Fatalf("%d statements", len(p.Statement))
	}
	s := p.Statement[0]
	if s.Effect != "Allow" || !slices.Equal(s.Action, []string{"kms:EnableKeyRotation"}) ||
		s.Condition["NumericLessThanEquals"]["kms:RotationPeriodInDays"] != "365" {
		t.Errorf("statement %+v", s)
	}
}

// TestReadOnlyPolicyMatchesCalls keeps the shipped IAM policy to exactly the
// calls the exporter makes: nothing missing, nothing more (least privilege).
func TestReadOnlyPolicyMatchesCalls(t *testing.T) {
	policy := readPolicy(t, "deploy/iam/kms-exporter-readonly.json")
	var got []string
	for _, s := range policy.Statement {
		if s.Effect != "Allow" {
			t.Errorf("unexpected effect %q", s.Effect)
		}
		got = append(got, s.Action...)
	}
	want := []string{"account:ListRegions", "organizations:ListAccounts"}
	for _, op := range awsclient.ReadOperations {
		want = append(want, "kms:"+op)
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("policy actions %v, want exactly %v", got, want)
	}
}

func run(t *testing.T, dir, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(harness.Tool(t, name), args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

func TestAlertRules(t *testing.T) {
	run(t, "deploy/prometheus", "promtool", "check", "rules", "kms-rotation.rules.yml")
	run(t, "deploy/prometheus", "promtool", "test", "rules", "tests/kms-rotation.test.yml")
}

func TestAlertmanagerConfig(t *testing.T) {
	run(t, ".", "amtool", "check-config", "deploy/alertmanager/alertmanager.yml")
}

// TestAlertmanagerRoutes: every alert of the rule file reaches its people in
// the example routing, and the remediation webhook gets exactly the alerts it
// acts on (remediate.DefaultAlertNames): it can only enable rotation, so an
// alert it cannot help (KMSKeyMaterialTooOld: rotation already on) must not
// be sent to it. The compose stack's routing too.
func TestAlertmanagerRoutes(t *testing.T) {
	amtool := harness.Tool(t, "amtool")
	var names []string
	for _, g := range readYAML(t, "deploy/prometheus/kms-rotation.rules.yml")[0]["groups"].([]any) {
		for _, r := range dig(g, "rules").([]any) {
			names = append(names, fmt.Sprint(dig(r, "alert")))
		}
	}
	if len(names) < 10 {
		t.Fatalf("only %d alerts in the rule file: %v", len(names), names)
	}
	routes := func(config, alert string) string {
		out, err := exec.Command(amtool, "config", "routes", "test", "--config.file="+config,
			"alertname="+alert, "account_id=111122223333", "region=eu-west-1", "key_id=k-1").Output()
		if err != nil {
			t.Fatalf("amtool config routes test %s %s: %v", config, alert, err)
		}
		return strings.TrimSpace(string(out))
	}
	for _, name := range names {
		remediable := slices.Contains(remediate.DefaultAlertNames, name)
		want := "security-team"
		switch {
		case remediable:
			want = "kms-remediation,security-team"
		case strings.HasPrefix(name, "KMSExporter"):
			want = "platform-oncall"
		}
		if got := routes("deploy/alertmanager/alertmanager.yml", name); got != want {
			t.Errorf("deploy/alertmanager/alertmanager.yml routes %s to %s, want %s", name, got, want)
		}
		want = "null"
		if remediable {
			want = "kms-remediation"
		}
		if got := routes("deploy/compose/alertmanager.yml", name); got != want {
			t.Errorf("deploy/compose/alertmanager.yml routes %s to %s, want %s", name, got, want)
		}
	}
}

func readYAML(t *testing.T, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var docs []map[string]any
	dec := yaml.NewDecoder(f)
	for {
		var doc map[string]any
		if err := dec.Decode(&doc); err == io.EOF {
			return docs
		} else if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		docs = append(docs, doc)
	}
}

// dig follows a path of map keys and list indexes.
func dig(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, _ := v.(map[string]any)
			v = m[k]
		case int:
			l, _ := v.([]any)
			if k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}

func TestPrometheusRuleMatchesRuleFile(t *testing.T) {
	plain := readYAML(t, "deploy/prometheus/kms-rotation.rules.yml")[0]
	crd := readYAML(t, "deploy/kubernetes/prometheusrule.yaml")[0]
	if crd["kind"] != "PrometheusRule" || crd["apiVersion"] != "monitoring.coreos.com/v1" {
		t.Errorf("kind %v, apiVersion %v", crd["kind"], crd["apiVersion"])
	}
	if !reflect.DeepEqual(dig(crd, "spec", "groups"), plain["groups"]) {
		t.Error("deploy/kubernetes/prometheusrule.yaml differs from deploy/prometheus/kms-rotation.rules.yml")
	}
}

func TestKubernetesManifests(t *testing.T) {
	kustomization := readYAML(t, "deploy/kubernetes/kustomization.yaml")[0]
	kinds := map[string]map[string]any{}
	for _, r := range kustomization["resources"].([]any) {
		for _, doc := range readYAML(t, "deploy/kubernetes/"+r.(string)) {
			kinds[doc["kind"].(string)] = doc
		}
	}
	for _, k := range []string{"ServiceAccount", "Deployment", "Service", "ServiceMonitor", "PrometheusRule"} {
		if kinds[k] == nil {
			t.Errorf("kustomization lacks a %s", k)
		}
	}
	if dig(kinds["ServiceAccount"], "metadata", "annotations", "eks.amazonaws.com/role-arn") == nil {
		t.Error("ServiceAccount without the IRSA annotation")
	}
	pod := dig(kinds["Deployment"], "spec", "template", "spec")
	c := dig(pod, "containers", 0)
	checks := map[string]bool{
		"runAsNonRoot":                     dig(pod, "securityContext", "runAsNonRoot") == true,
		"non-root user":                    dig(pod, "securityContext", "runAsUser") != 0 && dig(pod, "securityContext", "runAsUser") != nil,
		"readOnlyRootFilesystem":           dig(c, "securityContext", "readOnlyRootFilesystem") == true,
		"no privilege escalation":          dig(c, "securityContext", "allowPrivilegeEscalation") == false,
		"capabilities dropped":             dig(c, "securityContext", "capabilities", "drop", 0) == "ALL",
		"cpu request":                      dig(c, "resources", "requests", "cpu") != nil,
		"memory request":                   dig(c, "resources", "requests", "memory") != nil,
		"liveness on /-/healthy":           dig(c, "livenessProbe", "httpGet", "path") == "/-/healthy",
		"readiness on /-/ready":            dig(c, "readinessProbe", "httpGet", "path") == "/-/ready",
		"the default port":                 dig(c, "ports", 0, "containerPort") == 10863,
		"service account":                  dig(pod, "serviceAccountName") == dig(kinds["ServiceAccount"], "metadata", "name"),
		"service selects the pods":         reflect.DeepEqual(dig(kinds["Service"], "spec", "selector"), dig(kinds["Deployment"], "spec", "template", "metadata", "labels")),
		"service monitor scrapes the port": dig(kinds["ServiceMonitor"], "spec", "endpoints", 0, "port") == dig(kinds["Service"], "spec", "ports", 0, "name"),
		"job name the alerts expect":       dig(kinds["Service"], "metadata", "name") == "kms-exporter",
	}
	for what, ok := range checks {
		if !ok {
			t.Errorf("Kubernetes manifests: %s is missing or wrong", what)
		}
	}
}

func TestCrossAccountTrustPolicy(t *testing.T) {
	raw, err := os.ReadFile("deploy/iam/kms-exporter-audit-role-trust.json")
	if err != nil {
		t.Fatal(err)
	}
	var p struct {
		Statement []struct {
			Effect    string
			Principal struct{ AWS string }
			Action    string
			Condition map[string]map[string]string
		}
	}
	if err := json.Unmarshal(raw, &p); err != nil || len(p.Statement) != 1 {
		t.Fatalf("trust policy: %v", err)
	}
	s := p.Statement[0]
	if s.Effect != "Allow" || s.Action != "sts:AssumeRole" || !strings.HasPrefix(s.Principal.AWS, "arn:aws:iam::") ||
		s.Condition["StringEquals"]["sts:ExternalId"] == "" {
		t.Errorf("trust policy statement %+v", s)
	}
}

func TestComposeStack(t *testing.T) {
	const dir = "deploy/compose"
	run(t, ".", "docker-compose", "-f", dir+"/docker-compose.yml", "config", "-q")
	run(t, ".", "amtool", "check-config", dir+"/alertmanager.yml")
	compose := readYAML(t, dir+"/docker-compose.yml")[0]
	services, _ := compose["services"].(map[string]any)
	for _, s := range []string{"local-kms", "moto", "events-setup", "kms-exporter", "prometheus", "alertmanager", "grafana"} {
		if services[s] == nil {
			t.Errorf("compose stack lacks %s", s)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, fmt.Sprint(dig(services, "kms-exporter", "build", "context")), "Dockerfile")); err != nil {
		t.Errorf("the exporter is not built from this repository's Dockerfile: %v", err)
	}
	// Every file or folder mounted from the repository exists.
	for name, svc := range services {
		vols, _ := dig(svc, "volumes").([]any)
		for _, v := range vols {
			host := strings.Split(v.(string), ":")[0]
			if _, err := os.Stat(filepath.Join(dir, host)); err != nil {
				t.Errorf("%s mounts %s, which does not exist", name, host)
			}
		}
	}
	if _, err := os.Stat("grafana/kms-rotation.json"); err != nil {
		t.Error(err)
	}
	prom := readYAML(t, dir+"/prometheus.yml")[0]
	if dig(prom, "rule_files", 0) != "/etc/prometheus/rules/kms-rotation.rules.yml" ||
		dig(prom, "scrape_configs", 0, "job_name") != "kms-exporter" {
		t.Errorf("compose prometheus.yml: %v", prom)
	}
}

// TestComposeEvents runs the compose stack's events-setup.sh (with Debian's
// AWS CLI) on moto: a KMS event put on the bus lands in the queue the
// exporter of the stack is told to poll, and an unrelated one does not.
func TestComposeEvents(t *testing.T) {
	const dir = "deploy/compose"
	moto := kmstest.StartMoto(t)
	cmd := exec.Command("sh", filepath.Join(dir, "events-setup.sh"))
	cmd.Env = append(os.Environ(), "AWS_ENDPOINT_URL="+moto.URL, "AWS_DEFAULT_REGION=eu-west-1", "AWS_ACCESS_KEY_ID=x", "AWS_SECRET_ACCESS_KEY=x",
		"AWS_CONFIG_FILE=/dev/null", "AWS_SHARED_CREDENTIALS_FILE=/dev/null", "AWS_PAGER=",
		"PATH="+filepath.Dir(harness.AWSCLIPath(t))+":"+os.Getenv("PATH"), "PATTERN="+filepath.Join("deploy", "events", "terraform", "kms-event-pattern.json"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("events-setup.sh: %v\n%s", err, out)
	}
	var flag string
	for _, a := range dig(readYAML(t, dir+"/docker-compose.yml")[0], "services", "kms-exporter", "command").([]any) {
		if v, ok := strings.CutPrefix(a.(string), "--events.sqs-queue-url="); ok {
			flag = v
		}
	}
	q, err := events.ParseQueueURL(flag)
	if err != nil {
		t.Fatalf("the stack's --events.sqs-queue-url: %v", err)
	}
	for _, name := range []string{"DisableKeyRotation", "Encrypt"} {
		detail := fmt.Sprintf(`{"eventSource":"kms.amazonaws.com","eventName":%q,"awsRegion":"eu-west-1","recipientAccountId":"111122223333",`+
			`"requestParameters":{"keyId":"arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"}}`, name)
		entries, _ := json.Marshal([]map[string]string{{"Source": "aws.kms", "DetailType": events.DetailTypeAPICall, "Detail": detail}})
		harness.AWSCLI(t, moto.URL, "eu-west-1", "events", "put-events", "--entries", string(entries))
	}
	out := harness.AWSCLI(t, moto.URL, "eu-west-1", "sqs", "get-queue-attributes", "--queue-url", moto.URL+"/"+q.AccountID+"/"+q.Name,
		"--attribute-names", "ApproximateNumberOfMessages", "RedrivePolicy")
	var attrs struct{ Attributes map[string]string }
	if err := json.Unmarshal(out, &attrs); err != nil {
		t.Fatal(err)
	}
	if n := attrs.Attributes["ApproximateNumberOfMessages"]; n != "1" {
		t.Errorf("%s messages in the stack's queue, want the DisableKeyRotation event alone", n)
	}
	if !strings.Contains(attrs.Attributes["RedrivePolicy"], "kms-events-dlq") {
		t.Errorf("the stack's queue has no dead-letter queue: %q", attrs.Attributes["RedrivePolicy"])
	}
}

// TestComposeSeed audits the compose stack's local-kms seed.
func TestComposeSeed(t *testing.T) {
	srv := kmstest.StartT(t, kmstest.Options{Region: "eu-west-1", SeedPath: "deploy/compose/local-kms-seed.yaml"})
	out, _, code := runCLI(t, srv.URL, "audit")
	if code != 1 {
		t.Errorf("audit of the seed: exit %d, want 1 (one noncompliant key)\n%s", code, out)
	}
	for _, want := range []string{"alias/payments", "compliant", "alias/legacy-billing", "rotation_disabled", "external_origin", "hmac",
		"1 compliant, 1 noncompliant, 0 exempt, 2 not applicable, 0 unknown"} {
		if !strings.Contains(out, want) {
			t.Errorf("audit of the seed lacks %q:\n%s", want, out)
		}
	}
}

func TestShardedStatefulSet(t *testing.T) {
	docs := readYAML(t, "deploy/kubernetes/sharded/statefulset.yaml")
	if len(docs) != 2 || docs[0]["kind"] != "StatefulSet" || docs[1]["kind"] != "Service" || dig(docs[1], "spec", "clusterIP") != "None" {
		t.Fatalf("want a StatefulSet and a headless Service")
	}
	sts := docs[0]
	c := dig(sts, "spec", "template", "spec", "containers", 0)
	args := fmt.Sprint(dig(c, "args"))
	if want := fmt.Sprintf("--total-shards=%v", dig(sts, "spec", "replicas")); !strings.Contains(args, want) {
		t.Errorf("args %s lack %s (replicas and shards must match)", args, want)
	}
	if dig(c, "env", 0, "name") != "KMS_EXPORTER_SHARD" || dig(c, "env", 0, "valueFrom", "fieldRef", "fieldPath") != "metadata.name" {
		t.Errorf("the shard does not come from the pod name: %v", dig(c, "env"))
	}
	if dig(sts, "spec", "template", "metadata", "labels", "app.kubernetes.io/name") != "kms-exporter" {
		t.Error("pods are not selected by the ServiceMonitor's labels")
	}
}

// stringsIn collects the strings of a decoded YAML or JSON tree: the
// actions of a policy, what !Ref and !GetAtt name.
func stringsIn(v any) []string {
	switch v := v.(type) {
	case string:
		return []string{v}
	case []any:
		var out []string
		for _, e := range v {
			out = append(out, stringsIn(e)...)
		}
		return out
	case map[string]any:
		var out []string
		for _, e := range v {
			out = append(out, stringsIn(e)...)
		}
		return out
	}
	return nil
}

// unscopedActions are the only calls allowed on Resource "*": they act on no
// resource IAM can name.
var unscopedActions = []string{"kms:ListKeys", "kms:ListAliases", "organizations:ListAccounts", "account:ListRegions"}

// TestIAMPoliciesLeastPrivilege holds every shipped policy to the same
// rules: Allow only, named actions (no wildcard), and a resource wherever
// the action takes one.
func TestIAMPoliciesLeastPrivilege(t *testing.T) {
	files, err := filepath.Glob("deploy/iam/*.json")
	if err != nil || len(files) < 5 {
		t.Fatalf("deploy/iam: %v %v", files, err)
	}
	for _, path := range files {
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var p struct {
			Version   string
			Statement []struct {
				Effect    string
				Principal any
				Action    any
				Resource  any
			}
		}
		if err := json.Unmarshal(raw, &p); err != nil || p.Version != "2012-10-17" || len(p.Statement) == 0 {
			t.Errorf("%s: not a policy (%v, Version %q)", path, err, p.Version)
			continue
		}
		for i, s := range p.Statement {
			actions, resources := stringsIn(s.Action), stringsIn(s.Resource)
			if s.Effect != "Allow" || len(actions) == 0 {
				t.Errorf("%s statement %d: Effect %q, actions %v", path, i, s.Effect, actions)
			}
			for _, a := range actions {
				if strings.Contains(a, "*") {
					t.Errorf("%s statement %d: wildcard action %q", path, i, a)
				}
			}
			if s.Principal != nil { // a trust policy: the role it sits on is the resource
				continue
			}
			if len(resources) == 0 {
				t.Errorf("%s statement %d: no Resource", path, i)
			}
			for _, r := range resources {
				if r != "*" {
					continue
				}
				for _, a := range actions {
					if !slices.Contains(unscopedActions, a) {
						t.Errorf("%s statement %d: %s on Resource \"*\"; scope it", path, i, a)
					}
				}
			}
		}
	}
}
