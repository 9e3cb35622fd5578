// Command kms_exporter audits the automatic key rotation of every AWS KMS key
// in the configured accounts and regions and serves the verdicts to Prometheus.
// Its sub-commands audit once (for CI) and remediate from the command line.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
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
	"github.com/prometheus/exporter-toolkit/web"
	"golang.org/x/time/rate"

	"github.com/kms-exporter/kms_exporter/awsclient"
	"github.com/kms-exporter/kms_exporter/collector"
	"github.com/kms-exporter/kms_exporter/config"
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
		MaxStale: cfg.MaxStaleAge, Now: time.Now}
	kmsCollector := collector.New(cfg.TagLabels, logger)
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
		"remediation", cfg.Remediation.Enabled)
	if w := cfg.Remediation.TokenWarning; w != "" {
		logger.Warn("--remediation.token-file: "+w, "file", cfg.Remediation.TokenFile)
	}
	registry := prometheus.NewRegistry()
	// The snapshot's metrics are not in the registry: kmsCollector.Handler
	// serves them, encoded once per refresh, after the registry's.
	registry.MustRegister(
		factory, remediator.Metrics(), resolver, refresher.Metrics(),
		versioncollector.NewCollector("kms_exporter"),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)

	mux := http.NewServeMux()
	metricsPath := cfg.Web.TelemetryPath
	mux.Handle(metricsPath, promhttp.InstrumentMetricHandler(registry, kmsCollector.Handler(registry, logger)))
	mux.HandleFunc(config.PathHealthy, func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "Healthy") })
	mux.Handle(config.PathReady, refresher.ReadyHandler())
	api := &remediate.API{TokenHash: cfg.Remediation.TokenHash, Limiter: rate.NewLimiter(rate.Limit(cfg.Remediation.RequestsPerSecond), 5),
		AlertNames: cfg.Remediation.AlertNames, Timeout: cfg.Remediation.Timeout, Logger: logger}
	if cfg.Remediation.Enabled {
		api.Remediator = remediator
	}
	api.Register(mux)
	if metricsPath != "/" {
		landing, err := web.NewLandingPage(web.LandingConfig{
			Name:        "KMS Exporter",
			Description: "Audits automatic rotation of AWS KMS keys",
			Version:     version.Info(),
			Links: []web.LandingLinks{
				{Address: metricsPath, Text: "Metrics"},
				{Address: config.PathHealthy, Text: "Health"},
				{Address: config.PathReady, Text: "Readiness", Description: "ready once the first refresh has finished"},
			},
		})
		if err != nil {
			return 0, fmt.Errorf("building the landing page: %w", err)
		}
		mux.Handle("/", landing)
	}

	go refresher.Run(ctx, cfg.RefreshInterval)

	server := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second}
	served := make(chan error, 1)
	go func() { served <- web.ListenAndServe(server, cfg.Web.Flags, logger) }()
	select {
	case err := <-served:
		return 0, fmt.Errorf("serving: %w", err)
	case <-ctx.Done():
		stop() // a second signal ends the process at once
	}
	logger.Info("stopping: waiting for the requests in flight", "timeout", cfg.Web.ShutdownTimeout)
	if err := shutdown(server, api, cfg.Web.ShutdownTimeout); err != nil {
		return 0, err
	}
	logger.Info("stopped")
	return report.ExitOK, nil
}

// shutdown stops accepting requests and waits, within timeout, for those in
// flight to finish: remediations are then cancelled, and each logs and
// counts what it did before its answer is written.
func shutdown(server *http.Server, api *remediate.API, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	drained := make(chan error, 1)
	go func() { drained <- api.Drain(ctx) }()
	err := server.Shutdown(ctx)
	if derr := <-drained; derr != nil {
		// The answers of the cancelled remediations are being written: a
		// moment more for them.
		tail, cancelTail := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancelTail()
		err = errors.Join(derr, server.Shutdown(tail))
	}
	if err != nil {
		return fmt.Errorf("requests still in flight after --web.shutdown-timeout=%s: %w", timeout, err)
	}
	return nil
}
