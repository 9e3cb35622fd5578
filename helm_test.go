package main

// Tests of the Helm chart deploy/helm/kms-exporter: helm lint, and helm
// template with the defaults and with each optional feature on, the rendered
// objects checked against what they stand for: the flags the binary accepts
// (its --help, and the binary run with the rendered container's arguments,
// environment and Secret files), the kustomize manifests, the alert rules
// file and the dashboard. Helm v3.22 comes from `make deps` ($HELM_BIN) or
// PATH.

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/kms-exporter/kms_exporter/internal/harness"
	"github.com/kms-exporter/kms_exporter/internal/kmstest"
)

const (
	chartDir = "deploy/helm/kms-exporter"
	// A release name unlike the chart's, so that names that should come
	// from the release cannot be hard-coded.
	chartRelease   = "audit"
	chartNamespace = "monitoring"
	// Passed as --api-versions, it stands for a cluster with the Prometheus
	// Operator's CRDs.
	operatorAPI = "monitoring.coreos.com/v1"
	rulesFile   = "deploy/prometheus/kms-rotation.rules.yml"
)

// The values of the scenarios. Each renders one optional feature; helm lint
// checks them all.
const (
	// valuesKustomize says what deploy/kubernetes/ says: region, IRSA role.
	valuesKustomize = `
aws:
  region: eu-west-1
  regions: [eu-west-1]
serviceAccount:
  annotations:
    eks.amazonaws.com/role-arn: arn:aws:iam::111122223333:role/kms-exporter
`
	// valuesShardedKustomize says what deploy/kubernetes/sharded/ says.
	valuesShardedKustomize = `
aws:
  region: us-east-1
  regions: [all]
sharding:
  shards: 3
`
	// valuesEveryFlag sets every value that sets a flag, each to a value
	// other than the binary's default; extraArgs aside, and
	// metrics.denylist, which the binary refuses with --metrics.allowlist
	// (valuesDenylist sets it).
	valuesEveryFlag = `
aws:
  region: eu-west-1
  regions: [eu-west-1, us-east-1]
  assumeRoles: ["arn:aws:iam::222233334444:role/kms-audit,external-id=abc"]
  organizationsRoleName: kms-exporter-audit
  organizationsExternalId: org-external-id
  ownAccount: false
  maxConcurrency: 64
  requestsPerSecond: 0
  listKeyRotationsPerSecond: 2.5
  maxAttempts: 3
  timeout: 5s
refresh:
  interval: 10m
  resyncInterval: 24h
  maxStaleAge: 1h
compliance:
  maxRotationPeriodDays: 180
  maxKeyMaterialAgeDays: 200
  exemptionTag: rotation-exempt
metrics:
  tagLabels: [team, cost-center]
  perKey: attention
  allowlist: [kms_key_compliance, "kms_keys|kms_refresh_.*"]
remediation:
  enabled: true
  allowTags: [remediate=yes]
  allowAliasPrefixes: [alias/team-a/]
  alertNames: [KMSKeyRotationNoncompliant]
  requestsPerSecond: 0.5
  timeout: 90s
  awsRequestsPerSecond: 2
sharding:
  shards: 3
web:
  telemetryPath: /kms-metrics
  enableReport: true
  shutdownTimeoutSeconds: 60
  config:
    existingSecret: kms-web
log:
  level: debug
  format: logfmt
`
	// valuesDenylist sets the flag valuesEveryFlag cannot.
	valuesDenylist = `
metrics:
  denylist: [kms_key_info, "kms_key_rotation_.*"]
`
	// valuesEvents sets the flag valuesEveryFlag cannot either: events are
	// refused with sharding.
	valuesEvents = `
refresh:
  resyncInterval: 24h
events:
  sqsQueueUrls: ["https://sqs.eu-west-1.amazonaws.com/111122223333/kms-events"]
`
	valuesRemediationExisting = `
remediation:
  enabled: true
  token:
    existingSecret: kms-remediation
    existingSecretKey: api-token
`
	valuesWebTLS = `
web:
  config:
    existingSecret: kms-web
    key: web.yml
    tls: true
serviceMonitor:
  tlsConfig:
    insecureSkipVerify: true
  basicAuth:
    username: {name: kms-scrape, key: username}
    password: {name: kms-scrape, key: password}
`
	valuesExtras = `
extraArgs: ["--aws.max-attempts=2", "--refresh.interval=1m"]
extraEnv:
  - name: AWS_STS_REGIONAL_ENDPOINTS
    value: regional
extraVolumes:
  - name: ca
    configMap: {name: corporate-ca}
extraVolumeMounts:
  - name: ca
    mountPath: /etc/ssl/corporate
    readOnly: true
`
	valuesOperatorOn = `
serviceMonitor:
  enabled: true
  additionalLabels: {release: kube-prometheus-stack}
prometheusRule:
  enabled: true
  additionalLabels: {release: kube-prometheus-stack}
`
	valuesOperatorOff = `
serviceMonitor: {enabled: false}
prometheusRule: {enabled: false}
`
)

// webConfigHeader is an exporter-toolkit web configuration that shows in
// every answer. (Basic auth would not do: it takes the Authorization header
// that the remediation API's bearer token needs.)
const webConfigHeader = `http_server_config:
  headers:
    X-Frame-Options: deny
`

// helmBinary is $HELM_BIN (make test sets it), else helm on PATH.
func helmBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("HELM_BIN"); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("HELM_BIN: %v (`make deps` installs helm)", err)
		}
		return p
	}
	return harness.Tool(t, "helm")
}

// helm runs helm; on failure the error holds its output.
func helm(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(helmBinary(t), args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("helm %s: %v\n%s%s", strings.Join(args, " "), err, out.String(), errOut.String())
	}
	return out.String(), nil
}

