package inventory_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when a test leaves goroutines behind (refresh
// workers, refreshers, emulator readers).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
