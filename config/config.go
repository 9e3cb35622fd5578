// Package config declares the exporter's flags and turns their values into a
// checked Config. Every error names the flag or the variable at fault, and
// nothing here calls AWS: a bad configuration stops the exporter before its
// first request.
package config

import (
	"context"
	"fmt"
	"net"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/prometheus/common/promslog"
	"github.com/prometheus/common/promslog/flag"
	"github.com/prometheus/exporter-toolkit/web"
	"github.com/prometheus/exporter-toolkit/web/kingpinflag"

	"github.com/kms-exporter/kms_exporter/awsclient"
	"github.com/kms-exporter/kms_exporter/collector"
	"github.com/kms-exporter/kms_exporter/events"
	"github.com/kms-exporter/kms_exporter/inventory"
	"github.com/kms-exporter/kms_exporter/policy"
	"github.com/kms-exporter/kms_exporter/remediate"
)

// defaultListenAddress is outside the crowded 9100-9999 exporter range.
const defaultListenAddress = ":10863"

// Commands.
const (
	CommandServe     = "serve"
	CommandAudit     = "audit"
	CommandRemediate = "remediate"
)

// Routes the exporter serves besides --web.telemetry-path, which may be none of them.
const (
	PathHealthy = "/-/healthy"
	PathReady   = "/-/ready"
	PathReport  = "/report"
)

var reservedPaths = []string{PathHealthy, PathReady, PathReport, remediate.PathRemediate, remediate.PathBulk, remediate.PathAlertmanager}

// Config is the exporter's configuration: the flag values, parsed and checked
// by Validate.
type Config struct {
	// Command is CommandServe, CommandAudit or CommandRemediate.
	Command string

	Web             Web
	Log             *promslog.Config
	AWS             AWS
	RefreshInterval time.Duration // --refresh.interval
	// ResyncInterval is --refresh.resync-interval, RefreshInterval when not
	// given: how often each known key is re-read.
	ResyncInterval time.Duration
	// MaxStaleAge is --refresh.max-stale-age; when not given, the resync
	// interval plus two refresh intervals (three refresh intervals by
	// default).
	MaxStaleAge time.Duration
	Policy      policy.Policy // --compliance.*
	// TagLabels are the --metrics.tag-label values, each once, in order.
	TagLabels []string
	// Metrics says which series are served: the tag labels,
	// --metrics.per-key and the metric family lists.
	Metrics     collector.Options
	Remediation Remediation
	// EventQueueURLs are the --events.sqs-queue-url values: SQS queues of
	// KMS events whose keys are re-read at once.
	EventQueueURLs []string
	Shard          int // --shard, as a number
	TotalShards    int // --total-shards
	Audit          Audit
	Remediate      remediate.CommandOptions

	app *kingpin.Application
	// The raw values Validate parses into the fields above.
	regionValues, roleValues, tagLabelValues []string
	allowFamilies, denyFamilies              []string
	ownAccount                               bool
	shardValue                               string
	listKeyRotationsRate                     float64
}

// opListKeyRotations has a client-side rate limit of its own
// (--aws.list-key-rotations-per-second).
const opListKeyRotations = "ListKeyRotations"

// maxMaterialAgeDays bounds --compliance.max-key-material-age-days (a hundred years).
const maxMaterialAgeDays = 36500

// Web holds the serve command's web.* flags.
type Web struct {
	// Flags holds --web.listen-address, --web.systemd-socket and --web.config.file.
	Flags           *web.FlagConfig
	TelemetryPath   string        // --web.telemetry-path
	ShutdownTimeout time.Duration // --web.shutdown-timeout
	// EnableReport is --web.enable-report: serve the evidence report at
	// PathReport.
	EnableReport bool
}

// AWS holds the aws.* flags.
type AWS struct {
	// Regions are the --aws.region values, or the SDK's region after LoadAWS
	// when none was given; empty with DiscoverRegions ("all").
	Regions         []string
	DiscoverRegions bool
	// Roles are the accounts to audit: the own credentials (the zero Role)
	// first unless --no-aws.own-account, then each --aws.assume-role.
	Roles                   []awsclient.Role
	OrganizationsRoleName   string            // --aws.organizations-role-name
	OrganizationsExternalID string            // --aws.organizations-external-id
	Client                  awsclient.Options // --aws.requests-per-second, max-concurrency, max-attempts, timeout
}

