package config

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/alecthomas/kingpin/v2"

	"github.com/kms-exporter/kms_exporter/awsclient"
	"github.com/kms-exporter/kms_exporter/collector"
	"github.com/kms-exporter/kms_exporter/policy"
)

// parse parses args as the exporter does, with none of the flags' variables set.
func parse(t *testing.T, args ...string) (*Config, error) {
	t.Helper()
	for _, v := range []string{"KMS_EXPORTER_REGIONS", "KMS_EXPORTER_ORGANIZATIONS_EXTERNAL_ID",
		"KMS_EXPORTER_REMEDIATION_TOKEN_FILE", "KMS_EXPORTER_SHARD"} {
		t.Setenv(v, "")
	}
	c := New(kingpin.New("kms_exporter", ""))
	return c, c.Parse(args)
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaults(t *testing.T) {
	c, err := parse(t)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name      string
		got, want any
	}{
		{"command", c.Command, CommandServe},
		{"--web.listen-address", *c.Web.Flags.WebListenAddresses, []string{":10863"}},
		{"--web.config.file", *c.Web.Flags.WebConfigFile, ""},
		{"--web.telemetry-path", c.Web.TelemetryPath, "/metrics"},
		{"--web.shutdown-timeout", c.Web.ShutdownTimeout, 30 * time.Second},
		{"--aws.region", c.AWS.Regions, []string(nil)},
		{"discover regions", c.AWS.DiscoverRegions, false},
		{"roles", c.AWS.Roles, []awsclient.Role{{}}},
		{"--aws.*", c.AWS.Client, awsclient.Options{RequestsPerSecond: 100, MaxConcurrency: 16, MaxAttempts: 5, Timeout: 10 * time.Second,
			OperationRates: map[string]float64{"ListKeyRotations": 25}}},
		{"--refresh.interval", c.RefreshInterval, 5 * time.Minute},
		{"--refresh.max-stale-age", c.MaxStaleAge, 15 * time.Minute},
		{"--refresh.resync-interval", c.ResyncInterval, 5 * time.Minute},
		{"resync: every key at every refresh", c.Resync(), time.Duration(0)},
		{"--compliance.*", c.Policy, policy.Policy{MaxRotationPeriodDays: 365, ExemptionTag: "kms-rotation-exempt"}},
		{"--metrics.tag-label", c.TagLabels, []string(nil)},
		{"--metrics.per-key", c.Metrics.PerKey, collector.PerKeyAll},
		{"--metrics.allowlist, --metrics.denylist", c.Metrics.Include, (func(string) bool)(nil)},
		{"--remediation.*", c.Remediation, Remediation{RequestsPerSecond: 1, Timeout: time.Minute, AWSRequestsPerSecond: 5,
			AlertNames: []string{"KMSKeyRotationNoncompliant", "KMSKeyRotationPeriodAbovePolicy"}}},
		{"--shard", c.Shard, 0},
		{"--total-shards", c.TotalShards, 1},
		{"--log.level", c.Log.Level.String(), "info"},
	} {
		if !reflect.DeepEqual(tt.got, tt.want) {
			t.Errorf("%s: %#v, want %#v", tt.name, tt.got, tt.want)
		}
	}
	events, err := parse(t, "--refresh.resync-interval=24h")
	if err != nil || events.Resync() != 24*time.Hour || events.MaxStaleAge != 24*time.Hour+10*time.Minute {
		t.Errorf("--refresh.resync-interval=24h: resync %s, max stale age %s, %v", events.Resync(), events.MaxStaleAge, err)
	}
	if c, err := parse(t, "audit"); err != nil || c.Command != CommandAudit || c.Audit.Output != "table" {
		t.Errorf("audit: command %q, --output %q, error %v", c.Command, c.Audit.Output, err)
	}
}