func valuesFile(t *testing.T, values string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(path, []byte(values), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// rendered is the output of helm template, one map per object.
type rendered []map[string]any

func (r rendered) all(kind string) []map[string]any {
	var objs []map[string]any
	for _, o := range r {
		if o["kind"] == kind {
			objs = append(objs, o)
		}
	}
	return objs
}

func (r rendered) has(kind string) bool { return len(r.all(kind)) > 0 }

// one returns the only object of a kind.
func (r rendered) one(t *testing.T, kind string) map[string]any {
	t.Helper()
	objs := r.all(kind)
	if len(objs) != 1 {
		t.Fatalf("rendered %d %s objects, want 1", len(objs), kind)
	}
	return objs[0]
}

func templateArgs(chart, values string, extra []string) []string {
	args := []string{"template", chartRelease, chart, "--namespace", chartNamespace}
	if values != "" {
		args = append(args, "--values", values)
	}
	return append(args, extra...)
}

// renderChart runs helm template on chart (a folder or a package) with values
// (YAML; "" for the defaults) and extra arguments.
func renderChart(t *testing.T, chart, values string, extra ...string) rendered {
	t.Helper()
	file := ""
	if values != "" {
		file = valuesFile(t, values)
	}
	out, err := helm(t, templateArgs(chart, file, extra)...)
	if err != nil {
		t.Fatal(err)
	}
	var objs rendered
	dec := yaml.NewDecoder(strings.NewReader(out))
	for {
		var o map[string]any
		if err := dec.Decode(&o); err == io.EOF {
			return objs
		} else if err != nil {
			t.Fatalf("helm template output is not YAML: %v\n%s", err, out)
		}
		if o != nil {
			objs = append(objs, o)
		}
	}
}

func render(t *testing.T, values string, extra ...string) rendered {
	t.Helper()
	return renderChart(t, chartDir, values, extra...)
}

// renderFails runs helm template and returns its error, failing the test
// when the chart renders.
func renderFails(t *testing.T, values string) string {
	t.Helper()
	_, err := helm(t, templateArgs(chartDir, valuesFile(t, values), nil)...)
	if err == nil {
		t.Fatalf("helm template rendered the values\n%s\nwhich the chart must refuse", values)
	}
	return err.Error()
}

// workload returns the rendered Deployment or StatefulSet (exactly one of
// them) and its pod spec.
func workload(t *testing.T, r rendered) (obj, pod map[string]any) {
	t.Helper()
	objs := append(r.all("Deployment"), r.all("StatefulSet")...)
	if len(objs) != 1 {
		t.Fatalf("rendered %d Deployments and StatefulSets, want 1", len(objs))
	}
	pod, _ = dig(objs[0], "spec", "template", "spec").(map[string]any)
	if pod == nil {
		t.Fatalf("%s without a pod template", objs[0]["kind"])
	}
	return objs[0], pod
}

// exporterContainer returns the pod's only container.
func exporterContainer(t *testing.T, pod map[string]any) map[string]any {
	t.Helper()
	cs, _ := pod["containers"].([]any)
	if len(cs) != 1 {
		t.Fatalf("%d containers, want 1", len(cs))
	}
	c, _ := cs[0].(map[string]any)
	return c
}

func strs(v any) []string {
	l, _ := v.([]any)
	var out []string
	for _, s := range l {
		out = append(out, fmt.Sprint(s))
	}
	return out
}

func containerArgs(t *testing.T, r rendered) []string {
	t.Helper()
	_, pod := workload(t, r)
	return strs(exporterContainer(t, pod)["args"])
}

// volumeOf returns the pod's volume name.
func volumeOf(pod map[string]any, name string) map[string]any {
	vols, _ := pod["volumes"].([]any)
	for _, v := range vols {
		if m, _ := v.(map[string]any); m["name"] == name {
			return m
		}
	}
	return nil
}

// mountOf returns the mount path of volume name in container c.
func mountOf(c map[string]any, name string) string {
	mounts, _ := c["volumeMounts"].([]any)
	for _, m := range mounts {
		if mm, _ := m.(map[string]any); mm["name"] == name {
			return fmt.Sprint(mm["mountPath"])
		}
	}
	return ""
}

// flagValue returns the value of --name in args, and whether it is there.
func flagValue(args []string, name string) (string, bool) {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v, true
		}
		if a == "--"+name {
			return "", true
		}
	}
	return "", false
}

// binaryFlag is a flag of the serve command, as kms_exporter --help shows it.
type binaryFlag struct {
	boolean    bool   // --[no-]name
	repeatable bool   // "..." after it
	def        string // default, unquoted; "" when none is shown
}

var helpFlagLine = regexp.MustCompile(`^ {1,8}(?:-\w, )?--(\[no-\])?([a-z0-9][a-z0-9.-]*)(?:=(\S+))?( \.\.\.)?`)

// binaryFlags parses the flags of the binary TestMain built from its --help.
func binaryFlags(t *testing.T) map[string]binaryFlag {
	t.Helper()
	out, err := exec.Command(binary, "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("kms_exporter --help: %v\n%s", err, out)
	}
	flags := map[string]binaryFlag{}
	section := ""
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasSuffix(line, ":") && !strings.HasPrefix(line, " ") {
			section = line
			continue
		}
		m := helpFlagLine.FindStringSubmatch(line)
		if section != "Flags:" || m == nil {
			continue
		}
		f := binaryFlag{boolean: m[1] != "", repeatable: m[4] != ""}
		if v := m[3]; v != strings.ToUpper(m[2]) { // FLAG.NAME stands for no default
			f.def = strings.Trim(v, `"`)
		}
		flags[m[2]] = f
	}
	if len(flags) < 20 {
		t.Fatalf("found only %d flags in kms_exporter --help:\n%s", len(flags), out)
	}
	return flags
}

// checkArgs returns what is wrong with args as flags of the binary: unknown
// flags, a value missing or given to a boolean flag, a flag given twice that
// is not repeatable.
func checkArgs(args []string, flags map[string]binaryFlag) []string {
	var problems []string
	seen := map[string]bool{}
	for _, a := range args {
		name, value, hasValue := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		f, ok := flags[name]
		if neg, isNeg := strings.CutPrefix(name, "no-"); !ok && isNeg && flags[neg].boolean {
			f, ok, name = flags[neg], true, neg
		}
		switch {
		case !strings.HasPrefix(a, "--"):
			problems = append(problems, fmt.Sprintf("%q is not a --flag", a))
		case !ok:
			problems = append(problems, fmt.Sprintf("%q: the binary has no flag --%s", a, name))
		case f.boolean && hasValue:
			problems = append(problems, fmt.Sprintf("%q: --%s is a boolean flag, given a value %q", a, name, value))
		case !f.boolean && !hasValue:
			problems = append(problems, fmt.Sprintf("%q: --%s needs a value", a, name))
		case seen[name] && !f.repeatable:
			problems = append(problems, fmt.Sprintf("%q: --%s is not repeatable", a, name))
		}
		seen[name] = true
	}
	return problems
}

// substance returns args without those that give a flag its default value,
// sorted by flag, the values of a repeated flag in their order.
func substance(args []string, flags map[string]binaryFlag) []string {
	var out []string
	for _, a := range args {
		name, value, hasValue := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if f, ok := flags[name]; ok && hasValue && f.def != "" && value == f.def {
			continue
		}
		out = append(out, a)
	}
	slices.SortStableFunc(out, func(a, b string) int {
		na, _, _ := strings.Cut(a, "=")
		nb, _, _ := strings.Cut(b, "=")
		return strings.Compare(na, nb)
	})
	return out
}