// Remediation holds the remediation.* flags.
type Remediation struct {
	Enabled   bool   // --remediation.enabled
	TokenFile string // --remediation.token-file
	// TokenHash is the hash of the token in TokenFile, read by Validate when
	// the serve command runs with remediation enabled; TokenWarning says
	// what the exporter should warn of (a file others may read), or "".
	TokenHash            [32]byte
	TokenWarning         string
	AlertNames           []string      // --remediation.alert-name
	AllowTags            []string      // --remediation.allow-tag
	AllowAliasPrefixes   []string      // --remediation.allow-alias-prefix
	RequestsPerSecond    float64       // --remediation.requests-per-second
	Timeout              time.Duration // --remediation.timeout
	AWSRequestsPerSecond float64       // --remediation.aws-requests-per-second
}

// Audit holds the audit command's flags.
type Audit struct {
	Output string // --output: table, json, csv or html
}

// Error is a configuration error: Name is the flag (--aws.region) or the
// variable (AWS_REGION) at fault.
type Error struct {
	Name string
	Err  error
}

func (e *Error) Error() string { return e.Name + ": " + e.Err.Error() }

func (e *Error) Unwrap() error { return e.Err }

func flagError(flag string, format string, args ...any) *Error {
	return &Error{Name: "--" + flag, Err: fmt.Errorf(format, args...)}
}

