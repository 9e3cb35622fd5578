// Package collector exposes the inventory snapshot as Prometheus metrics.
//
// The per-key metrics are built once per snapshot (in Update, on the refresh
// path) and a scrape only hands them over: a scrape never calls AWS and its
// cost does not include rebuilding tens of thousands of series.
package collector

import (
	"log/slog"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kms-exporter/kms_exporter/model"
	"github.com/kms-exporter/kms_exporter/policy"
)

const cached = " Cached: read from AWS at every refresh (--refresh.interval), not at scrape time."

var keyLabels = []string{"account_id", "region", "key_id"}

func keyDesc(name, help string, extra ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help+cached, append(append([]string{}, keyLabels...), extra...), nil)
}

func targetDesc(name, help string, extra ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help+cached, append([]string{"account_id", "region"}, extra...), nil)
}

var (
	infoLabels      = []string{"key_arn", "alias", "key_manager", "key_spec", "key_usage", "key_state", "origin", "multi_region_type"}
	rotationEnabled = keyDesc("kms_key_rotation_enabled",
		"Whether automatic rotation of the key material is enabled (1) or not (0); present only where GetKeyRotationStatus was read.")
	compliance = keyDesc("kms_key_compliance",
		"Rotation verdict of the key: always 1, one series per key, the verdict in status (compliant, noncompliant, not_applicable, unknown, exempt) and why in reason (an AWS error code for unknown).",
		"status", "reason")
	rotationPeriod = keyDesc("kms_key_rotation_period_seconds",
		"Automatic rotation period of the key, where AWS reports one.")
	nextRotation = keyDesc("kms_key_next_rotation_timestamp_seconds",
		"When AWS will next rotate the key material, where AWS reports it.")
	creation = keyDesc("kms_key_creation_timestamp_seconds",
		"When the key was created.")
	deletion = keyDesc("kms_key_deletion_timestamp_seconds",
		"When a key pending deletion will be deleted.")
	exemptionExpiry = keyDesc("kms_key_rotation_exemption_expiry_timestamp_seconds",
		"When the key's rotation exemption ends (the day after its -until tag date, 00:00 UTC).")
	exemptionInfo = keyDesc("kms_key_rotation_exemption_info",
		"Always 1 for a key carrying a rotation exemption tag; reason is the tag's text.", "reason")
	stale = keyDesc("kms_key_stale",
		"Always 1 for a key whose last read failed for a transient reason (error_code) and which still shows the verdict of its last successful read, for up to --refresh.max-stale-age.",
		"error_code")

	keysCount = targetDesc("kms_keys",
		"Number of keys by verdict status.", "status")
	staleCount = targetDesc("kms_keys_stale",
		"Number of keys showing the verdict of an earlier refresh because reading them (or listing the region) failed since; see kms_key_stale.")
	refreshSuccess = targetDesc("kms_refresh_success",
		"Whether the last refresh of this account and region succeeded (1) or failed (0); on failure the last good data is still served.")
	refreshDuration = targetDesc("kms_refresh_duration_seconds",
		"How long the last refresh of this account and region took.")
	lastRefresh = targetDesc("kms_last_refresh_timestamp_seconds",
		"When the last successful refresh of this account and region started; the age of the data served.")
)

// Collector owns the current snapshot and its metrics, encoded once when
// the snapshot is published (inventory.Publisher). It serves them
// pre-encoded through Handler, which is what the exporter serves, and as a
// prometheus.Collector (which builds the metrics anew at every collection:
// for tests and library use).
type Collector struct {
	info    *prometheus.Desc
	logger  *slog.Logger
	current atomic.Pointer[published]
}

// published is a snapshot with its encoded metrics: swapped as one.
type published struct {
	snapshot   *model.Snapshot
	exposition *exposition
}

// New returns a Collector; tagLabels are the tag keys exposed on kms_key_info
// (as labels named tag_<key>).
func New(tagLabels []string, logger *slog.Logger) *Collector {
	labels := append([]string{}, infoLabels...)
	for _, t := range tagLabels {
		labels = append(labels, TagLabelName(t))
	}
	c := &Collector{logger: logger, info: keyDesc("kms_key_info",
		"Metadata of a KMS key, always 1; alias holds the key's aliases, comma-separated and sorted.", labels...)}
	c.current.Store(&published{&model.Snapshot{TagLabels: tagLabels}, &exposition{}})
	return c
}