// TestHelmLint runs helm lint --strict with the defaults and each scenario's values.
func TestHelmLint(t *testing.T) {
	t.Parallel()
	for name, values := range map[string]string{
		"defaults": "", "kustomize": valuesKustomize, "sharded": valuesShardedKustomize, "every flag": valuesEveryFlag,
		"denylist": valuesDenylist, "events": valuesEvents, "remediation with an existing Secret": valuesRemediationExisting, "web TLS": valuesWebTLS,
		"extras": valuesExtras, "operator on": valuesOperatorOn, "operator off": valuesOperatorOff,
	} {
		args := []string{"lint", "--strict", chartDir}
		if values != "" {
			args = append(args, "--values", valuesFile(t, values))
		}
		if _, err := helm(t, args...); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestHelmDefaults: the defaults render the exporter alone, with only what
// differs from the binary's defaults as arguments.
func TestHelmDefaults(t *testing.T) {
	t.Parallel()
	r := render(t, "")
	var kinds []string
	for _, o := range r {
		kinds = append(kinds, fmt.Sprint(o["kind"]))
	}
	slices.Sort(kinds)
	if want := []string{"ConfigMap", "Deployment", "Service", "ServiceAccount"}; !slices.Equal(kinds, want) {
		t.Errorf("the defaults render %v, want %v (no ServiceMonitor or PrometheusRule without the CRDs, no remediation Secret)", kinds, want)
	}
	if args := containerArgs(t, r); !slices.Equal(args, []string{"--log.format=json"}) {
		t.Errorf("default arguments %q, want only --log.format=json: the binary's defaults need no flag", args)
	}
	if name := dig(r.one(t, "Deployment"), "metadata", "name"); name != chartRelease+"-kms-exporter" {
		t.Errorf("Deployment %v is not named after the release", name)
	}
}

// TestHelmArgsAreFlags: every argument the chart renders is a flag of the
// binary, in the form its --help gives.
func TestHelmArgsAreFlags(t *testing.T) {
	t.Parallel()
	flags := binaryFlags(t)
	for name, values := range map[string]string{"every-flag": valuesEveryFlag, "denylist": valuesDenylist, "events": valuesEvents} {
		for _, p := range checkArgs(containerArgs(t, render(t, values)), flags) {
			t.Errorf("%s values: %s", name, p)
		}
	}
}

// TestHelmOffersEveryFlag: every flag of the binary has a value in the
// chart, or a reason not to.
func TestHelmOffersEveryFlag(t *testing.T) {
	t.Parallel()
	flags := binaryFlags(t)
	args := slices.Concat(containerArgs(t, render(t, valuesEveryFlag)), containerArgs(t, render(t, valuesDenylist)),
		containerArgs(t, render(t, valuesEvents)))
	// Flags the chart offers no value for, and why.
	notOffered := map[string]string{
		"help":               "not for a server",
		"version":            "not for a server",
		"web.listen-address": "the container listens on the binary's default, :10863 (port http); service.port is the Service's",
		"web.systemd-socket": "no systemd in a pod",
		"shard":              "from the pod's name (KMS_EXPORTER_SHARD) in the sharded StatefulSet",
	}
	set := map[string]bool{}
	for _, a := range args {
		name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		set[strings.TrimPrefix(name, "no-")] = true
	}
	for name := range flags {
		if _, ok := notOffered[name]; !ok && !set[name] {
			t.Errorf("--%s has no value in the chart: add one to values.yaml (and to valuesEveryFlag here, or valuesDenylist if the binary refuses it with another), or list it in notOffered with the reason", name)
		}
	}
	for name := range notOffered {
		if _, ok := flags[name]; !ok {
			t.Errorf("notOffered lists --%s, which the binary no longer has", name)
		}
	}
}

// TestHelmEvidenceValues: the values of the rotation evidence render their
// flags, 0 (no limit) included, in the order of kms_exporter --help; off or
// null, no flag.
func TestHelmEvidenceValues(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name, values string
		want         []string
	}{
		{"set", "web: {enableReport: true}\naws: {listKeyRotationsPerSecond: 2.5}\ncompliance: {maxKeyMaterialAgeDays: 400}",
			[]string{"--web.enable-report", "--aws.list-key-rotations-per-second=2.5", "--compliance.max-key-material-age-days=400", "--log.format=json"}},
		{"no limit", "aws: {listKeyRotationsPerSecond: 0}", []string{"--aws.list-key-rotations-per-second=0", "--log.format=json"}},
		{"off", "web: {enableReport: false}\naws: {listKeyRotationsPerSecond: null}\ncompliance: {maxKeyMaterialAgeDays: null}", []string{"--log.format=json"}},
	} {
		if args := containerArgs(t, render(t, tt.values)); !slices.Equal(args, tt.want) {
			t.Errorf("%s: arguments %q, want %q", tt.name, args, tt.want)
		}
	}
}

// TestHelmArgsStartTheBinary: the binary accepts the rendered arguments,
// environment and Secret files: each pod of the sharded StatefulSet, every
// flag set, starts and serves. The AWS endpoint is dead: the configuration
// is checked before any AWS call, and serving does not wait for AWS.
func TestHelmArgsStartTheBinary(t *testing.T) {
	t.Parallel()
	r := render(t, valuesEveryFlag)
	sts, _ := workload(t, r)
	for i := range dig(sts, "spec", "replicas").(int) {
		podName := fmt.Sprintf("%s-%d", dig(sts, "metadata", "name"), i)
		p := startPod(t, r, podName, "http://127.0.0.1:1", map[string]map[string]string{"kms-web": {"web-config.yml": webConfigHeader}})
		p.waitServing(t, "/-/healthy")
	}
}

// TestHelmMatchesKustomize: with the values that say what deploy/kubernetes/
// says, the rendered Deployment equals the kustomize one in substance:
// image, arguments (flags given their defaults aside), environment, ports,
// probes, resources, security contexts, grace period; the StatefulSet does
// what deploy/kubernetes/sharded/ does.
func TestHelmMatchesKustomize(t *testing.T) {
	t.Parallel()
	flags := binaryFlags(t)
	kinds := map[string]map[string]any{}
	for _, f := range []string{"deployment.yaml", "serviceaccount.yaml", "service.yaml", "servicemonitor.yaml"} {
		for _, doc := range readYAML(t, "deploy/kubernetes/"+f) {
			kinds[doc["kind"].(string)] = doc
		}
	}
	r := render(t, valuesKustomize, "--api-versions", operatorAPI)
	dep := r.one(t, "Deployment")
	if got, want := dig(dep, "spec", "replicas"), dig(kinds["Deployment"], "spec", "replicas"); got != want {
		t.Errorf("replicas %v, kustomize %v", got, want)
	}
	kPod := dig(kinds["Deployment"], "spec", "template", "spec").(map[string]any)
	hPod := dig(dep, "spec", "template", "spec").(map[string]any)
	// Where the chart differs on purpose.
	deliberate := map[string]string{
		"serviceAccountName": "named after the release; checked against the chart's ServiceAccount below",
		"containers":         "compared field by field below",
	}
	compareKeys(t, "pod spec", kPod, hPod, deliberate, nil)
	if got, want := hPod["serviceAccountName"], dig(r.one(t, "ServiceAccount"), "metadata", "name"); got != want {
		t.Errorf("pod service account %v, the chart's ServiceAccount is %v", got, want)
	}
	kc, hc := exporterContainer(t, kPod), exporterContainer(t, hPod)
	compareKeys(t, "container", kc, hc, nil, map[string]func(any) any{
		"args": func(v any) any { return substance(strs(v), flags) },
	})
	if got, want := dig(r.one(t, "ServiceAccount"), "metadata", "annotations"), dig(kinds["ServiceAccount"], "metadata", "annotations"); !reflect.DeepEqual(got, want) {
		t.Errorf("ServiceAccount annotations %v, kustomize %v", got, want)
	}
	sm, ksm := r.one(t, "ServiceMonitor"), kinds["ServiceMonitor"]
	for _, k := range []string{"port", "path", "interval", "scrapeTimeout"} {
		if got, want := dig(sm, "spec", "endpoints", 0, k), dig(ksm, "spec", "endpoints", 0, k); got != want {
			t.Errorf("ServiceMonitor endpoint %s %v, kustomize %v", k, got, want)
		}
	}
	if got, want := dig(r.one(t, "Service"), "spec", "ports"), dig(kinds["Service"], "spec", "ports"); !reflect.DeepEqual(got, want) {
		t.Errorf("Service ports %v, kustomize %v", got, want)
	}

	t.Run("sharded", func(t *testing.T) {
		k := readYAML(t, "deploy/kubernetes/sharded/statefulset.yaml")[0]
		r := render(t, valuesShardedKustomize)
		sts := r.one(t, "StatefulSet")
		for _, path := range [][]any{{"spec", "replicas"}, {"spec", "podManagementPolicy"}} {
			if got, want := dig(sts, path...), dig(k, path...); got != want {
				t.Errorf("StatefulSet %v: %v, kustomize %v", path, got, want)
			}
		}
		kc := dig(k, "spec", "template", "spec", "containers", 0)
		hc := dig(sts, "spec", "template", "spec", "containers", 0)
		if got, want := substance(strs(dig(hc, "args")), flags), substance(strs(dig(kc, "args")), flags); !slices.Equal(got, want) {
			t.Errorf("StatefulSet arguments %q, kustomize %q", got, want)
		}
		if got, want := dig(hc, "env"), dig(kc, "env"); !reflect.DeepEqual(got, want) {
			t.Errorf("StatefulSet environment %v, kustomize %v", got, want)
		}
	})
}

// compareKeys reports every key of want (the kustomize object) whose value
// got (the chart's) does not equal, and every key only got has; deliberate
// keys are skipped with their reason, normalize maps a key's values before
// they are compared.
func compareKeys(t *testing.T, what string, want, got map[string]any, deliberate map[string]string, normalize map[string]func(any) any) {
	t.Helper()
	keys := map[string]bool{}
	for k := range want {
		keys[k] = true
	}
	for k := range got {
		keys[k] = true
	}
	for k := range keys {
		if _, ok := deliberate[k]; ok {
			continue
		}
		w, g := want[k], got[k]
		if n := normalize[k]; n != nil {
			w, g = n(w), n(g)
		}
		if !reflect.DeepEqual(g, w) {
			t.Errorf("%s %s: chart %v, kustomize %v", what, k, g, w)
		}
	}
}

// TestHelmOperatorObjects: ServiceMonitor and PrometheusRule follow the
// CRDs (auto), or their values when set.
func TestHelmOperatorObjects(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name, values string
		crds, want   bool
	}{
		{"auto, no CRDs", "", false, false},
		{"auto, CRDs", "", true, true},
		{"forced off, CRDs", valuesOperatorOff, true, false},
		{"forced on, no CRDs", valuesOperatorOn, false, true},
	} {
		var extra []string
		if tt.crds {
			extra = []string{"--api-versions", operatorAPI}
		}
		r := render(t, tt.values, extra...)
		if r.has("ServiceMonitor") != tt.want || r.has("PrometheusRule") != tt.want {
			t.Errorf("%s: ServiceMonitor %v, PrometheusRule %v, want %v", tt.name, r.has("ServiceMonitor"), r.has("PrometheusRule"), tt.want)
		}
	}
	r := render(t, valuesOperatorOn)
	for _, kind := range []string{"ServiceMonitor", "PrometheusRule"} {
		if got := dig(r.one(t, kind), "metadata", "labels", "release"); got != "kube-prometheus-stack" {
			t.Errorf("%s without its additionalLabels: release=%v", kind, got)
		}
	}
}