func TestParsedValues(t *testing.T) {
	token := writeFile(t, "s3cret\n")
	c, err := parse(t, "--aws.region=eu-west-1,us-east-1", "--aws.region=eu-west-1",
		"--aws.assume-role=arn:aws:iam::123456789012:role/audit,external-id=x", "--no-aws.own-account",
		"--metrics.tag-label=team", "--metrics.tag-label=cost-center", "--metrics.tag-label=team",
		"--shard=kms-exporter-2", "--total-shards=3", "--remediation.enabled", "--remediation.token-file="+token)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"eu-west-1", "us-east-1"}; !reflect.DeepEqual(c.AWS.Regions, want) {
		t.Errorf("regions %v, want %v", c.AWS.Regions, want)
	}
	if want := []awsclient.Role{{ARN: "arn:aws:iam::123456789012:role/audit", ExternalID: "x"}}; !reflect.DeepEqual(c.AWS.Roles, want) {
		t.Errorf("roles %v, want %v", c.AWS.Roles, want)
	}
	// The same tag twice is one label.
	if want := []string{"team", "cost-center"}; !reflect.DeepEqual(c.TagLabels, want) || !reflect.DeepEqual(c.Metrics.TagLabels, want) {
		t.Errorf("tag labels %v, collector's %v, want %v", c.TagLabels, c.Metrics.TagLabels, want)
	}
	if c.Shard != 2 {
		t.Errorf("shard %d, want 2", c.Shard)
	}
	if c.Remediation.TokenHash == ([32]byte{}) {
		t.Error("the token was not read")
	}
}

func TestErrorsNameTheFlag(t *testing.T) {
	empty := writeFile(t, "\n")
	twoTokens := writeFile(t, "first\nsecond\n")
	badYAML := writeFile(t, "tls_server_config: [\n")
	missingCert := writeFile(t, "tls_server_config:\n  key_file: key.pem\n")
	for _, tt := range []struct {
		args []string
		name string
	}{
		{[]string{"--aws.region=moon-base-1x"}, "--aws.region"},
		{[]string{"--aws.region=all,eu-west-1"}, "--aws.region"},
		{[]string{"--aws.assume-role=arn:aws:s3:::bucket"}, "--aws.assume-role"},
		{[]string{"--no-aws.own-account"}, "--aws.assume-role"},
		{[]string{"--aws.max-concurrency=0"}, "--aws.max-concurrency"},
		{[]string{"--aws.requests-per-second=-1"}, "--aws.requests-per-second"},
		{[]string{"--aws.list-key-rotations-per-second=-1"}, "--aws.list-key-rotations-per-second"},
		{[]string{"--aws.list-key-rotations-per-second=fast"}, "--aws.list-key-rotations-per-second"},
		{[]string{"--compliance.max-key-material-age-days=-1"}, "--compliance.max-key-material-age-days"},
		{[]string{"--compliance.max-key-material-age-days=36501"}, "--compliance.max-key-material-age-days"},
		{[]string{"audit", "--compliance.max-key-material-age-days=year"}, "--compliance.max-key-material-age-days"},
		{[]string{"--aws.max-attempts=0"}, "--aws.max-attempts"},
		{[]string{"--aws.max-attempts=x"}, "--aws.max-attempts"},
		{[]string{"--aws.timeout=0s"}, "--aws.timeout"},
		{[]string{"--refresh.interval=0s"}, "--refresh.interval"},
		{[]string{"--refresh.interval=often"}, "--refresh.interval"},
		{[]string{"--refresh.max-stale-age=-1s"}, "--refresh.max-stale-age"},
		{[]string{"--compliance.max-rotation-period-days=89"}, "--compliance.max-rotation-period-days"},
		{[]string{"--compliance.max-rotation-period-days=2561"}, "--compliance.max-rotation-period-days"},
		{[]string{"--metrics.tag-label=cost.center", "--metrics.tag-label=cost-center"}, "--metrics.tag-label"},
		{[]string{"--metrics.tag-label=cost-center", "--metrics.tag-label=cost_center"}, "--metrics.tag-label"},
		{[]string{"--metrics.per-key=some"}, "--metrics.per-key"},
		{[]string{"--metrics.per-key=ALL"}, "--metrics.per-key"},
		{[]string{"--metrics.allowlist=kms_keys", "--metrics.denylist=kms_key_info"}, "--metrics.denylist"},
		{[]string{"--metrics.allowlist=kms_key_("}, "--metrics.allowlist"},
		{[]string{"--metrics.denylist=kms_key_info", "--metrics.denylist=[a-"}, "--metrics.denylist"},
		{[]string{"--metrics.allowlist=kms_key"}, "--metrics.allowlist"},
		{[]string{"--metrics.denylist=kms_key_info", "--metrics.denylist=kms_no_such_family"}, "--metrics.denylist"},
		{[]string{"--metrics.allowlist="}, "--metrics.allowlist"},
		{[]string{"audit", "--metrics.denylist=kms_key"}, "--metrics.denylist"},
		{[]string{"--remediation.requests-per-second=0"}, "--remediation.requests-per-second"},
		{[]string{"--remediation.timeout=0s"}, "--remediation.timeout"},
		{[]string{"--remediation.aws-requests-per-second=-1"}, "--remediation.aws-requests-per-second"},
		{[]string{"--remediation.enabled"}, "--remediation.token-file"},
		{[]string{"--remediation.enabled", "--remediation.token-file=" + empty}, "--remediation.token-file"},
		{[]string{"--remediation.enabled", "--remediation.token-file=" + twoTokens}, "--remediation.token-file"},
		{[]string{"--remediation.alert-name="}, "--remediation.alert-name"},
		{[]string{"--remediation.enabled", "--remediation.token-file=/nonexistent"}, "--remediation.token-file"},
		{[]string{"--shard=first"}, "--shard"},
		{[]string{"--shard=2"}, "--total-shards"},
		{[]string{"--total-shards=0"}, "--total-shards"},
		{[]string{"--web.telemetry-path=metrics"}, "--web.telemetry-path"},
		{[]string{"--web.telemetry-path=/-/ready"}, "--web.telemetry-path"},
		{[]string{"--web.shutdown-timeout=0s"}, "--web.shutdown-timeout"},
		{[]string{"--web.listen-address=nonsense"}, "--web.listen-address"},
		{[]string{"--web.listen-address=:10863", "--web.listen-address=:port"}, "--web.listen-address"},
		{[]string{"--web.config.file=/nonexistent"}, "--web.config.file"},
		{[]string{"--web.config.file=" + badYAML}, "--web.config.file"},
		{[]string{"--web.config.file=" + missingCert}, "--web.config.file"},
		{[]string{"--log.level=loud"}, "--log.level"},
		{[]string{"audit", "--output=xml"}, "--output"},
		{[]string{"audit", "--output=HTML"}, "--output"},
		{[]string{"remediate"}, "--key-id"},
		{[]string{"remediate", "--key-id=k", "--all-noncompliant"}, "--key-id"},
		{[]string{"remediate", "--key-id=k", "--rotation-period-days=400"}, "--rotation-period-days"},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			_, err := parse(t, tt.args...)
			var e *Error
			if !errors.As(err, &e) || e.Name != tt.name {
				t.Errorf("error %v, want one naming %s", err, tt.name)
			}
		})
	}
}

