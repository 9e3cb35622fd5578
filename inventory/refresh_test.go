package inventory_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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
	r := inventory.NewRefresher(src, newAuditor(), discard())
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