// TestHelmServiceMonitorScrapes: the ServiceMonitor scrapes each pod once,
// through the Service's port to the container's, at the telemetry path, as
// the job the alert rules expect.
func TestHelmServiceMonitorScrapes(t *testing.T) {
	t.Parallel()
	// The job the alert rules name.
	raw, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	jobs := map[string]bool{}
	for _, m := range regexp.MustCompile(`job="([^"]+)"`).FindAllStringSubmatch(string(raw), -1) {
		jobs[m[1]] = true
	}
	if len(jobs) != 1 {
		t.Fatalf("the alert rules name the jobs %v, want one", jobs)
	}
	for name, values := range map[string]string{"unsharded": "", "sharded": valuesShardedKustomize, "telemetry path": "web: {telemetryPath: /kms-metrics}"} {
		r := render(t, values, "--api-versions", operatorAPI)
		sm := r.one(t, "ServiceMonitor")
		selector, _ := dig(sm, "spec", "selector", "matchLabels").(map[string]any)
		var selected []map[string]any
		for _, svc := range r.all("Service") {
			if matches(selector, dig(svc, "metadata", "labels")) {
				selected = append(selected, svc)
			}
		}
		if len(selected) != 1 {
			t.Errorf("%s: the ServiceMonitor selects %d Services, want 1 (each pod scraped once)", name, len(selected))
			continue
		}
		svc := selected[0]
		obj, pod := workload(t, r)
		if selector, _ := dig(svc, "spec", "selector").(map[string]any); !matches(selector, dig(obj, "spec", "template", "metadata", "labels")) {
			t.Errorf("%s: the Service does not select the exporter's pods", name)
		}
		if dig(sm, "spec", "endpoints", 0, "port") != dig(svc, "spec", "ports", 0, "name") ||
			dig(svc, "spec", "ports", 0, "targetPort") != dig(exporterContainer(t, pod), "ports", 0, "name") {
			t.Errorf("%s: the ServiceMonitor's port %v is not the Service's port to the container's", name, dig(sm, "spec", "endpoints", 0, "port"))
		}
		path, ok := flagValue(strs(exporterContainer(t, pod)["args"]), "web.telemetry-path")
		if !ok {
			path = "/metrics"
		}
		if got := dig(sm, "spec", "endpoints", 0, "path"); got != path {
			t.Errorf("%s: the ServiceMonitor scrapes %v, the exporter serves %s", name, got, path)
		}
		jobLabel := fmt.Sprint(dig(sm, "spec", "jobLabel"))
		if job := fmt.Sprint(dig(svc, "metadata", "labels", jobLabel)); !jobs[job] {
			t.Errorf("%s: Prometheus would name the job %q (the Service's label %q), the alert rules expect %v", name, job, jobLabel, jobs)
		}
		if ns := strs(dig(sm, "spec", "namespaceSelector", "matchNames")); !slices.Equal(ns, []string{chartNamespace}) {
			t.Errorf("%s: the ServiceMonitor looks in namespaces %v, want the release's", name, ns)
		}
	}
}

