package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kms-exporter/kms_exporter/internal/harness"
	"github.com/kms-exporter/kms_exporter/internal/kmstest"
)

// docker runs a docker command and returns its standard output.
func docker(t *testing.T, args ...string) string {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := exec.Command("docker", args...)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		t.Fatalf("docker %s: %v\n%s%s", strings.Join(args, " "), err, out.String(), errOut.String())
	}
	return strings.TrimSpace(out.String())
}

// importImage makes an image from a folder, as a registry-less machine can.
func importImage(t *testing.T, dir, tag string, changes ...string) {
	t.Helper()
	args := []string{"import"}
	for _, c := range changes {
		args = append(args, "--change", c)
	}
	tar := exec.Command("tar", "-C", dir, "-c", ".")
	imp := exec.Command("docker", append(args, "-", tag)...)
	pipe, err := tar.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	imp.Stdin = pipe
	var errOut bytes.Buffer
	imp.Stderr = &errOut
	if err := tar.Start(); err != nil {
		t.Fatal(err)
	}
	if err := imp.Run(); err != nil {
		t.Fatalf("docker import %s: %v\n%s", tag, err, errOut.String())
	}
	if err := tar.Wait(); err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	raw, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, raw, mode); err != nil {
		t.Fatal(err)
	}
}

