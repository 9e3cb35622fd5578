// Package kmstest runs the real local-kms emulator for tests, benchmarks and
// the demo, seeds it with sample inventories, and puts an AWS-faithful proxy
// in front of it for what the emulator cannot show (see docs/aws-semantics.md,
// section "Where local-kms and moto differ from AWS").
package kmstest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
)

// DefaultAccount is the account id local-kms reports unless told otherwise.
const DefaultAccount = "111122223333"

// RepoRoot is the top folder of this repository.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// tool is a third-party program pinned in tools/go.mod.
type tool struct {
	env, name, pkg string
	once           sync.Once
	path           string
	err            error
}

var (
	localKMS  = &tool{env: "LOCAL_KMS_BIN", name: "local-kms", pkg: "github.com/nsmithuk/local-kms"}
	toxiproxy = &tool{env: "TOXIPROXY_BIN", name: "toxiproxy-server", pkg: "github.com/Shopify/toxiproxy/v2/cmd/server"}
)

// binary returns the program's path: $env, or .bin/NAME built from the
// version pinned in tools/go.mod.
func (t *tool) binary() (string, error) {
	t.once.Do(func() {
		if p := os.Getenv(t.env); p != "" {
			t.path = p
			return
		}
		root := RepoRoot()
		t.path = filepath.Join(root, ".bin", t.name)
		// Always ask go build: it is quick when nothing changed, and it picks
		// up a new pin in tools/go.mod. Build beside, then rename, so that
		// test processes running at once never see half a file.
		tmp := fmt.Sprintf("%s.%d.tmp", t.path, os.Getpid())
		cmd := exec.Command("go", "build", "-C", filepath.Join(root, "tools"), "-o", tmp, t.pkg)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.err = fmt.Errorf("building %s: %v\n%s", t.name, err, out)
			return
		}
		t.err = os.Rename(tmp, t.path)
	})
	return t.path, t.err
}

// Binary returns the path of the local-kms program: $LOCAL_KMS_BIN, or
// .bin/local-kms built from the version pinned in tools/go.mod.
func Binary() (string, error) { return localKMS.binary() }

// Options for a local-kms instance.
type Options struct {
	Region  string // default eu-west-1
	Account string // default DefaultAccount
	// Log receives the emulator's output after start-up (it logs every request); nil discards it.
	Log io.Writer
	// SeedPath is a local-kms seed file to load at start-up; empty for none.
	SeedPath string
}

// Server is a running local-kms.
type Server struct {
	URL     string
	Region  string
	Account string
	cmd     *exec.Cmd
	dir     string
	done    chan struct{}
}

var startedOn = regexp.MustCompile(`Local KMS started on [^:]*:(\d+)`)

// Start runs local-kms on a free port with an empty database of its own.
func Start(opts Options) (*Server, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	if opts.Region == "" {
		opts.Region = "eu-west-1"
	}
	if opts.Account == "" {
		opts.Account = DefaultAccount
	}
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	dir, err := os.MkdirTemp("", "local-kms-")
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin)
	// PORT=0: the emulator picks a free port and logs it, so two never race for one.
	seed := opts.SeedPath
	if seed == "" {
		seed = filepath.Join(dir, "none.yaml")
	}
	cmd.Env = append(os.Environ(), "PORT=0", "KMS_REGION="+opts.Region, "KMS_ACCOUNT_ID="+opts.Account,
		"KMS_DATA_PATH="+filepath.Join(dir, "data"), "KMS_SEED_PATH="+seed)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	s := &Server{Region: opts.Region, Account: opts.Account, cmd: cmd, dir: dir, done: make(chan struct{})}
	port := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if m := startedOn.FindStringSubmatch(sc.Text()); m != nil {
				port <- m[1]
				break
			}
		}
		_, _ = io.Copy(opts.Log, out)
		_ = cmd.Wait()
		close(s.done)
	}()
	select {
	case p := <-port:
		s.URL = "http://127.0.0.1:" + p
		return s, nil
	case <-s.done:
		os.RemoveAll(dir)
		return nil, errors.New("local-kms exited before it started listening")
	case <-time.After(30 * time.Second):
		s.Close()
		return nil, errors.New("local-kms did not start listening within 30s")
	}
}

// StartT starts local-kms for a test and stops it when the test ends.
func StartT(t testing.TB, opts Options) *Server {
	t.Helper()
	s, err := Start(opts)
	if err != nil {
		t.Fatalf("starting local-kms: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// Close stops the emulator and removes its data.
func (s *Server) Close() error {
	if s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
	}
	<-s.done
	return os.RemoveAll(s.dir)
}

// Client returns a plain KMS client talking to url (local-kms or a proxy).
func Client(url, region string) *kms.Client {
	return kms.New(kms.Options{
		Region:       region,
		BaseEndpoint: aws.String(url),
		Credentials:  credentials.NewStaticCredentialsProvider("test", "test", ""),
	})
}

// Client returns a plain KMS client for this emulator.
func (s *Server) Client() *kms.Client { return Client(s.URL, s.Region) }
