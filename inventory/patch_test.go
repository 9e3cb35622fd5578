package inventory_test

import (
	"context"
	"testing"
	"time"

	"github.com/kms-exporter/kms_exporter/awsclient"
	"github.com/kms-exporter/kms_exporter/internal/kmstest"
	"github.com/kms-exporter/kms_exporter/inventory"
	"github.com/kms-exporter/kms_exporter/model"
	"github.com/kms-exporter/kms_exporter/policy"
)

// gatedTargets holds a refresh at its start until released.
type gatedTargets struct {
	targets inventory.StaticTargets
	started chan struct{}
	release chan struct{}
}

func (g *gatedTargets) Targets(ctx context.Context) []inventory.Target {
	if g.started != nil {
		close(g.started)
		<-g.release
		g.started = nil
	}
	return g.targets
}

// TestChangeSurvivesARefreshThatStartedBefore: a change published while a
// refresh runs is kept on that refresh's (older) result, and dropped once a
// refresh that started after it has read the truth.
func TestChangeSurvivesARefreshThatStartedBefore(t *testing.T) {
	srv, ids := kmstest.StartMixedT(t, "eu-west-1")
	f := newFactory(srv.URL)
	src := &gatedTargets{targets: inventory.StaticTargets{{Region: "eu-west-1", API: f.KMS(awsclient.Role{}, "eu-west-1")}}}
	updates := newCounted()
	r := inventory.NewRefresher(src, newAuditor(), discard(), updates)
	ctx := ctxT(t)
	r.Refresh(ctx)
	id := ids["legacy-billing"]
	verdict := func() policy.Status {
		_, k := r.Snapshot().Locate(kmstest.DefaultAccount, "eu-west-1", id)
		return k.Verdict.Get().Status
	}

	src.started, src.release = make(chan struct{}), make(chan struct{})
	done := make(chan struct{})
	go func() { r.Refresh(ctx); close(done) }()
	<-src.started
	// KMS is not changed: only the published state says rotation is on.
	change := model.RotationChange{AccountID: kmstest.DefaultAccount, KeyID: id, Rotation: policy.Rotation{Enabled: true, PeriodDays: 365}, At: time.Now()}
	published := r.Snapshot()
	r.ApplyRotationChanges(change)
	if v := verdict(); v != policy.Compliant {
		t.Fatalf("after the change: %s", v)
	}
	// A published snapshot is never changed: the change made a new one.
	if _, k := published.Locate(kmstest.DefaultAccount, "eu-west-1", id); k.Verdict.Get().Status != policy.Noncompliant || k.Rotation.Enabled {
		t.Errorf("the change modified the snapshot published before it: %s", k.Verdict.Get().Status)
	}
	close(src.release)
	<-done
	if v := verdict(); v != policy.Compliant {
		t.Errorf("a refresh that started before the change undid it: %s", v)
	}
	r.Refresh(ctx)
	if v := verdict(); v != policy.Noncompliant {
		t.Errorf("a refresh that started after the change must show KMS's state: %s", v)
	}
	if n := updates.n.Load(); n != 4 {
		t.Errorf("%d snapshots published, want 4 (3 refreshes and the change)", n)
	}
}
