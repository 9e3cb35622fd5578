// Command kms_exporter audits the automatic key rotation of every AWS KMS key
// in the configured accounts and regions and serves the verdicts to Prometheus.
// Its sub-commands audit once (for CI) and remediate from the command line.
package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	versioncollector "github.com/prometheus/client_golang/prometheus/collectors/version"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/promslog"
	"github.com/prometheus/common/version"
	"golang.org/x/time/rate"

	"github.com/kms-exporter/kms_exporter/awsclient"
	"github.com/kms-exporter/kms_exporter/collector"
	"github.com/kms-exporter/kms_exporter/config"
	"github.com/kms-exporter/kms_exporter/events"
	"github.com/kms-exporter/kms_exporter/inventory"
	"github.com/kms-exporter/kms_exporter/remediate"
	"github.com/kms-exporter/kms_exporter/report"
)

// main exits with report.ExitError (2) on every configuration or runtime
// error, whatever the command, so that a CI job never reads a broken run as
// the audit's or remediation's finding (report.ExitFinding, 1).
func main() {
	app := kingpin.New("kms_exporter", "Audits automatic rotation of AWS KMS keys and exposes the verdicts as Prometheus metrics.")
	cfg := config.New(app)
	app.Version(version.Print("kms_exporter"))
	app.HelpFlag.Short('h')
	// Only --help and --version end the process inside Parse, with 0.
	err := cfg.Parse(os.Args[1:])
	var awsConfig aws.Config
	if err == nil {
		awsConfig, err = cfg.LoadAWS(context.Background())
	}
	if err != nil {
		app.Errorf("%v", err)
		os.Exit(report.ExitError)
	}

	// Sub-commands print their results on stdout; logs go to stderr.
	logger := promslog.New(cfg.Log)
	setMemoryLimit("/sys/fs/cgroup", logger)
	code, err := execute(cfg, awsConfig, logger)
	if err != nil {
		logger.Error("kms_exporter failed", "err", err)
		code = report.ExitError
	}
	os.Exit(code)
}

// execute wires the exporter and runs the command; it returns the command's exit
// code, or an error.
func execute(cfg *config.Config, awsConfig aws.Config, logger *slog.Logger) (int, error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	factory := awsclient.NewFactory(awsConfig, cfg.AWS.Client)
	auditor := &inventory.Auditor{Policy: cfg.Policy, TagLabels: cfg.TagLabels, Workers: cfg.AWS.Client.MaxConcurrency,
		MaxStale: cfg.MaxStaleAge, Resync: cfg.Resync(), Now: time.Now, NoHistory: !cfg.ReadsHistory()}
	if w := cfg.PolicyWarning(); w != "" {
		logger.Warn(w)
	}
	kmsCollector := collector.New(cfg.Metrics, logger)
	resolver := &inventory.Resolver{Factory: factory, Roles: cfg.AWS.Roles, Regions: cfg.AWS.Regions, DiscoverRegions: cfg.AWS.DiscoverRegions,
		OrganizationsRoleName: cfg.AWS.OrganizationsRoleName, OrganizationsExternalID: cfg.AWS.OrganizationsExternalID,
		Shard: cfg.Shard, TotalShards: cfg.TotalShards, Logger: logger}
	// Only serving needs the metrics encoded: the commands keep the snapshot alone.
	var pub inventory.Publisher
	if cfg.Command == config.CommandServe {
		pub = kmsCollector
	}
	refresher := inventory.NewRefresher(resolver, auditor, logger, pub)
	remediator := &remediate.Remediator{
		Inventory:          refresher,
		Client:             func(arn, region string) remediate.KMS { return factory.KMS(factory.Role(arn), region) },
		Policy:             cfg.Policy,
		AllowTags:          cfg.Remediation.AllowTags,
		AllowAliasPrefixes: cfg.Remediation.AllowAliasPrefixes,
		Logger:             logger,
		Now:                time.Now,
		EnablesPerSecond:   cfg.Remediation.AWSRequestsPerSecond,
	}

	switch cfg.Command {
	case config.CommandAudit:
		return report.Audit(ctx, refresher.Refresh, os.Stdout, cfg.Audit.Output)
	case config.CommandRemediate:
		return remediator.Command(ctx, refresher.Refresh, cfg.Remediate, os.Stdout, os.Stderr)
	}

	logger.Info("starting kms_exporter", "version", version.Info(), "build_context", version.BuildContext(),
		"remediation", cfg.Remediation.Enabled, "report", cfg.Web.EnableReport)
	if w := cfg.Remediation.TokenWarning; w != "" {
		logger.Warn("--remediation.token-file: "+w, "file", cfg.Remediation.TokenFile)
	}
	reports := &report.Handler{}
	if cfg.Web.EnableReport {
		reports.Snapshot, reports.Ready = refresher.Snapshot, refresher.Ready
	}
	registry := prometheus.NewRegistry()
	// The snapshot's metrics are not in the registry (kmsCollector yields only
	// its own): kmsCollector.Handler serves them, encoded once per refresh,
	// after the registry's.
	registry.MustRegister(
		factory, remediator.Metrics(), reports.Metrics(), resolver, refresher, kmsCollector,
		versioncollector.NewCollector("kms_exporter"),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)

	api := &remediate.API{TokenHash: cfg.Remediation.TokenHash, Limiter: rate.NewLimiter(rate.Limit(cfg.Remediation.RequestsPerSecond), 5),
		AlertNames: cfg.Remediation.AlertNames, Timeout: cfg.Remediation.Timeout, Logger: logger}
	if cfg.Remediation.Enabled {
		api.Remediator = remediator
	}
	mux, err := routes(cfg.Web.TelemetryPath, promhttp.InstrumentMetricHandler(registry, kmsCollector.Handler(registry, logger)),
		refresher.ReadyHandler(), reports, api)
	if err != nil {
		return 0, err
	}
	if len(cfg.EventQueueURLs) > 0 {
		sqsConfig := awsConfig.Copy()
		if sqsConfig.Region == "" && len(cfg.AWS.Regions) > 0 {
			sqsConfig.Region = cfg.AWS.Regions[0] // for a queue URL naming no region (an emulator's)
		}
		consumer, err := events.New(events.Options{QueueURLs: cfg.EventQueueURLs, Clients: events.NewSQSClients(sqsConfig),
			Sink: refresher, Logger: logger.With("component", "events")})
		if err != nil {
			return 0, err
		}
		registry.MustRegister(consumer)
		go consumer.Run(ctx)
	}
	go refresher.Run(ctx, cfg.RefreshInterval)
	return serve(ctx, stop, mux, api, cfg.Web, logger)
}