// New declares the exporter's flags and commands on app and returns the
// Config that Parse fills.
func New(app *kingpin.Application) *Config {
	c := &Config{app: app, Log: &promslog.Config{}}
	c.Web.Flags = kingpinflag.AddFlags(app, defaultListenAddress)
	app.Flag("web.telemetry-path", "Path under which to expose metrics.").Default("/metrics").StringVar(&c.Web.TelemetryPath)
	app.Flag("web.enable-report", "Serve the evidence report (every key with its verdict, rotation history and material age, as the audit command's --output=html; ?format=csv for CSV) read-only at "+PathReport+", behind --web.config.file's authentication like /metrics.").BoolVar(&c.Web.EnableReport)
	app.Flag("web.shutdown-timeout", "On SIGTERM, how long the requests in flight may take to finish before the exporter stops.").Default("30s").DurationVar(&c.Web.ShutdownTimeout)

	app.Flag("aws.region", `Region to audit; repeatable or comma-separated; "all" discovers the enabled regions of each account. Default: the SDK's configured region (AWS_REGION, profile).`).Envar("KMS_EXPORTER_REGIONS").StringsVar(&c.regionValues)
	app.Flag("aws.assume-role", "Role to assume to audit another account: ROLE_ARN[,external-id=ID]; repeatable.").StringsVar(&c.roleValues)
	app.Flag("aws.organizations-role-name", "Audit every active member account of the AWS Organization (organizations:ListAccounts from the management or a delegated administrator account) by assuming this role name in each.").StringVar(&c.AWS.OrganizationsRoleName)
	app.Flag("aws.organizations-external-id", "External id for the --aws.organizations-role-name roles.").Envar("KMS_EXPORTER_ORGANIZATIONS_EXTERNAL_ID").StringVar(&c.AWS.OrganizationsExternalID)
	app.Flag("aws.own-account", "Audit the account of the exporter's own credentials too (use --no-aws.own-account to audit only assumed roles).").Default("true").BoolVar(&c.ownAccount)
	app.Flag("aws.max-concurrency", "Most AWS requests in flight at once, over all accounts and regions.").Default("16").IntVar(&c.AWS.Client.MaxConcurrency)
	app.Flag("aws.requests-per-second", "Client-side limit of KMS requests per second per account and region (the KMS quota is shared with the account's applications); 0 = no limit.").Default("100").Float64Var(&c.AWS.Client.RequestsPerSecond)
	app.Flag("aws.list-key-rotations-per-second", "Client-side limit of ListKeyRotations requests per second per account and region, apart from --aws.requests-per-second (its KMS quota is 100/s, shared with the account's applications; the history of a key is read when it is first seen, then only after it rotates); 0 = no limit.").Default("25").Float64Var(&c.listKeyRotationsRate)
	app.Flag("aws.max-attempts", "Attempts per AWS call, retries of throttled and failed calls included.").Default("5").IntVar(&c.AWS.Client.MaxAttempts)
	app.Flag("aws.timeout", "Timeout of one AWS request attempt.").Default("10s").DurationVar(&c.AWS.Client.Timeout)

	app.Flag("refresh.interval", "How often the inventory is refreshed from AWS; scrapes serve the latest refresh.").Default("5m").DurationVar(&c.RefreshInterval)
	app.Flag("refresh.resync-interval", "How often each key already known is re-read (its rotation status, metadata and tags), spread evenly over the interval; every refresh still lists the keys, reads new ones and re-reads those whose last read failed. With --events.sqs-queue-url, changes are read when their events arrive and a long resync (24h) is the safety net; 0 = --refresh.interval: every key at every refresh.").Default("0s").DurationVar(&c.ResyncInterval)
	app.Flag("events.sqs-queue-url", "SQS queue fed by an EventBridge rule with KMS events (CloudTrail API calls and KMS's own events, see docs/events.md): the keys they name are re-read at once, and a message is deleted once their new state is published; repeatable. Needs sqs:ReceiveMessage, sqs:DeleteMessage and sqs:GetQueueAttributes on the queue.").Envar("KMS_EXPORTER_EVENTS_SQS_QUEUE_URL").StringsVar(&c.EventQueueURLs)
	app.Flag("refresh.max-stale-age", "How long after its last successful read a key whose reads fail for a transient reason (throttling, 5xx, timeouts, connection errors) keeps that read's verdict (marked stale) before it is unknown; 0 = --refresh.resync-interval plus two --refresh.interval (three --refresh.interval by default).").Default("0s").DurationVar(&c.MaxStaleAge)
	app.Flag("compliance.max-rotation-period-days", "Longest compliant rotation period; a rotating key with a longer period is noncompliant.").Default("365").IntVar(&c.Policy.MaxRotationPeriodDays)
	app.Flag("compliance.max-key-material-age-days", "Oldest compliant key material, in days: a key whose current material (its last rotation, or its creation) is older is noncompliant (key_material_too_old), and a key with automatic rotation off rotated on demand within it is compliant (rotated_on_demand). Needs kms:ListKeyRotations. 0 = the material's age is not judged.").Default("0").IntVar(&c.Policy.MaxKeyMaterialAgeDays)
	app.Flag("compliance.exemption-tag", "Tag key that exempts a key when its value (the reason) is not empty; TAG-until holds the last day, YYYY-MM-DD.").Default("kms-rotation-exempt").StringVar(&c.Policy.ExemptionTag)
	app.Flag("metrics.tag-label", "Tag key whose value is exposed as label tag_<key> on kms_key_info; repeatable (each adds ListResourceTags calls).").StringsVar(&c.tagLabelValues)
	app.Flag("metrics.per-key", "Which keys have per-key series: all, or attention (only noncompliant, unknown, exempt and stale keys, keys pending deletion, keys whose next rotation is due or whose rotating material outgrew its period, keys with 5 or fewer on-demand rotations left; kms_keys counts every key). For large inventories.").
		Default(collector.PerKeyAll).EnumVar(&c.Metrics.PerKey, collector.PerKeyAll, collector.PerKeyAttention)
	app.Flag("metrics.allowlist", "Serve only the inventory's metric families whose name matches this regular expression (anchored); repeatable. Not with --metrics.denylist.").StringsVar(&c.allowFamilies)
	app.Flag("metrics.denylist", "Do not serve the inventory's metric families whose name matches this regular expression (anchored); repeatable. Not with --metrics.allowlist.").StringsVar(&c.denyFamilies)

	app.Flag("remediation.enabled", "Serve the remediation API (POST /api/v1/remediate, /api/v1/remediate/bulk, /api/v1/alertmanager); needs --remediation.token-file.").BoolVar(&c.Remediation.Enabled)
	app.Flag("remediation.token-file", "File holding the bearer token remediation requests must carry.").Envar("KMS_EXPORTER_REMEDIATION_TOKEN_FILE").StringVar(&c.Remediation.TokenFile)
	app.Flag("remediation.allow-tag", "Only remediate keys carrying this tag (KEY or KEY=VALUE); repeatable; with --remediation.allow-alias-prefix, a key matching either is allowed.").StringsVar(&c.Remediation.AllowTags)
	app.Flag("remediation.allow-alias-prefix", "Only remediate keys with an alias starting with this prefix (e.g. alias/team-a/); repeatable.").StringsVar(&c.Remediation.AllowAliasPrefixes)
	app.Flag("remediation.requests-per-second", "Remediation API requests accepted per second (burst 5); beyond it: 429.").Default("1").Float64Var(&c.Remediation.RequestsPerSecond)
	app.Flag("remediation.timeout", "Time one remediation request may take.").Default("60s").DurationVar(&c.Remediation.Timeout)
	app.Flag("remediation.alert-name", "Alert the Alertmanager webhook acts on (its labels name the key); repeatable; other alerts are ignored.").
		Default(remediate.DefaultAlertNames...).StringsVar(&c.Remediation.AlertNames)
	app.Flag("remediation.aws-requests-per-second", "EnableKeyRotation calls per second per account and region, below its KMS quota (15/s; 5/s in older documentation); 0 = no limit.").Default("5").Float64Var(&c.Remediation.AWSRequestsPerSecond)

	app.Flag("shard", "This replica's shard: a number from 0, or a name ending in -N such as a StatefulSet pod's name.").Envar("KMS_EXPORTER_SHARD").Default("0").StringVar(&c.shardValue)
	app.Flag("total-shards", "Number of replicas sharing the (account, region) targets by a stable hash; 1 = no sharding.").Default("1").IntVar(&c.TotalShards)

	app.Command(CommandServe, "Serve metrics (and, if enabled, remediation); the default.").Default()

	audit := app.Command(CommandAudit, "Refresh once and print every key's verdict; exit 0 when nothing is noncompliant, 1 when something is, 2 on error.")
	audit.Flag("output", "Output format: table, json, csv, or html (one self-contained page: the evidence report).").Default("table").EnumVar(&c.Audit.Output, "table", "json", "csv", "html")

	rem := app.Command(CommandRemediate, "Enable rotation on noncompliant keys (the API's eligibility rules and verification); exit 0 when all were remediated, 1 otherwise, 2 on error.")
	rem.Flag("key-id", "Key id or ARN to remediate.").StringVar(&c.Remediate.KeyID)
	rem.Flag("region", "Region of the key (default: the only audited region).").StringVar(&c.Remediate.Region)
	rem.Flag("account-id", "Account of the key (needed when several accounts are audited).").StringVar(&c.Remediate.AccountID)
	rem.Flag("all-noncompliant", "Remediate every noncompliant key (of --region and --account-id, when given).").BoolVar(&c.Remediate.AllNoncompliant)
	rem.Flag("dry-run", "Check eligibility only; change nothing.").BoolVar(&c.Remediate.DryRun)
	rem.Flag("rotation-period-days", "Rotation period to set (90..policy maximum; default the policy maximum).").IntVar(&c.Remediate.RotationPeriodDays)

	flag.AddFlags(app, c.Log)
	return c
}