// matches tells whether labels has every key and value of selector.
func matches(selector map[string]any, labels any) bool {
	l, _ := labels.(map[string]any)
	if len(selector) == 0 || l == nil {
		return false
	}
	for k, v := range selector {
		if l[k] != v {
			return false
		}
	}
	return true
}

// TestHelmPrometheusRuleIsRuleFile: the PrometheusRule's groups are the
// groups of deploy/prometheus/kms-rotation.rules.yml, which the chart reads
// through its link files/kms-rotation.rules.yml.
func TestHelmPrometheusRuleIsRuleFile(t *testing.T) {
	t.Parallel()
	want := readYAML(t, rulesFile)[0]["groups"]
	rule := render(t, "", "--api-versions", operatorAPI).one(t, "PrometheusRule")
	if !reflect.DeepEqual(dig(rule, "spec", "groups"), want) {
		t.Errorf("the PrometheusRule's groups differ from %s", rulesFile)
	}
	if link, err := os.Readlink(chartDir + "/files/kms-rotation.rules.yml"); err != nil || filepath.Clean(filepath.Join(chartDir, "files", link)) != rulesFile {
		t.Errorf("files/kms-rotation.rules.yml is not a link to %s: %q, %v", rulesFile, link, err)
	}
}

// TestHelmDashboardIsJSONFile: the dashboard ConfigMap, labelled for the
// Grafana sidecar, holds grafana/kms-rotation.json.
func TestHelmDashboardIsJSONFile(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var want any
	if err := json.Unmarshal(raw, &want); err != nil {
		t.Fatal(err)
	}
	cm := render(t, "").one(t, "ConfigMap")
	if got := dig(cm, "metadata", "labels", "grafana_dashboard"); got != "1" {
		t.Errorf("the dashboard ConfigMap's grafana_dashboard label is %v, the sidecar looks for \"1\"", got)
	}
	var got any
	if err := json.Unmarshal([]byte(fmt.Sprint(dig(cm, "data", "kms-rotation.json"))), &got); err != nil {
		t.Fatalf("the ConfigMap's kms-rotation.json is not JSON: %v", err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("the ConfigMap's kms-rotation.json differs from %s", dashboardFile)
	}
	if link, err := os.Readlink(chartDir + "/files/kms-rotation.json"); err != nil || filepath.Clean(filepath.Join(chartDir, "files", link)) != dashboardFile {
		t.Errorf("files/kms-rotation.json is not a link to %s: %q, %v", dashboardFile, link, err)
	}
	r := render(t, "dashboard: {namespace: grafana, annotations: {grafana_folder: KMS}}")
	if cm := r.one(t, "ConfigMap"); dig(cm, "metadata", "namespace") != "grafana" || dig(cm, "metadata", "annotations", "grafana_folder") != "KMS" {
		t.Errorf("dashboard.namespace and annotations not applied: %v", cm["metadata"])
	}
	if render(t, "dashboard: {enabled: false}").has("ConfigMap") {
		t.Error("dashboard.enabled=false still renders the ConfigMap")
	}
}

// TestHelmRemediation: off by default; on, the token comes from a Secret the
// chart generates or from an existing one, mounted owner-read-only at the
// path --remediation.token-file names, readable through the pod's fsGroup.
func TestHelmRemediation(t *testing.T) {
	t.Parallel()
	r := render(t, "")
	_, pod := workload(t, r)
	if args := containerArgs(t, r); slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "--remediation.") }) {
		t.Errorf("remediation flags by default: %q", args)
	}
	if r.has("Secret") || pod["volumes"] != nil || dig(pod, "securityContext", "fsGroup") != nil {
		t.Error("remediation off, yet a Secret, a volume or an fsGroup is rendered")
	}

	for _, tt := range []struct {
		name, values, secret, key string
		generated                 bool
	}{
		{"generated", "remediation: {enabled: true, allowTags: [team=a], allowAliasPrefixes: [alias/a/]}", chartRelease + "-kms-exporter-remediation-token", "token", true},
		{"existing Secret", valuesRemediationExisting, "kms-remediation", "api-token", false},
	} {
		r := render(t, tt.values)
		_, pod := workload(t, r)
		c := exporterContainer(t, pod)
		args := strs(c["args"])
		if _, ok := flagValue(args, "remediation.enabled"); !ok {
			t.Errorf("%s: no --remediation.enabled in %q", tt.name, args)
		}
		vol := volumeOf(pod, "remediation-token")
		if got := dig(vol, "secret", "secretName"); got != tt.secret {
			t.Errorf("%s: the token volume is Secret %v, want %s", tt.name, got, tt.secret)
		}
		if got, _ := dig(vol, "secret", "defaultMode").(int); got != 0o400 {
			t.Errorf("%s: the token file's mode is %#o, want 0400 (the kubelet adds read for the fsGroup, no more)", tt.name, got)
		}
		if got := dig(vol, "secret", "items", 0, "key"); got != tt.key {
			t.Errorf("%s: the token volume maps key %v, want %s", tt.name, got, tt.key)
		}
		file := mountOf(c, "remediation-token") + "/" + fmt.Sprint(dig(vol, "secret", "items", 0, "path"))
		if got, _ := flagValue(args, "remediation.token-file"); got != file {
			t.Errorf("%s: --remediation.token-file=%s, the token is mounted at %s", tt.name, got, file)
		}
		if sc, _ := dig(pod, "securityContext").(map[string]any); sc["fsGroup"] == nil || sc["fsGroup"] != sc["runAsGroup"] {
			t.Errorf("%s: fsGroup %v, want runAsGroup %v: a 0400 Secret file belongs to root and the fsGroup", tt.name, sc["fsGroup"], sc["runAsGroup"])
		}
		secrets := r.all("Secret")
		if !tt.generated {
			if len(secrets) != 0 {
				t.Errorf("%s: the chart renders %d Secrets, want none", tt.name, len(secrets))
			}
			continue
		}
		if len(secrets) != 1 || dig(secrets[0], "metadata", "name") != tt.secret {
			t.Fatalf("%s: want one Secret %s, rendered %v", tt.name, tt.secret, secrets)
		}
		token, err := base64.StdEncoding.DecodeString(fmt.Sprint(dig(secrets[0], "data", "token")))
		if err != nil || len(token) < 32 || !regexp.MustCompile(`^[A-Za-z0-9]+$`).Match(token) {
			t.Errorf("%s: generated token %q (%v), want 32 or more letters and digits", tt.name, token, err)
		}
		for _, want := range []string{"--remediation.allow-tag=team=a", "--remediation.allow-alias-prefix=alias/a/"} {
			if !slices.Contains(args, want) {
				t.Errorf("%s: no %s in %q", tt.name, want, args)
			}
		}
	}
}

