// Package harness holds what the tests of several packages share: free
// loopback ports, polling with a deadline, the real tools they run, and the
// dashboard's queries.
package harness

import (
	"bytes"
	"encoding/json"
	"fmt"
	"github.com/kms-exporter/kms_exporter/model"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Buffer is a bytes.Buffer that goroutines or a running process may write
// while the test reads it.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// FreeAddr returns a free loopback address.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// Poll retries check until it returns "" or the deadline passes, then fails
// the test with check's last word.
func Poll(t testing.TB, within time.Duration, check func() string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		msg := check()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", within, msg)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Tool returns the path of a program the tests run for real (Debian's
// promtool, amtool, prometheus, ...). Missing, it skips the test, or fails it
// when RequireTools.
func Tool(t testing.TB, name string) string {
	t.Helper()
	required := RequireTools(t)
	p, err := exec.LookPath(name)
	if err != nil {
		if required {
			t.Fatalf("%s not found: `make deps` installs it", name)
		}
		t.Skipf("%s not installed (make deps)", name)
	}
	return p
}

// requireToolsVar is set by `make test`, which installs the tools.
const requireToolsVar = "KMS_EXPORTER_REQUIRE_TOOLS"

// RequireTools tells whether a missing tool fails the test rather than skips
// it: KMS_EXPORTER_REQUIRE_TOOLS is 1, true or yes (0, false, no or unset:
// skip). Any other value fails the test.
func RequireTools(t testing.TB) bool {
	t.Helper()
	v := os.Getenv(requireToolsVar)
	switch strings.ToLower(v) {
	case "":
		return false
	case "yes":
		return true
	case "no":
		return false
	}
	required, err := strconv.ParseBool(v)
	if err != nil {
		t.Fatalf("%s=%q: want 1, true or yes to require the tools, 0, false or no to skip without them", requireToolsVar, v)
	}
	return required
}

var (
	grafanaVariable = regexp.MustCompile(`\$(__rate_interval|__range|__interval|job|instance|account_id|region)\b`)
	labelValues     = regexp.MustCompile(`^label_values\((.*),\s*[a-z_]+\)$`)
)

// DashboardQueries returns every PromQL expression of a dashboard, by where
// it is: panel targets, and the selectors of the variables' label_values
// queries. The variables are replaced as Grafana would for "All", with
// rateInterval for $__rate_interval and $__interval and rangeDur for $__range.
func DashboardQueries(t testing.TB, path, rateInterval, rangeDur string) map[string]string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
		Templating struct {
			List []struct{ Name, Type, Definition string }
		}
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatal(err)
	}
	subst := func(expr string) string {
		return grafanaVariable.ReplaceAllStringFunc(expr, func(v string) string {
			switch v {
			case "$__rate_interval", "$__interval":
				return rateInterval
			case "$__range":
				return rangeDur
			}
			return ".*"
		})
	}
	out := map[string]string{}
	for _, p := range d.Panels {
		for i, target := range p.Targets {
			out[fmt.Sprintf("panel %q, target %d", p.Title, i)] = subst(target.Expr)
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		m := labelValues.FindStringSubmatch(v.Definition)
		if m == nil {
			t.Errorf("variable %s: %q is not label_values(selector, label)", v.Name, v.Definition)
			continue
		}
		out["variable "+v.Name] = subst(m[1])
	}
	return out
}

// Keys returns pointers to copies of keys, as model.TargetState holds them.
func Keys(keys ...model.Key) []*model.Key {
	out := make([]*model.Key, len(keys))
	for i := range keys {
		k := keys[i]
		out[i] = &k
	}
	return out
}

// debianAWSCLI is where Debian's awscli puts the AWS CLI (`make deps`).
const debianAWSCLI = "/usr/bin/aws"

// AWSCLIPath returns Debian's AWS CLI where it is installed, whatever PATH puts
// first (another Python's aws-cli may come before it), else aws from PATH.
func AWSCLIPath(t testing.TB) string {
	if _, err := os.Stat(debianAWSCLI); err == nil {
		return debianAWSCLI
	}
	return Tool(t, "aws")
}

// AWSCLI runs the AWS CLI (Debian's awscli) against endpoint with static
// test credentials and no shared files, and returns its JSON output; a
// failure fails the test.
func AWSCLI(t testing.TB, endpoint, region string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(AWSCLIPath(t), append([]string{"--endpoint-url", endpoint, "--region", region, "--output", "json"}, args...)...)
	cmd.Env = append(os.Environ(), "AWS_ACCESS_KEY_ID=x", "AWS_SECRET_ACCESS_KEY=x", "AWS_CONFIG_FILE=/dev/null",
		"AWS_SHARED_CREDENTIALS_FILE=/dev/null", "AWS_EC2_METADATA_DISABLED=true", "AWS_PAGER=")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("aws %s: %v %s", strings.Join(args, " "), err, out)
	}
	return out
}

// Clock is a time a test sets and moves; safe in any goroutine. Its Now
// stands in for time.Now (an auditor's, the test proxy's).
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a Clock reading t.
func NewClock(t time.Time) *Clock { return &Clock{now: t} }

// Now is the clock's reading.
func (c *Clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }

// Add moves the clock on by d.
func (c *Clock) Add(d time.Duration) { c.mu.Lock(); c.now = c.now.Add(d); c.mu.Unlock() }

// Set sets the clock to t.
func (c *Clock) Set(t time.Time) { c.mu.Lock(); c.now = t; c.mu.Unlock() }
