package remediate

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/kms-exporter/kms_exporter/internal/harness"
)

// Await returns the next value of ch, or fails the test when the code under
// test never sends it (a broken lock or drain must fail, not hang).
func Await[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(60 * time.Second):
		t.Fatalf("after 60s: %s", what)
		panic("unreachable")
	}
}

// LogBuffer collects JSON log lines written from the server's goroutines;
// the tests of both packages read it.
type LogBuffer struct{ harness.Buffer }

// Lines returns the logged lines whose message is msg.
func (s *LogBuffer) Lines(msg string) []map[string]any {
	var out []map[string]any
	for _, l := range strings.Split(s.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}
