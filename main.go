// Command kms_exporter audits the automatic key rotation of every AWS KMS key
// in the configured accounts and regions and serves the verdicts to Prometheus.
// Its sub-commands audit once (for CI) and remediate from the command line.
package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	versioncollector "github.com/prometheus/client_golang/prometheus/collectors/version"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/promslog"
	"github.com/prometheus/common/promslog/flag"
	"github.com/prometheus/common/version"
	"github.com/prometheus/exporter-toolkit/web"
	"github.com/prometheus/exporter-toolkit/web/kingpinflag"
	"golang.org/x/time/rate"

	"github.com/kms-exporter/kms_exporter/awsclient"
	"github.com/kms-exporter/kms_exporter/collector"
	"github.com/kms-exporter/kms_exporter/inventory"
	"github.com/kms-exporter/kms_exporter/policy"
	"github.com/kms-exporter/kms_exporter/remediate"
	"github.com/kms-exporter/kms_exporter/report"
)

// defaultListenAddress is outside the crowded 9100-9999 exporter range.
const defaultListenAddress = ":10863"

func main() {
	app := kingpin.New("kms_exporter", "Audits automatic rotation of AWS KMS keys and exposes the verdicts as Prometheus metrics.")
	var (
		webConfig      = kingpinflag.AddFlags(app, defaultListenAddress)
		metricsPath    = app.Flag("web.telemetry-path", "Path under which to expose metrics.").Default("/metrics").String()
		regionFlags    = app.Flag("aws.region", `Region to audit; repeatable or comma-separated; "all" discovers the enabled regions of each account. Default: the SDK's configured region (AWS_REGION, profile).`).Envar("KMS_EXPORTER_REGIONS").Strings()
		roleFlags      = app.Flag("aws.assume-role", "Role to assume to audit another account: ROLE_ARN[,external-id=ID]; repeatable.").Strings()
		orgRole        = app.Flag("aws.organizations-role-name", "Audit every active member account of the AWS Organization (organizations:ListAccounts from the management or a delegated administrator account) by assuming this role name in each.").String()
		orgExternalID  = app.Flag("aws.organizations-external-id", "External id for the --aws.organizations-role-name roles.").Envar("KMS_EXPORTER_ORGANIZATIONS_EXTERNAL_ID").String()
		ownAccount     = app.Flag("aws.own-account", "Audit the account of the exporter's own credentials too (use --no-aws.own-account to audit only assumed roles).").Default("true").Bool()
		concurrency    = app.Flag("aws.max-concurrency", "Most AWS requests in flight at once, over all accounts and regions.").Default("16").Int()
		requestRate    = app.Flag("aws.requests-per-second", "Client-side limit of KMS requests per second per account and region (the KMS quota is shared with the account's applications); 0 = no limit.").Default("100").Float64()
		maxAttempts    = app.Flag("aws.max-attempts", "Attempts per AWS call, retries of throttled and failed calls included.").Default("5").Int()
		timeout        = app.Flag("aws.timeout", "Timeout of one AWS request attempt.").Default("10s").Duration()
		interval       = app.Flag("refresh.interval", "How often the inventory is refreshed from AWS; scrapes serve the latest refresh.").Default("5m").Duration()
		maxStale       = app.Flag("refresh.max-stale-age", "How long a key whose reads fail for a transient reason (throttling, 5xx, timeouts, connection errors) keeps the verdict of its last successful read (marked stale) before it is unknown; 0 = three times --refresh.interval.").Default("0s").Duration()
		maxPeriod      = app.Flag("compliance.max-rotation-period-days", "Longest compliant rotation period; a rotating key with a longer period is noncompliant.").Default("365").Int()
		exemptionTag   = app.Flag("compliance.exemption-tag", "Tag key that exempts a key when its value (the reason) is not empty; TAG-until holds the last day, YYYY-MM-DD.").Default("kms-rotation-exempt").String()
		tagLabels      = app.Flag("metrics.tag-label", "Tag key whose value is exposed as label tag_<key> on kms_key_info; repeatable (each adds ListResourceTags calls).").Strings()
		remEnabled     = app.Flag("remediation.enabled", "Serve the remediation API (POST /api/v1/remediate, /api/v1/remediate/bulk, /api/v1/alertmanager); needs --remediation.token-file.").Bool()
		remTokenFile   = app.Flag("remediation.token-file", "File holding the bearer token remediation requests must carry.").Envar("KMS_EXPORTER_REMEDIATION_TOKEN_FILE").String()
		remAllowTags   = app.Flag("remediation.allow-tag", "Only remediate keys carrying this tag (KEY or KEY=VALUE); repeatable; with --remediation.allow-alias-prefix, a key matching either is allowed.").Strings()
		remAllowAlias  = app.Flag("remediation.allow-alias-prefix", "Only remediate keys with an alias starting with this prefix (e.g. alias/team-a/); repeatable.").Strings()
		remRate        = app.Flag("remediation.requests-per-second", "Remediation API requests accepted per second (burst 5); beyond it: 429.").Default("1").Float64()
		remTimeout     = app.Flag("remediation.timeout", "Time one remediation request may take.").Default("60s").Duration()
		remAWSRate     = app.Flag("remediation.aws-requests-per-second", "EnableKeyRotation calls per second per account and region, below its KMS quota (15/s; 5/s in older documentation); 0 = no limit.").Default("5").Float64()
		shardFlag      = app.Flag("shard", "This replica's shard: a number from 0, or a name ending in -N such as a StatefulSet pod's name.").Envar("KMS_EXPORTER_SHARD").Default("0").String()
		totalShards    = app.Flag("total-shards", "Number of replicas sharing the (account, region) targets by a stable hash; 1 = no sharding.").Default("1").Int()
		promslogConfig = &promslog.Config{}

		serveCmd = app.Command("serve", "Serve metrics (and, if enabled, remediation); the default.").Default()

		auditCmd    = app.Command("audit", "Refresh once and print every key's verdict; exit 0 when nothing is noncompliant, 1 when something is, 2 on error.")
		auditOutput = auditCmd.Flag("output", "Output format.").Default("table").Enum("table", "json")

		remCmd     = app.Command("remediate", "Enable rotation on noncompliant keys (the API's eligibility rules and verification); exit 0 when all were remediated, 1 otherwise, 2 on error.")
		remKeyID   = remCmd.Flag("key-id", "Key id or ARN to remediate.").String()
		remRegion  = remCmd.Flag("region", "Region of the key (default: the only audited region).").String()
		remAccount = remCmd.Flag("account-id", "Account of the key (needed when several accounts are audited).").String()
		remAll     = remCmd.Flag("all-noncompliant", "Remediate every noncompliant key (of --region and --account-id, when given).").Bool()
		remDryRun  = remCmd.Flag("dry-run", "Check eligibility only; change nothing.").Bool()
		remPeriod  = remCmd.Flag("rotation-period-days", "Rotation period to set (90..policy maximum; default the policy maximum).").Int()
	)
	flag.AddFlags(app, promslogConfig)
	app.Version(version.Print("kms_exporter"))
	app.HelpFlag.Short('h')
	command, err := parseFlags(app, os.Args[1:])
	if err != nil {
		app.Fatalf("%v", err)
	}

	regions, discover, err := awsclient.ParseRegions(*regionFlags)
	if err != nil {
		app.Fatalf("--aws.region: %v", err)
	}
	shard, err := inventory.ParseShard(*shardFlag)
	if err != nil {
		app.Fatalf("--shard: %v", err)
	}
	if *totalShards < 1 || shard >= *totalShards {
		app.Fatalf("--total-shards: shard %d needs --total-shards of at least %d", shard, shard+1)
	}
	roles, err := parseRoles(*roleFlags, *ownAccount)
	if err != nil {
		app.Fatalf("--aws.assume-role: %v", err)
	}
	if len(roles) == 0 && *orgRole == "" {
		app.Fatalf("--aws.assume-role: nothing to audit: --no-aws.own-account needs a role or --aws.organizations-role-name")
	}
	switch {
	case *interval < time.Second:
		app.Fatalf("--refresh.interval: %s is shorter than 1s", *interval)
	case *maxStale < 0:
		app.Fatalf("--refresh.max-stale-age: must not be negative")
	case *maxPeriod < 90 || *maxPeriod > 2560:
		app.Fatalf("--compliance.max-rotation-period-days: %d is outside KMS's 90..2560", *maxPeriod)
	case *concurrency < 1:
		app.Fatalf("--aws.max-concurrency: must be at least 1")
	case *requestRate < 0:
		app.Fatalf("--aws.requests-per-second: must not be negative")
	case *maxAttempts < 1:
		app.Fatalf("--aws.max-attempts: must be at least 1")
	case *timeout <= 0:
		app.Fatalf("--aws.timeout: must be positive")
	case *remRate <= 0:
		app.Fatalf("--remediation.requests-per-second: must be positive")
	case *remTimeout <= 0:
		app.Fatalf("--remediation.timeout: must be positive")
	case *remAWSRate < 0:
		app.Fatalf("--remediation.aws-requests-per-second: must not be negative")
	case *remPeriod != 0 && (*remPeriod < 90 || *remPeriod > *maxPeriod):
		app.Fatalf("--rotation-period-days: %d is outside 90..%d (--compliance.max-rotation-period-days)", *remPeriod, *maxPeriod)
	case command == remCmd.FullCommand() && (*remKeyID == "") == !*remAll:
		app.Fatalf("--key-id: give either --key-id or --all-noncompliant")
	}
	var tokenHash [32]byte
	if *remEnabled && command == serveCmd.FullCommand() {
		if *remTokenFile == "" {
			app.Fatalf("--remediation.token-file: required with --remediation.enabled")
		}
		if tokenHash, err = remediate.ReadToken(*remTokenFile); err != nil {
			app.Fatalf("--remediation.token-file: %v", err)
		}
	}

	// Sub-commands print their results on stdout; logs go to stderr.
	logger := promslog.New(promslogConfig)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	awsConfig, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		logger.Error("loading the AWS configuration failed", "err", err)
		os.Exit(report.ExitError)
	}
	if len(regions) == 0 && !discover {
		if awsConfig.Region == "" {
			app.Fatalf("--aws.region: no region given and none configured for the SDK (AWS_REGION or a profile)")
		}
		regions = []string{awsConfig.Region}
	}

	factory := awsclient.NewFactory(awsConfig, awsclient.Options{
		RequestsPerSecond: *requestRate, MaxConcurrency: *concurrency, MaxAttempts: *maxAttempts, Timeout: *timeout})
	if *maxStale == 0 {
		*maxStale = 3 * *interval
	}
	compliance := policy.Policy{MaxRotationPeriodDays: *maxPeriod, ExemptionTag: *exemptionTag}
	auditor := &inventory.Auditor{Policy: compliance, TagLabels: *tagLabels, Workers: *concurrency, MaxStale: *maxStale, Now: time.Now}
	kmsCollector := collector.New(*tagLabels, logger)
	resolver := &inventory.Resolver{Factory: factory, Roles: roles, Regions: regions, DiscoverRegions: discover,
		OrganizationsRoleName: *orgRole, OrganizationsExternalID: *orgExternalID,
		Shard: shard, TotalShards: *totalShards, Logger: logger}
	refresher := inventory.NewRefresher(resolver, auditor, logger, kmsCollector.Update)
	remediator := &remediate.Remediator{
		Inventory:          refresher,
		Client:             func(role awsclient.Role, region string) remediate.KMS { return factory.KMS(role, region) },
		Policy:             compliance,
		AllowTags:          *remAllowTags,
		AllowAliasPrefixes: *remAllowAlias,
		Logger:             logger,
		Now:                time.Now,
		EnablesPerSecond:   *remAWSRate,
	}

	switch command {
	case auditCmd.FullCommand():
		s := refresher.Refresh(ctx)
		if err := report.WriteAudit(os.Stdout, s, *auditOutput); err != nil {
			logger.Error("writing the audit failed", "err", err)
			os.Exit(report.ExitError)
		}
		os.Exit(report.AuditExitCode(s))

	case remCmd.FullCommand():
		s := refresher.Refresh(ctx)
		if code := report.AuditExitCode(s); code == report.ExitError {
			_ = report.WriteAudit(os.Stderr, s, "table")
			logger.Error("the audit before remediation failed; nothing was changed")
			os.Exit(code)
		}
		var period *int
		if *remPeriod != 0 {
			period = remPeriod
		}
		if *remRegion == "" && len(regions) == 1 {
			*remRegion = regions[0]
		}
		var results []remediate.Result
		if *remAll {
			results, err = remediator.RemediateAll(ctx, remediate.Selector{AccountID: *remAccount, Region: *remRegion, DryRun: *remDryRun, RotationPeriodDays: period}, "command line")
			if err != nil {
				logger.Error("remediation failed", "err", err)
				os.Exit(report.ExitError)
			}
		} else {
			results = []remediate.Result{remediator.Remediate(ctx, remediate.Request{AccountID: *remAccount, Region: *remRegion,
				KeyID: *remKeyID, DryRun: *remDryRun, RotationPeriodDays: period}, "command line")}
		}
		os.Exit(report.WriteRemediations(os.Stdout, results))
	}

	logger.Info("starting kms_exporter", "version", version.Info(), "build_context", version.BuildContext(),
		"remediation", *remEnabled)
	registry := prometheus.NewRegistry()
	// The snapshot's metrics are not in the registry: kmsCollector.Handler
	// serves them, encoded once per refresh, after the registry's.
	registry.MustRegister(
		factory, remediator.Metrics(), resolver.Metrics(), refresher.Metrics(),
		versioncollector.NewCollector("kms_exporter"),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "kms_exporter_shard_ordinal",
			Help: "This replica's shard (--shard)."}, func() float64 { return float64(shard) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "kms_exporter_total_shards",
			Help: "Number of shards the (account, region) targets are split into (--total-shards)."}, func() float64 { return float64(*totalShards) }),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)

	mux := http.NewServeMux()
	mux.Handle(*metricsPath, promhttp.InstrumentMetricHandler(registry, kmsCollector.Handler(registry, logger)))
	mux.HandleFunc("/-/healthy", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "Healthy") })
	mux.HandleFunc("/-/ready", func(w http.ResponseWriter, _ *http.Request) {
		select {
		case <-refresher.Ready():
			fmt.Fprintln(w, "Ready")
		default:
			http.Error(w, "Not ready: the first refresh has not finished", http.StatusServiceUnavailable)
		}
	})
	api := &remediate.API{TokenHash: tokenHash, Limiter: rate.NewLimiter(rate.Limit(*remRate), 5), Timeout: *remTimeout, Logger: logger}
	if *remEnabled {
		api.Remediator = remediator
	}
	api.Register(mux)
	if *metricsPath != "/" {
		landing, err := web.NewLandingPage(web.LandingConfig{
			Name:        "KMS Exporter",
			Description: "Audits automatic rotation of AWS KMS keys",
			Version:     version.Info(),
			Links: []web.LandingLinks{
				{Address: *metricsPath, Text: "Metrics"},
				{Address: "/-/healthy", Text: "Health"},
				{Address: "/-/ready", Text: "Readiness", Description: "ready once the first refresh has finished"},
			},
		})
		if err != nil {
			logger.Error("building the landing page failed", "err", err)
			os.Exit(1)
		}
		mux.Handle("/", landing)
	}

	go refresher.Run(ctx, *interval)

	server := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second}
	go func() {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = server.Shutdown(shutdownCtx)
	}()
	if err := web.ListenAndServe(server, webConfig, logger); err != nil && err != http.ErrServerClosed {
		logger.Error("serving failed", "err", err)
		os.Exit(1)
	}
	logger.Info("stopped")
}

// parseFlags parses the command line and returns the selected command; a
// value kingpin refuses is reported with the name of the flag that carried it.
func parseFlags(app *kingpin.Application, args []string) (string, error) {
	command, err := app.Parse(args)
	if err == nil || strings.HasPrefix(err.Error(), "unknown") || strings.Contains(err.Error(), "--") {
		return command, err
	}
	if pc, perr := app.ParseContext(args); perr == nil {
		for _, el := range pc.Elements {
			if f, ok := el.Clause.(*kingpin.FlagClause); ok && el.Value != nil && *el.Value != "" && strings.Contains(err.Error(), *el.Value) {
				return "", fmt.Errorf("--%s: %w", f.Model().Name, err)
			}
		}
	}
	return "", err
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