// Parse reads the command line args (and the flags' variables), then
// validates the values. A value a flag refuses is reported with the flag's
// name, as Validate's errors are.
func (c *Config) Parse(args []string) error {
	nameValueErrors(c.app)
	if err := missingValue(c.app, args); err != nil {
		return err
	}
	command, err := c.app.Parse(args)
	if err != nil {
		return err
	}
	c.Command = command
	return c.Validate()
}

// missingValue finds a flag given without its value: last, or followed by
// another flag. kingpin v2.4.0 drops that error when no command is named yet
// (it retries under the default command, where the value is gone).
func missingValue(app *kingpin.Application, args []string) error {
	valued := map[string]bool{}
	model := app.Model()
	flags := model.Flags
	for _, cmd := range model.Commands {
		flags = append(flags, cmd.Flags...)
	}
	for _, f := range flags {
		valued[f.Name] = !f.IsBoolFlag()
	}
	for i, arg := range args {
		if arg == "--" {
			break
		}
		if name, ok := strings.CutPrefix(arg, "--"); ok && valued[name] &&
			(i+1 == len(args) || strings.HasPrefix(args[i+1], "-") && args[i+1] != "-") {
			return fmt.Errorf("expected argument for flag '%s'", arg)
		}
	}
	return nil
}

// Validate parses the values that need it (regions, roles, shard, tag
// labels) and checks every value; the files of the serve command (web
// configuration, remediation token) are read only when it runs.
func (c *Config) Validate() error {
	var err error
	if c.AWS.Regions, c.AWS.DiscoverRegions, err = awsclient.ParseRegions(c.regionValues); err != nil {
		return &Error{Name: "--aws.region", Err: err}
	}
	if c.Shard, err = inventory.ParseShard(c.shardValue); err != nil {
		return &Error{Name: "--shard", Err: err}
	}
	if c.TotalShards < 1 || c.Shard >= c.TotalShards {
		return flagError("total-shards", "shard %d needs --total-shards of at least %d", c.Shard, c.Shard+1)
	}
	if c.AWS.Roles, err = parseRoles(c.roleValues, c.ownAccount); err != nil {
		return &Error{Name: "--aws.assume-role", Err: err}
	}
	if len(c.AWS.Roles) == 0 && c.AWS.OrganizationsRoleName == "" {
		return flagError("aws.assume-role", "nothing to audit: --no-aws.own-account needs a role or --aws.organizations-role-name")
	}
	if c.TagLabels, err = parseTagLabels(c.tagLabelValues); err != nil {
		return &Error{Name: "--metrics.tag-label", Err: err}
	}
	c.Metrics.TagLabels = c.TagLabels
	if c.Metrics.Include, err = familyFilter(c.allowFamilies, c.denyFamilies); err != nil {
		return err
	}
	c.AWS.Client.OperationRates = map[string]float64{opListKeyRotations: c.listKeyRotationsRate}
	maxPeriod := c.Policy.MaxRotationPeriodDays
	switch {
	case c.RefreshInterval < time.Second:
		return flagError("refresh.interval", "%s is shorter than 1s", c.RefreshInterval)
	case slices.Contains(c.Remediation.AlertNames, ""):
		return flagError("remediation.alert-name", "an alert name must not be empty")
	case c.ResyncInterval != 0 && c.ResyncInterval < c.RefreshInterval:
		return flagError("refresh.resync-interval", "%s is shorter than --refresh.interval (%s)", c.ResyncInterval, c.RefreshInterval)
	case c.MaxStaleAge < 0:
		return flagError("refresh.max-stale-age", "must not be negative")
	case len(c.EventQueueURLs) > 0 && c.TotalShards > 1:
		return flagError("events.sqs-queue-url", "not with --total-shards=%d: every shard would poll the queue and drop the events of the others' accounts and regions as not audited", c.TotalShards)
	case !policy.ValidRotationPeriod(maxPeriod):
		return flagError("compliance.max-rotation-period-days", "%d is outside KMS's %d..%d", maxPeriod,
			policy.MinRotationPeriodDays, policy.MaxRotationPeriodDays)
	case c.AWS.Client.MaxConcurrency < 1:
		return flagError("aws.max-concurrency", "must be at least 1")
	case c.AWS.Client.RequestsPerSecond < 0:
		return flagError("aws.requests-per-second", "must not be negative")
	case c.AWS.Client.OperationRates[opListKeyRotations] < 0:
		return flagError("aws.list-key-rotations-per-second", "must not be negative")
	case c.Policy.MaxKeyMaterialAgeDays < 0 || c.Policy.MaxKeyMaterialAgeDays > maxMaterialAgeDays:
		return flagError("compliance.max-key-material-age-days", "%d is outside 0..%d", c.Policy.MaxKeyMaterialAgeDays, maxMaterialAgeDays)
	case c.AWS.Client.MaxAttempts < 1:
		return flagError("aws.max-attempts", "must be at least 1")
	case c.AWS.Client.Timeout <= 0:
		return flagError("aws.timeout", "must be positive")
	case c.Remediation.RequestsPerSecond <= 0:
		return flagError("remediation.requests-per-second", "must be positive")
	case c.Remediation.Timeout <= 0:
		return flagError("remediation.timeout", "must be positive")
	case c.Remediation.AWSRequestsPerSecond < 0:
		return flagError("remediation.aws-requests-per-second", "must not be negative")
	case c.Remediate.RotationPeriodDays != 0 && (c.Remediate.RotationPeriodDays < policy.MinRotationPeriodDays || c.Remediate.RotationPeriodDays > maxPeriod):
		return flagError("rotation-period-days", "%d is outside %d..%d (--compliance.max-rotation-period-days)", c.Remediate.RotationPeriodDays,
			policy.MinRotationPeriodDays, maxPeriod)
	case c.Command == CommandRemediate && (c.Remediate.KeyID == "") == !c.Remediate.AllNoncompliant:
		return flagError("key-id", "give either --key-id or --all-noncompliant")
	}
	if c.ResyncInterval == 0 {
		c.ResyncInterval = c.RefreshInterval
	}
	if c.MaxStaleAge == 0 {
		c.MaxStaleAge = c.ResyncInterval + 2*c.RefreshInterval
	}
	if c.Command == CommandServe {
		return c.validateServe()
	}
	return nil
}