// TestHelmSharding: shards > 1 render a StatefulSet whose pods take their
// shard from their name and share --total-shards equal to the replicas,
// with a headless Service; no Deployment.
func TestHelmSharding(t *testing.T) {
	t.Parallel()
	r := render(t, valuesShardedKustomize)
	if r.has("Deployment") {
		t.Error("sharded, yet a Deployment is rendered")
	}
	sts := r.one(t, "StatefulSet")
	c := dig(sts, "spec", "template", "spec", "containers", 0).(map[string]any)
	if got, _ := flagValue(strs(c["args"]), "total-shards"); got != fmt.Sprint(dig(sts, "spec", "replicas")) {
		t.Errorf("--total-shards=%s, replicas %v: they must be equal", got, dig(sts, "spec", "replicas"))
	}
	env := dig(c, "env", 0)
	if dig(env, "name") != "KMS_EXPORTER_SHARD" || dig(env, "valueFrom", "fieldRef", "fieldPath") != "metadata.name" {
		t.Errorf("the shard does not come from the pod's name: env %v", c["env"])
	}
	svc := r.one(t, "Service")
	if dig(svc, "metadata", "name") != dig(sts, "spec", "serviceName") || dig(svc, "spec", "clusterIP") != "None" {
		t.Errorf("the StatefulSet's serviceName %v is not the headless Service %v (clusterIP %v)",
			dig(sts, "spec", "serviceName"), dig(svc, "metadata", "name"), dig(svc, "spec", "clusterIP"))
	}
	if msg := renderFails(t, "sharding: {shards: 0}"); !strings.Contains(msg, "sharding.shards") {
		t.Errorf("shards 0: the error does not name sharding.shards:\n%s", msg)
	}
}

// TestHelmMetricFamilies: metrics.perKey and the family lists render one
// flag per entry, in order, which the binary accepts; the chart refuses both
// lists, as the binary would.
func TestHelmMetricFamilies(t *testing.T) {
	t.Parallel()
	r := render(t, valuesDenylist+"  perKey: attention\n")
	want := []string{"--metrics.per-key=attention", "--metrics.denylist=kms_key_info", "--metrics.denylist=kms_key_rotation_.*", "--log.format=json"}
	if args := containerArgs(t, r); !slices.Equal(args, want) {
		t.Errorf("arguments %q, want %q", args, want)
	}
	startPod(t, r, chartRelease+"-kms-exporter-5d8f7c9b4-x2x7q", "http://127.0.0.1:1", nil).waitServing(t, "/-/healthy")
	msg := renderFails(t, "metrics: {allowlist: [kms_keys], denylist: [kms_key_info]}")
	if !strings.Contains(msg, "metrics.allowlist") || !strings.Contains(msg, "metrics.denylist") {
		t.Errorf("both lists: the error does not name metrics.allowlist and metrics.denylist:\n%s", msg)
	}
}

// TestHelmWebConfig: the web configuration Secret is mounted and named by
// --web.config.file; with TLS the probes and the ServiceMonitor use HTTPS.
func TestHelmWebConfig(t *testing.T) {
	t.Parallel()
	r := render(t, valuesWebTLS, "--api-versions", operatorAPI)
	_, pod := workload(t, r)
	c := exporterContainer(t, pod)
	if got := dig(volumeOf(pod, "web-config"), "secret", "secretName"); got != "kms-web" {
		t.Errorf("the web-config volume is Secret %v, want kms-web", got)
	}
	if got, _ := flagValue(strs(c["args"]), "web.config.file"); got != mountOf(c, "web-config")+"/web.yml" {
		t.Errorf("--web.config.file=%s, the Secret is mounted at %s", got, mountOf(c, "web-config"))
	}
	for _, probe := range []string{"livenessProbe", "readinessProbe"} {
		if got := dig(c, probe, "httpGet", "scheme"); got != "HTTPS" {
			t.Errorf("%s scheme %v with TLS, want HTTPS", probe, got)
		}
	}
	ep := dig(r.one(t, "ServiceMonitor"), "spec", "endpoints", 0)
	if dig(ep, "scheme") != "https" || dig(ep, "tlsConfig", "insecureSkipVerify") != true || dig(ep, "basicAuth", "password", "name") != "kms-scrape" {
		t.Errorf("ServiceMonitor endpoint %v: want scheme https with the tlsConfig and basicAuth values", ep)
	}
	if sc, _ := dig(pod, "securityContext").(map[string]any); sc["fsGroup"] == nil || sc["fsGroup"] != sc["runAsGroup"] {
		t.Errorf("fsGroup %v, want runAsGroup %v: the 0400 Secret files must be readable", sc["fsGroup"], sc["runAsGroup"])
	}
	_, pod = workload(t, render(t, ""))
	if got := dig(exporterContainer(t, pod), "readinessProbe", "httpGet", "scheme"); got != nil {
		t.Errorf("readiness probe scheme %v without TLS, want none (HTTP)", got)
	}
}

// TestHelmServiceAccount: IRSA or Pod Identity, the pods run as the service
// account the annotations go to.
func TestHelmServiceAccount(t *testing.T) {
	t.Parallel()
	r := render(t, valuesKustomize)
	sa := r.one(t, "ServiceAccount")
	if got := dig(sa, "metadata", "annotations", "eks.amazonaws.com/role-arn"); got != "arn:aws:iam::111122223333:role/kms-exporter" {
		t.Errorf("IRSA annotation %v", got)
	}
	if _, pod := workload(t, r); pod["serviceAccountName"] != dig(sa, "metadata", "name") {
		t.Errorf("pods run as %v, the ServiceAccount is %v", pod["serviceAccountName"], dig(sa, "metadata", "name"))
	}
	r = render(t, "serviceAccount: {create: false, name: kms-audit}")
	if _, pod := workload(t, r); r.has("ServiceAccount") || pod["serviceAccountName"] != "kms-audit" {
		t.Errorf("serviceAccount.create=false: ServiceAccount rendered %v, pods run as %v, want kms-audit", r.has("ServiceAccount"), pod["serviceAccountName"])
	}
	if msg := renderFails(t, "serviceAccount: {create: false}"); !strings.Contains(msg, "serviceAccount.name") {
		t.Errorf("no service account: the error does not name serviceAccount.name:\n%s", msg)
	}
}

// TestHelmExtras: extraArgs come last and in order, after the chart's own;
// extraEnv and extra volumes are added.
func TestHelmExtras(t *testing.T) {
	t.Parallel()
	r := render(t, valuesExtras)
	_, pod := workload(t, r)
	c := exporterContainer(t, pod)
	args := strs(c["args"])
	if want := []string{"--log.format=json", "--aws.max-attempts=2", "--refresh.interval=1m"}; !slices.Equal(args, want) {
		t.Errorf("arguments %q, want %q", args, want)
	}
	if !reflect.DeepEqual(c["env"], []any{map[string]any{"name": "AWS_STS_REGIONAL_ENDPOINTS", "value": "regional"}}) {
		t.Errorf("env %v, want extraEnv", c["env"])
	}
	if mountOf(c, "ca") != "/etc/ssl/corporate" || dig(volumeOf(pod, "ca"), "configMap", "name") != "corporate-ca" {
		t.Errorf("extra volume or mount missing: %v, %v", pod["volumes"], c["volumeMounts"])
	}
}

