package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/common/version"
	"github.com/prometheus/exporter-toolkit/web"

	"github.com/kms-exporter/kms_exporter/config"
	"github.com/kms-exporter/kms_exporter/remediate"
	"github.com/kms-exporter/kms_exporter/report"
)

// routes returns the exporter's HTTP routes: the metrics, health and
// readiness, the evidence report, the remediation API, and the landing page.
func routes(metricsPath string, metrics, ready http.Handler, reports *report.Handler, api *remediate.API) (*http.ServeMux, error) {
	mux := http.NewServeMux()
	mux.Handle(metricsPath, metrics)
	mux.HandleFunc(config.PathHealthy, func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "Healthy") })
	mux.Handle(config.PathReady, ready)
	mux.Handle(config.PathReport, reports)
	api.Register(mux)
	if metricsPath == "/" {
		return mux, nil
	}
	links := []web.LandingLinks{
		{Address: metricsPath, Text: "Metrics"},
		{Address: config.PathHealthy, Text: "Health"},
		{Address: config.PathReady, Text: "Readiness", Description: "ready once the first refresh has finished"},
	}
	if reports.Enabled() {
		links = append(links, web.LandingLinks{Address: config.PathReport, Text: "Evidence report",
			Description: "every key with its verdict and rotation history; ?format=csv for CSV"})
	}
	landing, err := web.NewLandingPage(web.LandingConfig{
		Name:        "KMS Exporter",
		Description: "Audits automatic rotation of AWS KMS keys",
		Version:     version.Info(),
		Links:       links,
	})
	if err != nil {
		return nil, fmt.Errorf("building the landing page: %w", err)
	}
	mux.Handle("/", landing)
	return mux, nil
}

// serve serves until ctx ends (SIGTERM), then shuts down: stop restores the
// default signal handling, so that a second signal ends the process at once.
func serve(ctx context.Context, stop func(), handler http.Handler, api *remediate.API, cfg config.Web, logger *slog.Logger) (int, error) {
	server := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second}
	served := make(chan error, 1)
	go func() { served <- web.ListenAndServe(server, cfg.Flags, logger) }()
	select {
	case err := <-served:
		return 0, fmt.Errorf("serving: %w", err)
	case <-ctx.Done():
		stop()
	}
	logger.Info("stopping: waiting for the requests in flight", "timeout", cfg.ShutdownTimeout)
	if err := shutdown(server, api, cfg.ShutdownTimeout); err != nil {
		return 0, err
	}
	logger.Info("stopped")
	return 0, nil
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