// ReadsHistory tells whether the inventory reads the keys' rotation history
// (ListKeyRotations): always when serving, and for the commands whose output
// shows it or whose verdicts need it (not the audit command's table, nor the
// remediate command, without --compliance.max-key-material-age-days): each
// run of a command sees every key for the first time, one call per key.
func (c *Config) ReadsHistory() bool {
	switch {
	case c.Policy.MaxKeyMaterialAgeDays > 0, c.Command == CommandServe:
		return true
	case c.Command == CommandAudit:
		return c.Audit.Output != "table"
	}
	return false
}

// PolicyWarning says what is wrong with a policy that Validate accepts but
// that makes keys noncompliant however they rotate: a material age limit not
// at least a week above the longest compliant rotation period (a key
// rotating at that period, a day or two late, would be too old before each
// rotation). "" when nothing is.
func (c *Config) PolicyWarning() string {
	age, period := c.Policy.MaxKeyMaterialAgeDays, c.Policy.MaxRotationPeriodDays
	if age > 0 && age < period+7 {
		return fmt.Sprintf("--compliance.max-key-material-age-days=%d is less than a week above --compliance.max-rotation-period-days=%d: keys rotating at that period will be key_material_too_old before each rotation", age, period)
	}
	return ""
}

// Resync is how often a refresh re-reads a known key (inventory.Auditor's
// Resync): 0, every key at every refresh, when the resync interval is no
// longer than the refresh interval (the default), so that the jitter of the
// refreshes' start never puts a key off to the next one.
func (c *Config) Resync() time.Duration {
	if c.ResyncInterval <= c.RefreshInterval {
		return 0
	}
	return c.ResyncInterval
}

