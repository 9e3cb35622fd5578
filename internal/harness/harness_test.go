package harness

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
)

// envVar is the variable as users set it.
const envVar = "KMS_EXPORTER_REQUIRE_TOOLS"

// recorder is a testing.TB that records Fatalf and Skipf, which end the
// goroutine as the real ones do.
type recorder struct {
	testing.TB
	failed, skipped string
}

func (r *recorder) Helper() {}

func (r *recorder) Fatalf(format string, args ...any) {
	r.failed = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (r *recorder) Skipf(format string, args ...any) {
	r.skipped = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// tool calls Tool with a recorder.
func tool(name string) (r *recorder, path string) {
	r = &recorder{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		path = Tool(r, name)
	}()
	<-done
	return r, path
}

func TestToolMissing(t *testing.T) {
	for _, tt := range []struct {
		value string
		fail  bool
	}{
		{"", false}, {"0", false}, {"false", false}, {"FALSE", false}, {"no", false},
		{"1", true}, {"true", true}, {"True", true}, {"yes", true}, {"YES", true},
	} {
		t.Run(envVar+"="+tt.value, func(t *testing.T) {
			t.Setenv(envVar, tt.value)
			r, _ := tool("kms-exporter-no-such-tool")
			switch {
			case tt.fail && r.failed == "":
				t.Errorf("a missing tool did not fail the test (skipped: %q)", r.skipped)
			case !tt.fail && r.skipped == "":
				t.Errorf("a missing tool did not skip the test (failed: %q)", r.failed)
			}
		})
	}
}

func TestToolFound(t *testing.T) {
	t.Setenv(envVar, "1")
	if r, path := tool("sh"); path == "" || r.failed != "" || r.skipped != "" {
		t.Errorf("sh: path %q, failed %q, skipped %q", path, r.failed, r.skipped)
	}
}

func TestRequireToolsRefusesOtherValues(t *testing.T) {
	for _, v := range []string{"maybe", "2", "y"} {
		t.Setenv(envVar, v)
		// Found or not, the test fails and says which variable to fix.
		for _, name := range []string{"sh", "kms-exporter-no-such-tool"} {
			if r, _ := tool(name); !strings.Contains(r.failed, envVar) {
				t.Errorf("%s=%s, %s: failed %q, skipped %q; want a failure naming %s", envVar, v, name, r.failed, r.skipped, envVar)
			}
		}
	}
}