// TestHelmGracePeriod: the pod's grace period outlasts --web.shutdown-timeout,
// the binary's default or the value.
func TestHelmGracePeriod(t *testing.T) {
	t.Parallel()
	def, err := time.ParseDuration(binaryFlags(t)["web.shutdown-timeout"].def)
	if err != nil {
		t.Fatalf("the default of --web.shutdown-timeout: %v", err)
	}
	_, pod := workload(t, render(t, ""))
	if grace := pod["terminationGracePeriodSeconds"].(int); time.Duration(grace)*time.Second <= def {
		t.Errorf("terminationGracePeriodSeconds %d is not above --web.shutdown-timeout's default %s", grace, def)
	}
	r := render(t, "web: {shutdownTimeoutSeconds: 120}")
	_, pod = workload(t, r)
	if got, _ := flagValue(containerArgs(t, r), "web.shutdown-timeout"); got != "120s" || pod["terminationGracePeriodSeconds"].(int) <= 120 {
		t.Errorf("shutdownTimeoutSeconds 120: --web.shutdown-timeout=%s, grace period %v", got, pod["terminationGracePeriodSeconds"])
	}
	if msg := renderFails(t, "terminationGracePeriodSeconds: 30"); !strings.Contains(msg, "must be above") {
		t.Errorf("a grace period of 30 s with the 30 s shutdown timeout: the error does not say so:\n%s", msg)
	}
}

// TestHelmPackage: helm package stores the linked files' content (a packaged
// chart has no link to follow), and the packaged chart renders the rules.
func TestHelmPackage(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if _, err := helm(t, "package", chartDir, "--destination", dir); err != nil {
		t.Fatal(err)
	}
	pkgs, _ := filepath.Glob(filepath.Join(dir, "kms-exporter-*.tgz"))
	if len(pkgs) != 1 {
		t.Fatalf("helm package made %v", pkgs)
	}
	f, err := os.Open(pkgs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"kms-exporter/files/kms-rotation.rules.yml": rulesFile, "kms-exporter/files/kms-rotation.json": dashboardFile}
	tr := tar.NewReader(gz)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		source, ok := want[h.Name]
		if !ok {
			continue
		}
		delete(want, h.Name)
		got, _ := io.ReadAll(tr)
		if raw, _ := os.ReadFile(source); h.Typeflag != tar.TypeReg || !bytes.Equal(got, raw) {
			t.Errorf("package: %s is not the content of %s (tar type %c)", h.Name, source, h.Typeflag)
		}
	}
	for name := range want {
		t.Errorf("package lacks %s", name)
	}
	rule := renderChart(t, pkgs[0], "", "--api-versions", operatorAPI).one(t, "PrometheusRule")
	if !reflect.DeepEqual(dig(rule, "spec", "groups"), readYAML(t, rulesFile)[0]["groups"]) {
		t.Errorf("the packaged chart's PrometheusRule differs from %s", rulesFile)
	}
}

// TestHelmNotes: NOTES.txt names the Service, port and path to reach the
// metrics, and with remediation the Secret holding the token. helm template
// does not print the notes: the test renders them, in a copy of the chart,
// as a ConfigMap.
func TestHelmNotes(t *testing.T) {
	t.Parallel()
	chart := filepath.Join(t.TempDir(), "kms-exporter")
	if err := copyDir(chartDir, chart); err != nil {
		t.Fatal(err)
	}
	notes, err := os.ReadFile(filepath.Join(chart, "templates", "NOTES.txt"))
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"NOTES.txt":  "",
		"_notes.tpl": `{{- define "notes-under-test" }}` + string(notes) + `{{- end }}`,
		"notes-under-test.yaml": `apiVersion: v1
kind: ConfigMap
metadata:
  name: notes-under-test
data:
  notes: {{ include "notes-under-test" . | quote }}
`,
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(chart, "templates", name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	notesOf := func(r rendered) string {
		for _, cm := range r.all("ConfigMap") {
			if dig(cm, "metadata", "name") == "notes-under-test" {
				return fmt.Sprint(dig(cm, "data", "notes"))
			}
		}
		t.Fatal("the notes did not render")
		return ""
	}
	r := renderChart(t, chart, "")
	svc := r.one(t, "Service")
	text := notesOf(r)
	for _, want := range []string{
		fmt.Sprintf("kubectl -n %s port-forward svc/%s 10863:%v", chartNamespace, dig(svc, "metadata", "name"), dig(svc, "spec", "ports", 0, "port")),
		"http://127.0.0.1:10863/metrics", "/-/ready", "kms_refresh_success", "No region is set",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("default notes lack %q:\n%s", want, text)
		}
	}
	r = renderChart(t, chart, "remediation: {enabled: true}\nweb: {telemetryPath: /kms}\naws: {region: eu-west-1}")
	text = notesOf(r)
	secret := dig(r.one(t, "Secret"), "metadata", "name")
	for _, want := range []string{fmt.Sprintf("get secret %s", secret), "deploy/iam/kms-exporter-remediation.json", "http://127.0.0.1:10863/kms"} {
		if !strings.Contains(text, want) {
			t.Errorf("remediation notes lack %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "No region is set") {
		t.Errorf("the notes warn of no region with aws.region set:\n%s", text)
	}
	if strings.Contains(text, "/report") || strings.Contains(text, "maxKeyMaterialAgeDays") {
		t.Errorf("the notes speak of the report or the material age, both off:\n%s", text)
	}
	text = notesOf(renderChart(t, chart, "web: {enableReport: true}\ncompliance: {maxKeyMaterialAgeDays: 365}"))
	for _, want := range []string{"http://127.0.0.1:10863/report?format=csv", "compliance.maxKeyMaterialAgeDays (365)", "(365 days)", "KMSKeyMaterialTooOld"} {
		if !strings.Contains(text, want) {
			t.Errorf("notes with the report on and a material age of 365 days lack %q:\n%s", want, text)
		}
	}
	// A limit a week above the longest period leaves the rotations time.
	if text := notesOf(renderChart(t, chart, "compliance: {maxKeyMaterialAgeDays: 190, maxRotationPeriodDays: 180}")); strings.Contains(text, "maxKeyMaterialAgeDays") {
		t.Errorf("the notes warn of a material age of 190 days with a period of 180:\n%s", text)
	}
	text = notesOf(renderChart(t, chart, "events: {sqsQueueUrls: [https://sqs.eu-west-1.amazonaws.com/111122223333/kms-events]}"))
	for _, want := range []string{"deploy/iam/kms-exporter-events.json", "kms_exporter_event_receive_errors_total", "refresh.resyncInterval is not set"} {
		if !strings.Contains(text, want) {
			t.Errorf("events notes lack %q:\n%s", want, text)
		}
	}
}

// copyDir copies a folder, links replaced by what they point to.
func copyDir(from, to string) error {
	return filepath.WalkDir(from, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, path)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(to, rel), 0o755)
		}
		raw, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(to, rel), raw, 0o644)
	})
}

