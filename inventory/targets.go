package inventory

import (
	"context"
	"log/slog"
	"sync"

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
	Logger          *slog.Logger

	mu         sync.Mutex
	discovered map[awsclient.Role][]string
}

// Targets implements TargetSource. When region discovery fails for an
// account, the regions found last time are used.
func (r *Resolver) Targets(ctx context.Context) []Target {
	var out []Target
	for _, role := range r.Roles {
		for _, region := range r.regions(ctx, role) {
			out = append(out, Target{Role: role, Region: region, API: r.Factory.KMS(role, region)})
		}
	}
	return out
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
		r.Logger.Warn("region discovery failed; using the regions found before", "role", role.ARN, "err", err)
		return r.discovered[role]
	}
	r.discovered[role] = regions
	return regions
}