var invalidLabelChars = regexp.MustCompile(`[^a-zA-Z0-9_]`)

// TagLabelName is the label name for a tag key: tag_ and the key with every
// character that a label name cannot hold replaced by an underscore.
func TagLabelName(tag string) string {
	return "tag_" + invalidLabelChars.ReplaceAllString(tag, "_")
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.info, rotationEnabled, compliance, rotationPeriod, nextRotation,
		creation, deletion, exemptionExpiry, exemptionInfo, stale, keysCount, staleCount, refreshSuccess, refreshDuration, lastRefresh} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	for _, m := range c.build(c.Snapshot()) {
		ch <- m
	}
}

// Publish makes s the current snapshot, with its metrics encoded once;
// later scrapes serve the bytes as they are. Only the encoded form is kept,
// not the metrics.
func (c *Collector) Publish(s *model.Snapshot) {
	exp, err := encode(c.build(s))
	if err != nil {
		// Only an inconsistent metric set fails here: a bug, not bad input.
		// Keep serving the previous snapshot and say why.
		c.logger.Error("encoding the snapshot's metrics failed; serving the previous ones", "err", err)
		return
	}
	c.current.Store(&published{s, exp})
}

// Snapshot returns the current snapshot.
func (c *Collector) Snapshot() *model.Snapshot { return c.current.Load().snapshot }

// build makes the metrics of a snapshot.
func (c *Collector) build(s *model.Snapshot) []prometheus.Metric {
	n := 0
	for _, t := range s.Targets {
		n += 5 + len(policy.Statuses) + 5*len(t.Keys)
	}
	out := make([]prometheus.Metric, 0, n)
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		out = append(out, prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...))
	}
	for _, t := range s.Targets {
		gauge(refreshSuccess, boolValue(t.Success), t.AccountID, t.Region)
		gauge(refreshDuration, t.Duration.Seconds(), t.AccountID, t.Region)
		if !t.LastSuccess.IsZero() {
			gauge(lastRefresh, seconds(t.LastSuccess), t.AccountID, t.Region)
		}
		counts := map[policy.Status]int{}
		staleKeys := 0
		for i := range t.Keys {
			k := &t.Keys[i]
			counts[k.Verdict.Status]++
			if k.Stale {
				staleKeys++
				gauge(stale, 1, k.AccountID, k.Region, k.ID, k.ReadError)
			}
			id := []string{k.AccountID, k.Region, k.ID}
			info := slices.Concat(id, []string{k.ARN, strings.Join(k.Aliases, ","), k.Meta.KeyManager, k.Meta.KeySpec,
				k.Meta.KeyUsage, k.Meta.KeyState, k.Meta.Origin, k.MultiRegionType})
			if len(s.TagLabels) > 0 {
				values := k.TagValues
				if values == nil {
					values = make([]string, len(s.TagLabels))
				}
				info = append(info, values...)
			}
			gauge(c.info, 1, info...)
			gauge(compliance, 1, k.AccountID, k.Region, k.ID, string(k.Verdict.Status), k.Verdict.Reason)
			if r := k.Rotation; r != nil {
				gauge(rotationEnabled, boolValue(r.Enabled), id...)
				if r.PeriodDays > 0 {
					gauge(rotationPeriod, float64(r.PeriodDays)*86400, id...)
				}
				if !r.NextRotation.IsZero() {
					gauge(nextRotation, seconds(r.NextRotation), id...)
				}
			}
			if !k.CreationDate.IsZero() {
				gauge(creation, seconds(k.CreationDate), id...)
			}
			if !k.DeletionDate.IsZero() {
				gauge(deletion, seconds(k.DeletionDate), id...)
			}
			if v := k.Verdict; v.ExemptionReason != "" {
				gauge(exemptionInfo, 1, k.AccountID, k.Region, k.ID, v.ExemptionReason)
				if !v.ExemptionExpiry.IsZero() {
					gauge(exemptionExpiry, seconds(v.ExemptionExpiry), id...)
				}
			}
		}
		for _, st := range policy.Statuses {
			gauge(keysCount, float64(counts[st]), t.AccountID, t.Region, string(st))
		}
		gauge(staleCount, float64(staleKeys), t.AccountID, t.Region)
	}
	return out
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func seconds(t time.Time) float64 { return float64(t.UnixMilli()) / 1000 }