// TestHelmPodServes runs the rendered container against local-kms as the
// pod would run it: the probes answer on their paths, the metrics are served
// at the ServiceMonitor's path under the web configuration, and the
// remediation API takes the token of the generated Secret.
func TestHelmPodServes(t *testing.T) {
	t.Parallel()
	r := render(t, `
aws: {region: eu-west-1, regions: [eu-west-1]}
remediation: {enabled: true}
web:
  telemetryPath: /kms-metrics
  config: {existingSecret: kms-web}
`, "--api-versions", operatorAPI)
	_, pod := workload(t, r)
	c := exporterContainer(t, pod)
	srv := kmstest.StartT(t, kmstest.Options{Region: "eu-west-1"})
	p := startPod(t, r, chartRelease+"-kms-exporter-5d8f7c9b4-x2x7q", srv.URL, map[string]map[string]string{"kms-web": {"web-config.yml": webConfigHeader}})
	p.waitServing(t, fmt.Sprint(dig(c, "livenessProbe", "httpGet", "path")))
	p.waitServing(t, fmt.Sprint(dig(c, "readinessProbe", "httpGet", "path")))
	path := fmt.Sprint(dig(r.one(t, "ServiceMonitor"), "spec", "endpoints", 0, "path"))
	code, header, body := p.request(t, "GET", path, "")
	if code != 200 || !strings.Contains(body, `kms_refresh_success{account_id="`) {
		t.Errorf("GET %s (the ServiceMonitor's path): %d\n%.500s", path, code, body)
	}
	if got := header.Get("X-Frame-Options"); got != "deny" {
		t.Errorf("GET %s: X-Frame-Options %q, want the web configuration's deny", path, got)
	}
	token, _ := base64.StdEncoding.DecodeString(fmt.Sprint(dig(r.one(t, "Secret"), "data", "token")))
	for _, tt := range []struct {
		token string
		want  int
	}{{"wrong", http.StatusUnauthorized}, {string(token), http.StatusNotFound}} {
		code, _, body := p.request(t, "POST", "/api/v1/remediate", tt.token)
		if code != tt.want {
			t.Errorf("POST /api/v1/remediate with token %.4s...: %d %s, want %d (404: the token passed, the key is unknown)", tt.token, code, body, tt.want)
		}
	}
}

// startPod runs the binary as the pod would: the container's arguments and
// environment (KMS_EXPORTER_SHARD from the pod's name), its Secret volumes
// written to files (the rendered Secrets, and secrets, name to key to
// content, for those the chart expects to exist) and their mount paths in the
// arguments replaced by those files' folder. It listens on a free loopback
// port, against endpoint.
func startPod(t *testing.T, r rendered, podName, endpoint string, secrets map[string]map[string]string) *process {
	t.Helper()
	_, pod := workload(t, r)
	c := exporterContainer(t, pod)
	data := map[string]map[string][]byte{}
	for _, s := range r.all("Secret") {
		kv := map[string][]byte{}
		for k, v := range dig(s, "data").(map[string]any) {
			b, err := base64.StdEncoding.DecodeString(fmt.Sprint(v))
			if err != nil {
				t.Fatalf("Secret %v: key %s: %v", dig(s, "metadata", "name"), k, err)
			}
			kv[k] = b
		}
		data[fmt.Sprint(dig(s, "metadata", "name"))] = kv
	}
	for name, kv := range secrets {
		data[name] = map[string][]byte{}
		for k, v := range kv {
			data[name][k] = []byte(v)
		}
	}
	root := t.TempDir()
	var replacer []string
	mounts, _ := c["volumeMounts"].([]any)
	for _, m := range mounts {
		name, mountPath := fmt.Sprint(dig(m, "name")), fmt.Sprint(dig(m, "mountPath"))
		vol := volumeOf(pod, name)
		secretName, ok := dig(vol, "secret", "secretName").(string)
		if !ok {
			t.Fatalf("volume %s is not a Secret: the test cannot stand in for it", name)
		}
		kv, ok := data[secretName]
		if !ok {
			t.Fatalf("volume %s: Secret %s is neither rendered nor given", name, secretName)
		}
		mode := os.FileMode(0o644)
		if m, ok := dig(vol, "secret", "defaultMode").(int); ok {
			mode = os.FileMode(m)
		}
		files := map[string][]byte{}
		if items, ok := dig(vol, "secret", "items").([]any); ok {
			for _, it := range items {
				key := fmt.Sprint(dig(it, "key"))
				content, ok := kv[key]
				if !ok {
					t.Fatalf("volume %s: Secret %s has no key %s", name, secretName, key)
				}
				files[fmt.Sprint(dig(it, "path"))] = content
			}
		} else {
			files = kv
		}
		dir := filepath.Join(root, name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for file, content := range files {
			if err := os.WriteFile(filepath.Join(dir, file), content, mode); err != nil {
				t.Fatal(err)
			}
		}
		replacer = append(replacer, "="+mountPath+"/", "="+dir+"/")
	}
	var args []string
	for _, a := range strs(c["args"]) {
		args = append(args, strings.NewReplacer(replacer...).Replace(a))
	}
	var env []string
	envs, _ := c["env"].([]any)
	for _, e := range envs {
		switch {
		case dig(e, "value") != nil:
			env = append(env, fmt.Sprintf("%v=%v", dig(e, "name"), dig(e, "value")))
		case dig(e, "valueFrom", "fieldRef", "fieldPath") == "metadata.name":
			env = append(env, fmt.Sprintf("%v=%s", dig(e, "name"), podName))
		default:
			t.Fatalf("env %v: the test cannot stand in for it", e)
		}
	}
	t.Logf("pod %s", podName)
	p := launch(t, args, testEnv(endpoint, env...))
	return p
}

// request sends a request to the exporter, with a bearer token when token is
// set; a POST carries a dry-run remediation of a key that does not exist.
func (p *process) request(t *testing.T, method, path, token string) (int, http.Header, string) {
	t.Helper()
	var body io.Reader
	if method == "POST" {
		body = strings.NewReader(`{"key_id":"11111111-2222-3333-4444-555555555555","region":"eu-west-1","dry_run":true}`)
	}
	req, err := http.NewRequest(method, "http://"+p.addr+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if method == "POST" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

// waitServing polls path until it answers 200; the process exiting first
// fails the test with its output (a flag or file the binary refuses).
func (p *process) waitServing(t *testing.T, path string) {
	t.Helper()
	harness.Poll(t, 30*time.Second, func() string {
		select {
		case <-p.exited:
			logs := p.logs.String()
			reason := "no error line, see the log"
			if i := strings.Index(logs, "kms_exporter: error:"); i >= 0 {
				reason, _, _ = strings.Cut(logs[i:], "\n")
			}
			t.Fatalf("kms_exporter exited (code %d) before serving %s: %s\n%s", p.cmd.ProcessState.ExitCode(), path, reason, logs)
		default:
		}
		if code, _, body := p.request(t, "GET", path, ""); code != 200 {
			return fmt.Sprintf("GET %s: %d %s", path, code, body)
		}
		return ""
	})
}