// TestMetricFamilyLists: --metrics.allowlist keeps, --metrics.denylist drops,
// the families whose whole name an entry matches; --metrics.per-key is kept.
func TestMetricFamilyLists(t *testing.T) {
	names := collector.FamilyNames()
	without := func(drop ...string) []string {
		return slices.DeleteFunc(slices.Clone(names), func(n string) bool { return slices.Contains(drop, n) })
	}
	for _, tt := range []struct {
		args []string
		want []string // the families served, in FamilyNames' order
	}{
		{nil, names},
		{[]string{"--metrics.allowlist=kms_key_compliance|kms_keys"}, []string{"kms_key_compliance", "kms_keys"}},
		{[]string{"--metrics.allowlist=kms_keys", "--metrics.allowlist=kms_key_info"}, []string{"kms_key_info", "kms_keys"}},
		// Anchored around the whole expression, not its first and last alternatives.
		{[]string{"--metrics.allowlist=kms_keys|kms_key_info"}, []string{"kms_key_info", "kms_keys"}},
		{[]string{"--metrics.allowlist=kms_refresh_.*"}, []string{"kms_refresh_duration_seconds", "kms_refresh_success"}},
		{[]string{"--metrics.denylist=kms_key_info"}, without("kms_key_info")},
		{[]string{"--metrics.denylist=kms_key_info|kms_keys_stale", "--metrics.denylist=kms_key_stale"},
			without("kms_key_info", "kms_keys_stale", "kms_key_stale")},
		{[]string{"--metrics.per-key=attention", "--metrics.denylist=kms_key_.*_timestamp_seconds"},
			without("kms_key_creation_timestamp_seconds", "kms_key_deletion_timestamp_seconds",
				"kms_key_last_rotation_timestamp_seconds", "kms_key_next_rotation_timestamp_seconds", "kms_key_rotation_exemption_expiry_timestamp_seconds")},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			c, err := parse(t, tt.args...)
			if err != nil {
				t.Fatal(err)
			}
			served := names
			if c.Metrics.Include != nil {
				served = slices.DeleteFunc(slices.Clone(names), func(n string) bool { return !c.Metrics.Include(n) })
			}
			if !slices.Equal(served, tt.want) {
				t.Errorf("served %v, want %v", served, tt.want)
			}
			if want := slices.Contains(tt.args, "--metrics.per-key=attention"); (c.Metrics.PerKey == collector.PerKeyAttention) != want {
				t.Errorf("per-key %q, want attention: %v", c.Metrics.PerKey, want)
			}
		})
	}
	// An entry matches whole names only: a prefix, a suffix or a middle
	// part of a name matches no family.
	for _, arg := range []string{"--metrics.allowlist=kms_key", "--metrics.allowlist=key_info", "--metrics.denylist=key_compliance",
		"--metrics.denylist=kms_keys_stal", "--metrics.denylist=ms_keys"} {
		flag, _, _ := strings.Cut(arg, "=")
		var e *Error
		if _, err := parse(t, arg); !errors.As(err, &e) || e.Name != flag || !strings.Contains(err.Error(), "matches no metric family") {
			t.Errorf("%s: error %v, want one naming %s: matches no metric family", arg, err, flag)
		}
	}
}

