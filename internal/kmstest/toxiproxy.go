package kmstest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"testing"
	"time"

	"github.com/kms-exporter/kms_exporter/internal/harness"
)

// Toxiproxy is a running Shopify toxiproxy: a real TCP proxy that injects
// faults at the connection level (latency, resets, stalled connections,
// cut-off data), next to the HTTP-level Proxy, which answers as AWS does.
type Toxiproxy struct {
	api string
}

// StartToxiproxy runs toxiproxy-server ($TOXIPROXY_BIN, or built from the
// version pinned in tools/go.mod) on a free loopback port until the test ends.
func StartToxiproxy(t testing.TB) *Toxiproxy {
	t.Helper()
	bin, err := toxiproxy.binary()
	if err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	cmd := exec.Command(bin, "-host", "127.0.0.1", "-port", port)
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting toxiproxy: %v", err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	x := &Toxiproxy{api: "http://127.0.0.1:" + port}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		resp, err := http.Get(x.api + "/version")
		if err == nil {
			resp.Body.Close()
			return x
		}
		if time.Now().After(deadline) {
			t.Fatalf("toxiproxy did not answer within 30s: %v", err)
		}
	}
}

func freePort(t testing.TB) string {
	t.Helper()
	_, port, _ := net.SplitHostPort(harness.FreeAddr(t))
	return port
}

func (x *Toxiproxy) call(t testing.TB, method, path string, body any) {
	t.Helper()
	var buf bytes.Buffer
	if body != nil {
		if err := json.NewEncoder(&buf).Encode(body); err != nil {
			t.Fatal(err)
		}
	}
	req, err := http.NewRequest(method, x.api+path, &buf)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("toxiproxy %s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		t.Fatalf("toxiproxy %s %s: %s", method, path, resp.Status)
	}
}

// Proxy opens a proxy to upstream (an http:// URL) on a free loopback port
// and returns its URL.
func (x *Toxiproxy) Proxy(t testing.TB, name, upstream string) string {
	t.Helper()
	listen := "127.0.0.1:" + freePort(t)
	x.call(t, http.MethodPost, "/proxies", map[string]any{"name": name, "listen": listen,
		"upstream": upstream[len("http://"):], "enabled": true})
	return "http://" + listen
}

// AddToxic adds a fault to a proxy's responses (downstream): for example
// type "latency" {latency: ms}, "reset_peer" {timeout: ms}, "timeout" {timeout: 0}
// (data stops, the connection stays open), "limit_data" {bytes: n}.
func (x *Toxiproxy) AddToxic(t testing.TB, proxy, name, typ string, attrs map[string]any) {
	t.Helper()
	x.call(t, http.MethodPost, fmt.Sprintf("/proxies/%s/toxics", proxy),
		map[string]any{"name": name, "type": typ, "stream": "downstream", "toxicity": 1.0, "attributes": attrs})
}

// RemoveToxic removes a fault.
func (x *Toxiproxy) RemoveToxic(t testing.TB, proxy, name string) {
	t.Helper()
	x.call(t, http.MethodDelete, fmt.Sprintf("/proxies/%s/toxics/%s", proxy, name), nil)
}