// TestDockerImage builds the Dockerfile with local stand-ins for its public
// base images, offline, then runs the image against local-kms and scrapes it.
func TestDockerImage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a Docker image")
	}
	if err := exec.Command("docker", "info").Run(); err != nil {
		if harness.RequireTools(t) {
			t.Fatalf("no Docker engine: %v", err)
		}
		t.Skip("no Docker engine")
	}
	const busybox = "/bin/busybox"
	if _, err := os.Stat(busybox); err != nil {
		if harness.RequireTools(t) {
			t.Fatal("busybox not installed (make deps: busybox-static)")
		}
		t.Skip("busybox not installed")
	}
	suffix := fmt.Sprintf("%d", time.Now().UnixNano())
	goImage, baseImage, image := "kms-exporter-test/go:"+suffix, "kms-exporter-test/base:"+suffix, "kms-exporter-test/exporter:"+suffix
	// The legacy builder leaves the build stage's layers dangling: remove
	// those this test made, and nothing that was there before.
	before := map[string]bool{}
	for _, id := range strings.Fields(docker(t, "images", "-aq", "--no-trunc")) {
		before[id] = true
	}
	t.Cleanup(func() {
		_ = exec.Command("docker", "rmi", "-f", image, goImage, baseImage).Run()
		out, _ := exec.Command("docker", "images", "-aq", "--no-trunc", "--filter", "dangling=true").Output()
		for _, id := range strings.Fields(string(out)) {
			if !before[id] {
				_ = exec.Command("docker", "rmi", "-f", id).Run()
			}
		}
	})

	// The Go stand-in: this machine's toolchain and a static busybox shell.
	goroot := strings.TrimSpace(string(must(exec.Command("go", "env", "GOROOT").Output())))
	goDir := t.TempDir()
	if out, err := exec.Command("cp", "-a", goroot, filepath.Join(goDir, "go")).CombinedOutput(); err != nil {
		t.Fatalf("copying GOROOT: %v %s", err, out)
	}
	copyFile(t, busybox, filepath.Join(goDir, "bin", "busybox"), 0o755)
	for _, applet := range []string{"sh", "mkdir", "cp", "ls"} {
		if err := os.Symlink("busybox", filepath.Join(goDir, "bin", applet)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(goDir, "tmp"), 0o1777); err != nil {
		t.Fatal(err)
	}
	importImage(t, goDir, goImage, "ENV PATH=/go/bin:/bin", "ENV GOROOT=/go", "ENV HOME=/tmp", "ENV GOCACHE=/tmp/gocache", "ENV GOPATH=/tmp/gopath")

	// The base stand-in: CA certificates only, as distroless static has.
	baseDir := t.TempDir()
	copyFile(t, "/etc/ssl/certs/ca-certificates.crt", filepath.Join(baseDir, "etc", "ssl", "certs", "ca-certificates.crt"), 0o644)
	if err := os.MkdirAll(filepath.Join(baseDir, "tmp"), 0o1777); err != nil {
		t.Fatal(err)
	}
	importImage(t, baseDir, baseImage)

	// The build context: the tracked files and the vendored modules (the build runs offline).
	ctx := t.TempDir()
	files := strings.Fields(string(must(exec.Command("git", "ls-files", "--cached", "--others", "--exclude-standard").Output())))
	for _, f := range files {
		if info, err := os.Stat(f); err == nil && info.Mode().IsRegular() {
			copyFile(t, f, filepath.Join(ctx, f), info.Mode())
		}
	}
	vendor := exec.Command("go", "mod", "vendor", "-o", filepath.Join(ctx, "vendor"))
	vendor.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOPROXY=off")
	if out, err := vendor.CombinedOutput(); err != nil {
		t.Fatalf("go mod vendor: %v\n%s", err, out)
	}
	docker(t, "build", "--network=none", "-q", "-t", image, "--build-arg", "GO_IMAGE="+goImage,
		"--build-arg", "BASE_IMAGE="+baseImage, "--build-arg", "VERSION=9.9.9-test", ctx)

	var config []struct {
		Config struct {
			User         string
			Entrypoint   []string
			ExposedPorts map[string]any
		}
	}
	if err := json.Unmarshal([]byte(docker(t, "image", "inspect", image)), &config); err != nil || len(config) != 1 {
		t.Fatalf("inspect: %v", err)
	}
	c := config[0].Config
	if c.User != "65534:65534" || len(c.Entrypoint) != 1 || c.Entrypoint[0] != "/bin/kms_exporter" || c.ExposedPorts["10863/tcp"] == nil {
		t.Errorf("image config: user %q, entrypoint %v, ports %v", c.User, c.Entrypoint, c.ExposedPorts)
	}

	// Run it as users do, read-only, against local-kms; host networking keeps it on loopback.
	srv, ids := kmstest.StartMixedT(t, "eu-west-1")
	addr := harness.FreeAddr(t)
	name := "kms-exporter-test-" + suffix
	docker(t, "run", "-d", "--name", name, "--network=host", "--read-only", "--cap-drop=ALL",
		"-e", "AWS_ENDPOINT_URL_KMS="+srv.URL, "-e", "AWS_REGION=eu-west-1",
		"-e", "AWS_ACCESS_KEY_ID=x", "-e", "AWS_SECRET_ACCESS_KEY=x", "-e", "AWS_EC2_METADATA_DISABLED=true",
		image, "--web.listen-address="+addr, "--refresh.interval=3s")
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := exec.Command("docker", "logs", name).CombinedOutput()
			t.Logf("container log:\n%s", out)
		}
		_ = exec.Command("docker", "rm", "-f", name).Run()
	})
	harness.Poll(t, 60*time.Second, func() string {
		if code, _ := get(t, "http://"+addr+"/-/ready"); code != 200 {
			return "the container is not ready"
		}
		return ""
	})
	_, metrics := get(t, "http://"+addr+"/metrics")
	if !strings.Contains(metrics, complianceLine(ids["legacy-billing"], "noncompliant", "rotation_disabled")) ||
		!strings.Contains(metrics, `kms_exporter_build_info{branch="unknown",goarch=`) || !strings.Contains(metrics, `version="9.9.9-test"`) {
		t.Errorf("metrics from the container lack the verdicts or the build version:\n%.2000s", metrics)
	}
	if user := docker(t, "inspect", "--format", "{{.Config.User}}", name); user != "65534:65534" {
		t.Errorf("container user %q", user)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