// TestKingpinErrorsNameTheFlag covers kingpin's own errors, which name the flag in their text.
func TestKingpinErrorsNameTheFlag(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--no-such-flag"}, "unknown long flag '--no-such-flag'"},
		{[]string{"--aws.region"}, "expected argument for flag '--aws.region'"},
		{[]string{"--aws.region", "--refresh.interval=1m"}, "expected argument for flag '--aws.region'"},
		{[]string{"--refresh.interval=1m", "--metrics.tag-label"}, "expected argument for flag '--metrics.tag-label'"},
		{[]string{"remediate", "--key-id"}, "expected argument for flag '--key-id'"},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			if _, err := parse(t, tt.args...); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want %q", err, tt.want)
			}
		})
	}
}

// TestServeOnlyChecks: the other commands neither serve nor read the serve command's files.
func TestServeOnlyChecks(t *testing.T) {
	for _, command := range []string{"audit", "remediate --all-noncompliant"} {
		args := append(strings.Fields(command), "--web.config.file=/nonexistent", "--web.telemetry-path=/-/healthy",
			"--remediation.enabled", "--remediation.token-file=/nonexistent")
		if _, err := parse(t, args...); err != nil {
			t.Errorf("%s: %v", command, err)
		}
	}
}

func TestTelemetryPath(t *testing.T) {
	for path, ok := range map[string]bool{
		"/metrics": true, "/": true, "/exporter/metrics": true, "/api/v1/remediate/": true,
		"": false, "metrics": false, "GET /metrics": false, "/metrics/{x}": false, "/{": false, "/a b": false, "/m?x": false,
		"/-/healthy": false, "/-/ready": false, "/api/v1/remediate": false, "/api/v1/remediate/bulk": false, "/api/v1/alertmanager": false,
	} {
		if err := validateTelemetryPath(path); (err == nil) != ok {
			t.Errorf("%q: %v, want ok=%v", path, err, ok)
		}
	}
}

func TestValidWebConfigFile(t *testing.T) {
	plainHTTP := writeFile(t, "http_server_config:\n  http2: false\n")
	if _, err := parse(t, "--web.config.file="+plainHTTP); err != nil {
		t.Error(err)
	}
}

// setAWSEnv leaves the SDK only the environment and config file given.
func setAWSEnv(t *testing.T, configFile string, env ...string) {
	t.Helper()
	for _, v := range []string{"AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"} {
		t.Setenv(v, "")
	}
	t.Setenv("AWS_CONFIG_FILE", configFile)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", os.DevNull)
	for i := 0; i+1 < len(env); i += 2 {
		t.Setenv(env[i], env[i+1])
	}
}

