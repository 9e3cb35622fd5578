package kmstest

import (
	"bufio"
	"errors"
	"io"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kms-exporter/kms_exporter/internal/harness"
)

// MotoVersion is the version of moto's server the tests are written
// against; `make deps` installs it where it is missing.
const MotoVersion = "5.2.1"

// Moto is a running moto server: a second, independent AWS emulator (SQS,
// EventBridge, CloudFormation, KMS, ...) on one loopback endpoint.
type Moto struct {
	URL  string
	cmd  *exec.Cmd
	done chan struct{}
}

var motoRunning = regexp.MustCompile(`Running on (http://127\.0\.0\.1:\d+)`)

// StartMoto runs moto's server (python3 -m moto.server) on a free loopback
// port for a test and stops it when the test ends. Without python3 or
// moto the test is skipped, or fails when harness.RequireTools.
func StartMoto(t testing.TB) *Moto {
	t.Helper()
	python := harness.Tool(t, "python3")
	if out, err := exec.Command(python, "-c", "import moto; print(moto.__version__)").Output(); err != nil ||
		strings.TrimSpace(string(out)) != MotoVersion {
		msg := "moto " + MotoVersion + " is not installed for " + python + " (make deps)"
		if harness.RequireTools(t) {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	m, err := startMoto(python)
	if err != nil {
		t.Fatalf("starting moto: %v", err)
	}
	t.Cleanup(m.Close)
	return m
}

// StartMotoServer runs moto's server outside a test (the demo): python3
// from PATH, with moto installed (`make deps`).
func StartMotoServer() (*Moto, error) { return startMoto("python3") }

func startMoto(python string) (*Moto, error) {
	// Port 0: the server picks a free port and prints it, so that two
	// never race for one.
	cmd := exec.Command(python, "-u", "-m", "moto.server", "-H", "127.0.0.1", "-p", "0")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	m := &Moto{cmd: cmd, done: make(chan struct{})}
	url := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if g := motoRunning.FindStringSubmatch(sc.Text()); g != nil {
				url <- g[1]
				break
			}
		}
		_, _ = io.Copy(io.Discard, out)
		_ = cmd.Wait()
		close(m.done)
	}()
	select {
	case m.URL = <-url:
		return m, nil
	case <-m.done:
		return nil, errors.New("moto exited before it started listening")
	case <-time.After(60 * time.Second):
		m.Close()
		return nil, errors.New("moto did not start listening within 60s")
	}
}

// Close stops the server.
func (m *Moto) Close() {
	if m.cmd.Process != nil {
		_ = m.cmd.Process.Kill()
	}
	<-m.done
}
