package inventory_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/kms-exporter/kms_exporter/inventory"
)

// slowSource counts the refreshes in progress at once.
type slowSource struct {
	running, most, total atomic.Int32
}

func (s *slowSource) Targets(context.Context) []inventory.Target {
	n := s.running.Add(1)
	for {
		m := s.most.Load()
		if n <= m || s.most.CompareAndSwap(m, n) {
			break
		}
	}
	time.Sleep(20 * time.Millisecond)
	s.total.Add(1)
	s.running.Add(-1)
	return nil
}

// TestRefreshesNeverOverlap: the ticker, however short, and refreshes asked
// for from elsewhere at the same time run one after the other.
func TestRefreshesNeverOverlap(t *testing.T) {
	src := &slowSource{}
	r := inventory.NewRefresher(src, newAuditor(), discard(), nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx, time.Millisecond); close(done) }()
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 5 {
				r.Refresh(ctx)
			}
		})
	}
	wg.Wait()
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if m := src.most.Load(); m != 1 {
		t.Errorf("%d refreshes ran at once, want 1", m)
	}
	if n := src.total.Load(); n < 21 {
		t.Errorf("only %d refreshes ran", n)
	}
}

// blockingKMS lists three keys and describes them; while block is set, every
// DescribeKey waits until its context ends.
type blockingKMS struct {
	inventory.KMS // the calls not overridden are never made
	block         atomic.Bool
	started       chan struct{}
}

func (b *blockingKMS) ListKeys(context.Context, *kms.ListKeysInput, ...func(*kms.Options)) (*kms.ListKeysOutput, error) {
	out := &kms.ListKeysOutput{}
	for _, id := range []string{"k1", "k2", "k3"} {
		out.Keys = append(out.Keys, types.KeyListEntry{KeyId: aws.String(id), KeyArn: aws.String("arn:aws:kms:eu-west-1:111122223333:key/" + id)})
	}
	return out, nil
}

func (b *blockingKMS) ListAliases(context.Context, *kms.ListAliasesInput, ...func(*kms.Options)) (*kms.ListAliasesOutput, error) {
	return &kms.ListAliasesOutput{}, nil
}

func (b *blockingKMS) DescribeKey(ctx context.Context, in *kms.DescribeKeyInput, _ ...func(*kms.Options)) (*kms.DescribeKeyOutput, error) {
	if b.block.Load() {
		select {
		case b.started <- struct{}{}:
		default:
		}
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return &kms.DescribeKeyOutput{KeyMetadata: &types.KeyMetadata{KeyId: in.KeyId, KeyManager: types.KeyManagerTypeCustomer,
		KeySpec: types.KeySpecSymmetricDefault, KeyState: types.KeyStateEnabled}}, nil
}

func (b *blockingKMS) GetKeyRotationStatus(context.Context, *kms.GetKeyRotationStatusInput, ...func(*kms.Options)) (*kms.GetKeyRotationStatusOutput, error) {
	return &kms.GetKeyRotationStatusOutput{KeyRotationEnabled: true}, nil
}

func (b *blockingKMS) ListKeyRotations(context.Context, *kms.ListKeyRotationsInput, ...func(*kms.Options)) (*kms.ListKeyRotationsOutput, error) {
	return &kms.ListKeyRotationsOutput{}, nil
}

// TestShutdownPublishesNoPartialSnapshot: a refresh cut short by shutdown
// publishes nothing; what was published before stays.
func TestShutdownPublishesNoPartialSnapshot(t *testing.T) {
	api := &blockingKMS{started: make(chan struct{}, 1)}
	updates := newCounted()
	auditor := newAuditor()
	auditor.MaxStale = time.Hour
	r := inventory.NewRefresher(inventory.StaticTargets{{Region: "eu-west-1", API: api}}, auditor, discard(), updates)
	first := r.Refresh(context.Background())
	if len(first.Targets) != 1 || len(first.Targets[0].Keys) != 3 || !first.Targets[0].Success {
		t.Fatalf("first refresh: %+v", first.Targets)
	}
	api.block.Store(true)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-api.started; cancel() }()
	if got := r.Refresh(ctx); got != first {
		t.Error("the refresh cut short returned a new snapshot")
	}
	if r.Snapshot() != first || updates.n.Load() != 1 {
		t.Errorf("a partial snapshot was published (%d updates)", updates.n.Load())
	}
}