func TestLoadAWSRegion(t *testing.T) {
	profiles := writeFile(t, "[default]\nregion = eu-central-1\n[profile bad]\nregion = moon\n")
	for _, tt := range []struct {
		name    string
		args    []string
		env     []string
		regions []string
		err     string // the name of what is at fault
	}{
		{"AWS_REGION", nil, []string{"AWS_REGION", "eu-west-1"}, []string{"eu-west-1"}, ""},
		{"profile", nil, nil, []string{"eu-central-1"}, ""},
		{"flag first", []string{"--aws.region=us-east-1"}, []string{"AWS_REGION", "eu-west-1"}, []string{"us-east-1"}, ""},
		{"bad AWS_REGION", nil, []string{"AWS_REGION", "moon"}, nil, "AWS_REGION"},
		{"bad AWS_DEFAULT_REGION", nil, []string{"AWS_DEFAULT_REGION", "eu_west_1"}, nil, "AWS_DEFAULT_REGION"},
		{"bad profile", nil, []string{"AWS_PROFILE", "bad"}, nil, `region of AWS profile "bad"`},
		// The SDK's region also serves STS, Organizations and account calls.
		{"bad AWS_REGION with a flag", []string{"--aws.region=us-east-1"}, []string{"AWS_REGION", "moon"}, nil, "AWS_REGION"},
		{"none", nil, []string{"AWS_CONFIG_FILE", os.DevNull}, nil, "--aws.region"},
		{"none, discovered", []string{"--aws.region=all"}, []string{"AWS_CONFIG_FILE", os.DevNull}, nil, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			setAWSEnv(t, profiles, tt.env...)
			c, err := parse(t, tt.args...)
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.LoadAWS(context.Background())
			var e *Error
			switch {
			case tt.err == "" && err != nil:
				t.Errorf("error %v", err)
			case tt.err != "" && (!errors.As(err, &e) || !strings.HasPrefix(e.Name, tt.err)):
				t.Errorf("error %v, want one naming %s", err, tt.err)
			case tt.err == "" && !reflect.DeepEqual(c.AWS.Regions, tt.regions):
				t.Errorf("regions %v, want %v", c.AWS.Regions, tt.regions)
			}
		})
	}
}

// TestReadsHistory: the rotation history is read when serving, for the
// audit outputs that show it, and wherever the material age policy needs
// it; not for the audit table or the remediate command otherwise (each run
// would make one ListKeyRotations call per key for nothing).
func TestReadsHistory(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want bool
	}{
		{nil, true},
		{[]string{"audit"}, false},
		{[]string{"audit", "--output=json"}, true},
		{[]string{"audit", "--output=csv"}, true},
		{[]string{"audit", "--output=html"}, true},
		{[]string{"audit", "--compliance.max-key-material-age-days=400"}, true},
		{[]string{"remediate", "--all-noncompliant"}, false},
		{[]string{"remediate", "--all-noncompliant", "--compliance.max-key-material-age-days=400"}, true},
	} {
		c, err := parse(t, tt.args...)
		if err != nil {
			t.Fatal(err)
		}
		if got := c.ReadsHistory(); got != tt.want {
			t.Errorf("%v: ReadsHistory = %v, want %v", tt.args, got, tt.want)
		}
	}
}

// TestPolicyWarning: a material age limit less than a week above the
// longest compliant period is accepted, with a warning naming both flags.
func TestPolicyWarning(t *testing.T) {
	for _, tt := range []struct {
		args []string
		warn bool
	}{
		{nil, false},
		{[]string{"--compliance.max-key-material-age-days=372"}, false},
		{[]string{"--compliance.max-key-material-age-days=371"}, true},
		{[]string{"--compliance.max-key-material-age-days=90", "--compliance.max-rotation-period-days=90"}, true},
	} {
		c, err := parse(t, tt.args...)
		if err != nil {
			t.Fatal(err)
		}
		w := c.PolicyWarning()
		if (w != "") != tt.warn || (tt.warn && (!strings.Contains(w, "--compliance.max-key-material-age-days") || !strings.Contains(w, "--compliance.max-rotation-period-days"))) {
			t.Errorf("%v: warning %q, want one: %v", tt.args, w, tt.warn)
		}
	}
}