// validateServe checks the flags only the serve command uses, and reads its files.
func (c *Config) validateServe() error {
	if err := validateTelemetryPath(c.Web.TelemetryPath); err != nil {
		return &Error{Name: "--web.telemetry-path", Err: err}
	}
	if c.Web.ShutdownTimeout <= 0 {
		return flagError("web.shutdown-timeout", "must be positive")
	}
	if !*c.Web.Flags.WebSystemdSocket {
		for _, addr := range *c.Web.Flags.WebListenAddresses {
			if err := validateListenAddress(addr); err != nil {
				return &Error{Name: "--web.listen-address", Err: err}
			}
		}
	}
	if err := web.Validate(*c.Web.Flags.WebConfigFile); err != nil {
		return &Error{Name: "--web.config.file", Err: err}
	}
	for _, u := range c.EventQueueURLs {
		if _, err := events.ParseQueueURL(u); err != nil {
			return &Error{Name: "--events.sqs-queue-url", Err: err}
		}
	}
	if !c.Remediation.Enabled {
		return nil
	}
	if c.Remediation.TokenFile == "" {
		return flagError("remediation.token-file", "required with --remediation.enabled")
	}
	var err error
	if c.Remediation.TokenHash, c.Remediation.TokenWarning, err = remediate.ReadToken(c.Remediation.TokenFile); err != nil {
		return &Error{Name: "--remediation.token-file", Err: err}
	}
	return nil
}