// describedKMS answers ListKeys and DescribeKey from fixed metadata, and
// GetKeyRotationStatus with rotation off.
type describedKMS struct {
	inventory.KMS // the calls not overridden are never made
	keys          map[string]*types.KeyMetadata
}

func (d *describedKMS) ListKeys(context.Context, *kms.ListKeysInput, ...func(*kms.Options)) (*kms.ListKeysOutput, error) {
	out := &kms.ListKeysOutput{}
	for id := range d.keys {
		out.Keys = append(out.Keys, types.KeyListEntry{KeyId: aws.String(id), KeyArn: aws.String("arn:aws:kms:eu-west-1:111122223333:key/" + id)})
	}
	return out, nil
}

func (d *describedKMS) ListAliases(context.Context, *kms.ListAliasesInput, ...func(*kms.Options)) (*kms.ListAliasesOutput, error) {
	return &kms.ListAliasesOutput{}, nil
}

func (d *describedKMS) DescribeKey(_ context.Context, in *kms.DescribeKeyInput, _ ...func(*kms.Options)) (*kms.DescribeKeyOutput, error) {
	return &kms.DescribeKeyOutput{KeyMetadata: d.keys[*in.KeyId]}, nil
}

func (d *describedKMS) GetKeyRotationStatus(context.Context, *kms.GetKeyRotationStatusInput, ...func(*kms.Options)) (*kms.GetKeyRotationStatusOutput, error) {
	return &kms.GetKeyRotationStatusOutput{}, nil
}

func (d *describedKMS) ListKeyRotations(context.Context, *kms.ListKeyRotationsInput, ...func(*kms.Options)) (*kms.ListKeyRotationsOutput, error) {
	return &kms.ListKeyRotationsOutput{}, nil
}

func (d *describedKMS) ListResourceTags(context.Context, *kms.ListResourceTagsInput, ...func(*kms.Options)) (*kms.ListResourceTagsOutput, error) {
	return &kms.ListResourceTagsOutput{}, nil
}

// TestKeySpecOfOlderAnswers: the key spec comes from KeySpec, or from the
// deprecated CustomerMasterKeySpec where an older answer carries only that.
func TestKeySpecOfOlderAnswers(t *testing.T) {
	meta := func(spec, cmkSpec types.KeySpec) *types.KeyMetadata {
		return &types.KeyMetadata{KeyManager: types.KeyManagerTypeCustomer, KeyState: types.KeyStateEnabled,
			KeySpec: spec, CustomerMasterKeySpec: types.CustomerMasterKeySpec(cmkSpec)} //nolint:staticcheck // the older field
	}
	api := &describedKMS{keys: map[string]*types.KeyMetadata{
		"current-rsa": meta(types.KeySpecRsa2048, ""),
		"older-rsa":   meta("", types.KeySpecRsa2048),
		"older-sym":   meta("", types.KeySpecSymmetricDefault),
	}}
	_, keys, err := newAuditor().Audit(context.Background(), inventory.Target{Region: "eu-west-1", API: api})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"current-rsa": "not_applicable/asymmetric", "older-rsa": "not_applicable/asymmetric",
		"older-sym": "noncompliant/rotation_disabled"}
	for _, k := range keys {
		if got := string(k.Verdict.Get().Status) + "/" + k.Verdict.Get().Reason; got != want[k.ID] {
			t.Errorf("%s: %s, want %s", k.ID, got, want[k.ID])
		}
	}
	if len(keys) != len(want) {
		t.Errorf("%d keys, want %d", len(keys), len(want))
	}
}

// TestReadyAfterFirstRefresh: /-/ready answers 503 until the first refresh
// has finished, then 200.
func TestReadyAfterFirstRefresh(t *testing.T) {
	r := inventory.NewRefresher(inventory.StaticTargets{}, newAuditor(), discard(), nil)
	ready := func() int {
		rec := httptest.NewRecorder()
		r.ReadyHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/-/ready", nil))
		return rec.Code
	}
	if code := ready(); code != http.StatusServiceUnavailable {
		t.Errorf("before the first refresh: %d, want 503", code)
	}
	r.Refresh(context.Background())
	if code := ready(); code != http.StatusOK {
		t.Errorf("after the first refresh: %d, want 200", code)
	}
}
