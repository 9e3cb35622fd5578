package inventory

import (
	"context"
	"fmt"
	"hash/fnv"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kms-exporter/kms_exporter/awsclient"
)

// Resolver turns the configured accounts and regions into targets, each with
// its client from the factory.
type Resolver struct {
	Factory *awsclient.Factory
	// Roles are the accounts; the zero Role is the exporter's own credentials.
	Roles []awsclient.Role
	// Regions are audited in every account, unless DiscoverRegions is set.
	Regions []string
	// DiscoverRegions lists each account's enabled regions at every refresh.
	DiscoverRegions bool
	// OrganizationsRoleName, when set, adds the role of that name in every
	// active member account of the organisation, listed at every refresh.
	OrganizationsRoleName   string
	OrganizationsExternalID string
	// Shard and TotalShards split the targets between replicas: this one
	// audits the targets whose ShardOf is Shard. TotalShards 0 or 1: all.
	Shard, TotalShards int
	Logger             *slog.Logger

	mu         sync.Mutex
	discovered map[awsclient.Role][]string
	members    []awsclient.Role
	once       sync.Once
	errors     *prometheus.CounterVec
}

// Metrics returns the counter of failed discoveries, kms_discovery_errors_total{kind}.
func (r *Resolver) Metrics() *prometheus.CounterVec {
	r.once.Do(func() {
		r.errors = prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kms_discovery_errors_total",
			Help: "Failed discoveries of accounts (organizations) or regions (regions); the targets found before are kept.",
		}, []string{"kind"})
		r.errors.WithLabelValues("organizations")
		r.errors.WithLabelValues("regions")
	})
	return r.errors
}

var (
	shardDesc = prometheus.NewDesc("kms_exporter_shard_ordinal",
		"This replica's shard (--shard).", nil, nil)
	totalShardsDesc = prometheus.NewDesc("kms_exporter_total_shards",
		"Number of shards the (account, region) targets are split into (--total-shards).", nil, nil)
)

// Describe implements prometheus.Collector.
func (r *Resolver) Describe(ch chan<- *prometheus.Desc) {
	r.Metrics().Describe(ch)
	ch <- shardDesc
	ch <- totalShardsDesc
}

// Collect implements prometheus.Collector: kms_discovery_errors_total and
// this replica's place among the shards.
func (r *Resolver) Collect(ch chan<- prometheus.Metric) {
	r.Metrics().Collect(ch)
	ch <- prometheus.MustNewConstMetric(shardDesc, prometheus.GaugeValue, float64(r.Shard))
	ch <- prometheus.MustNewConstMetric(totalShardsDesc, prometheus.GaugeValue, float64(max(1, r.TotalShards)))
}

// Targets implements TargetSource. When region discovery fails for an
// account, the regions found last time are used.
func (r *Resolver) Targets(ctx context.Context) []Target {
	var out []Target
	for _, role := range r.roles(ctx) {
		for _, region := range r.regions(ctx, role) {
			if ShardOf(role, region, max(1, r.TotalShards)) != r.Shard {
				continue
			}
			out = append(out, Target{Role: role, Region: region, API: r.Factory.KMS(role, region)})
		}
	}
	return out
}

// ShardOf is the shard that audits a (role, region) target: a stable hash,
// the same in every replica and every release.
func ShardOf(role awsclient.Role, region string, totalShards int) int {
	h := fnv.New32a()
	h.Write([]byte(role.ARN))
	h.Write([]byte{0})
	h.Write([]byte(region))
	return int(h.Sum32() % uint32(totalShards))
}

// ParseShard reads a --shard value: an ordinal, or a name ending in -N such
// as a StatefulSet pod's (kms-exporter-2 is shard 2).
func ParseShard(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if i := strings.LastIndexByte(s, '-'); err != nil && i > 0 {
		n, err = strconv.Atoi(s[i+1:])
	}
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is neither a shard number nor a name ending in -N", s)
	}
	return n, nil
}

// roles returns the configured roles and, with Organizations, the member
// accounts' roles; when listing them fails, those found last time are used.
func (r *Resolver) roles(ctx context.Context) []awsclient.Role {
	if r.OrganizationsRoleName == "" {
		return r.Roles
	}
	members, err := r.Factory.OrganizationRoles(ctx, r.OrganizationsRoleName, r.OrganizationsExternalID)
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.Metrics().WithLabelValues("organizations").Inc()
		r.Logger.Warn("listing the organisation's accounts failed; using the accounts found before", "err", err)
	} else {
		r.members = members
	}
	roles := append([]awsclient.Role(nil), r.Roles...)
	for _, m := range r.members {
		if !slices.ContainsFunc(roles, func(x awsclient.Role) bool { return x.ARN == m.ARN }) {
			roles = append(roles, m)
		}
	}
	return roles
}

func (r *Resolver) regions(ctx context.Context, role awsclient.Role) []string {
	if !r.DiscoverRegions {
		return r.Regions
	}
	regions, err := r.Factory.EnabledRegions(ctx, role)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.discovered == nil {
		r.discovered = map[awsclient.Role][]string{}
	}
	if err != nil {
		r.Metrics().WithLabelValues("regions").Inc()
		r.Logger.Warn("region discovery failed; using the regions found before", "role", role.ARN, "err", err)
		return r.discovered[role]
	}
	r.discovered[role] = regions
	return regions
}