// LoadAWS loads the SDK's configuration: variables and shared files, with no
// request to AWS. Its region (STS, Organizations and account:ListRegions
// calls use it, and the audit when no --aws.region is given) must pass the
// check --aws.region's do; the error names where it came from.
func (c *Config) LoadAWS(ctx context.Context) (aws.Config, error) {
	cfg, err := awsconfig.LoadDefaultConfig(ctx)
	if err != nil {
		return aws.Config{}, fmt.Errorf("loading the AWS configuration: %w", err)
	}
	if cfg.Region != "" && !awsclient.ValidRegion(cfg.Region) {
		return aws.Config{}, &Error{Name: regionSource(cfg),
			Err: fmt.Errorf("%q is not an AWS region name (e.g. eu-west-1)", cfg.Region)}
	}
	if len(c.AWS.Regions) == 0 && !c.AWS.DiscoverRegions {
		if cfg.Region == "" {
			return aws.Config{}, flagError("aws.region", "no region given and none configured for the SDK (AWS_REGION or a profile)")
		}
		c.AWS.Regions = []string{cfg.Region}
	}
	return cfg, nil
}

// regionSource names where the SDK found its region: the first of its
// sources that holds one, as the SDK itself resolves it.
func regionSource(cfg aws.Config) string {
	for _, source := range cfg.ConfigSources {
		switch s := source.(type) {
		case awsconfig.EnvConfig:
			if s.Region == "" {
				continue
			}
			if os.Getenv("AWS_REGION") != "" {
				return "AWS_REGION"
			}
			return "AWS_DEFAULT_REGION"
		case awsconfig.SharedConfig:
			if s.Region != "" {
				return fmt.Sprintf("region of AWS profile %q (AWS_PROFILE, AWS_CONFIG_FILE)", s.Profile)
			}
		}
	}
	return "the AWS SDK's region"
}

// parseRoles reads the --aws.assume-role values; the zero Role (own
// credentials) comes first when the own account is audited.
func parseRoles(values []string, own bool) ([]awsclient.Role, error) {
	var roles []awsclient.Role
	if own {
		roles = append(roles, awsclient.Role{})
	}
	for _, v := range values {
		r, err := awsclient.ParseRole(v)
		if err != nil {
			return nil, err
		}
		roles = append(roles, r)
	}
	return roles, nil
}

// familyFilter returns which metric families to serve from the allow and
// deny lists (kube-state-metrics' --metric-allowlist and --metric-denylist):
// nil when neither is given. Each entry is a regular expression matching a
// whole family name, and must match at least one: a typo would otherwise
// silently serve everything, or nothing.
func familyFilter(allow, deny []string) (func(string) bool, error) {
	flag, list, want := "metrics.allowlist", allow, true
	switch {
	case len(allow) > 0 && len(deny) > 0:
		return nil, flagError("metrics.denylist", "give either --metrics.allowlist or --metrics.denylist, not both")
	case len(deny) > 0:
		flag, list, want = "metrics.denylist", deny, false
	case len(allow) == 0:
		return nil, nil
	}
	names := collector.FamilyNames()
	res := make([]*regexp.Regexp, len(list))
	for i, expr := range list {
		re, err := regexp.Compile("^(?:" + expr + ")$")
		if err != nil {
			return nil, flagError(flag, "%q is not a regular expression: %v", expr, err)
		}
		if !slices.ContainsFunc(names, re.MatchString) {
			return nil, flagError(flag, "%q matches no metric family of the inventory (%s)", expr, strings.Join(names, ", "))
		}
		res[i] = re
	}
	return func(name string) bool {
		return slices.ContainsFunc(res, func(re *regexp.Regexp) bool { return re.MatchString(name) }) == want
	}, nil
}

// parseTagLabels keeps each tag key once; two keys that make the same label
// name (cost-center and cost_center) cannot both be labels of kms_key_info.
func parseTagLabels(values []string) ([]string, error) {
	var tags []string
	byLabel := map[string]string{}
	for _, tag := range values {
		label := collector.TagLabelName(tag)
		switch first, ok := byLabel[label]; {
		case !ok:
			byLabel[label] = tag
			tags = append(tags, tag)
		case first != tag:
			return nil, fmt.Errorf("%q and %q both make the label %s", first, tag, label)
		}
	}
	return tags, nil
}

// validateTelemetryPath accepts a literal path that no other route takes:
// http.ServeMux would panic on a missing leading slash or a second
// registration, and would read braces or a space as a pattern.
func validateTelemetryPath(p string) error {
	switch {
	case !strings.HasPrefix(p, "/"):
		return fmt.Errorf("%q does not start with /", p)
	case strings.ContainsAny(p, "{}?# \t\n"):
		return fmt.Errorf("%q is not a plain URL path (no braces, ?, # or spaces)", p)
	case slices.Contains(reservedPaths, p):
		return fmt.Errorf("%s is already a route of the exporter (%s)", p, strings.Join(reservedPaths, ", "))
	}
	return nil
}

// validateListenAddress checks a --web.listen-address as net.Listen will
// read it; vsock:// addresses are left to exporter-toolkit.
func validateListenAddress(addr string) error {
	if strings.HasPrefix(addr, "vsock://") {
		return nil
	}
	_, port, err := net.SplitHostPort(addr)
	if err == nil {
		_, err = net.LookupPort("tcp", port)
	}
	if err != nil {
		return fmt.Errorf("%q is not HOST:PORT: %w", addr, err)
	}
	return nil
}

// nameValueErrors makes every flag's value name the flag in its errors, so
// that a value kingpin refuses (a bad duration, number or choice) reads as
// Validate's errors do.
func nameValueErrors(app *kingpin.Application) {
	model := app.Model()
	for _, f := range model.Flags {
		nameValueError(app.GetFlag(f.Name))
	}
	for _, cmd := range model.Commands {
		for _, f := range cmd.Flags {
			nameValueError(app.GetCommand(cmd.Name).GetFlag(f.Name))
		}
	}
}

func nameValueError(f *kingpin.FlagClause) {
	m := f.Model()
	if _, done := m.Value.(namedValue); done || reflect.TypeOf(m.Value) == stringValueType {
		return
	}
	f.SetValue(namedValue{Value: m.Value, flag: m.Name})
}

// stringValueType is the type of kingpin's String flags' values. They take
// any text, so they are not wrapped: the help shows their defaults quoted
// only when it sees that type.
var stringValueType = func() reflect.Type {
	var s string
	probe := kingpin.New("probe", "")
	probe.Flag("s", "").StringVar(&s)
	return reflect.TypeOf(probe.GetFlag("s").Model().Value)
}()

// namedValue is a flag's value whose errors name the flag. It keeps the
// value's kind: kingpin asks whether a value is a bool (--no-X, no argument)
// or cumulative (repeatable).
type namedValue struct {
	kingpin.Value
	flag string
}

func (v namedValue) Set(s string) error {
	if err := v.Value.Set(s); err != nil {
		return &Error{Name: "--" + v.flag, Err: err}
	}
	return nil
}

func (v namedValue) IsBoolFlag() bool {
	b, ok := v.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

func (v namedValue) IsCumulative() bool {
	c, ok := v.Value.(interface{ IsCumulative() bool })
	return ok && c.IsCumulative()
}
