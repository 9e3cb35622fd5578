package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
)

// capacityRow is a row of the README's capacity table, as make bench measured it.
type capacityRow struct {
	keys          int
	rss, peak     float64 // bytes
	cpuPerRefresh float64 // seconds of the exporter process
}

// readCapacity reads the table of the README's Capacity section.
func readCapacity(t *testing.T) map[int]capacityRow {
	t.Helper()
	f, err := os.Open("README.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows := map[int]capacityRow{}
	var header []string
	in := false
	s := bufio.NewScanner(f)
	for s.Scan() {
		line := s.Text()
		switch {
		case strings.HasPrefix(line, "### "):
			in = line == "### Capacity"
			continue
		case !in || !strings.HasPrefix(line, "|"):
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		if header == nil {
			header = cells
			continue
		}
		if strings.HasPrefix(cells[0], "---") {
			continue
		}
		col := func(name string) string {
			for i, h := range header {
				if h == name && i < len(cells) {
					return cells[i]
				}
			}
			t.Fatalf("README capacity table: no column %q in %q", name, header)
			return ""
		}
		// A figure is its first number: "1,234 MB (1.3 KB/key)" is 1234.
		number := func(name string) float64 {
			v := strings.ReplaceAll(strings.Fields(col(name))[0], ",", "")
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("README capacity table, %s: %q is not a number", name, col(name))
			}
			return n
		}
		r := capacityRow{keys: int(number("keys")), rss: number("RSS after a refresh") * (1 << 20),
			peak: number("peak RSS") * (1 << 20), cpuPerRefresh: number("exporter CPU per refresh")}
		rows[r.keys] = r
	}
	if len(rows) == 0 {
		t.Fatal("README has no capacity table under ### Capacity")
	}
	return rows
}

// The refresh interval the CPU request is averaged over: the default.
const defaultRefreshSeconds = 300

// TestShippedResourcesFitCapacity: the Deployment and the sharded
// StatefulSet (per pod) are sized for the number of keys their
// kms-exporter/sized-for-keys annotation names, from the README's capacity
// table: the memory request holds what a refresh leaves, the limit holds the
// peak with the 10% the Go runtime keeps free below it (the exporter sets
// its soft memory limit to 90% of the container's), and the CPU request is
// a refresh's CPU spread over the default interval. The Helm chart's
// defaults are the Deployment's (TestHelmMatchesKustomize).
func TestShippedResourcesFitCapacity(t *testing.T) {
	rows := readCapacity(t)
	for _, path := range []string{"deploy/kubernetes/deployment.yaml", "deploy/kubernetes/sharded/statefulset.yaml"} {
		obj := readYAML(t, path)[0]
		sized, _ := dig(obj, "metadata", "annotations", "kms-exporter/sized-for-keys").(string)
		keys, err := strconv.Atoi(sized)
		if err != nil {
			t.Errorf("%s: annotation kms-exporter/sized-for-keys %q is not a number of keys", path, sized)
			continue
		}
		row, ok := rows[keys]
		if !ok {
			t.Errorf("%s is sized for %d keys, a row the README's capacity table does not have", path, keys)
			continue
		}
		c := dig(obj, "spec", "template", "spec", "containers", 0)
		quantity := func(p ...any) float64 {
			v := fmt.Sprint(dig(c, p...))
			q, err := parseQuantity(v)
			if err != nil {
				t.Errorf("%s: resources %v = %q: %v", path, p, v, err)
			}
			return q
		}
		if got := quantity("resources", "requests", "memory"); got < row.rss {
			t.Errorf("%s: memory request %.0f MiB, below the %.0f MiB a refresh of %d keys leaves", path, got/(1<<20), row.rss/(1<<20), keys)
		}
		if got := quantity("resources", "limits", "memory"); got*0.9 < row.peak {
			t.Errorf("%s: memory limit %.0f MiB: 90%% of it is below the %.0f MiB peak at %d keys", path, got/(1<<20), row.peak/(1<<20), keys)
		}
		if got, want := quantity("resources", "requests", "cpu"), row.cpuPerRefresh/defaultRefreshSeconds; got < want {
			t.Errorf("%s: CPU request %.3f, below a refresh of %d keys spread over %d s (%.3f)", path, got, keys, defaultRefreshSeconds, want)
		}
	}
}

// parseQuantity reads a Kubernetes resource quantity of the forms manifests
// use: a decimal number with an optional suffix (Ki, Mi, Gi, Ti, k, M, G, T,
// m).
func parseQuantity(v string) (float64, error) {
	suffixes := []struct {
		s string
		f float64
	}{{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"Ti", 1 << 40}, {"k", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12}, {"m", 1e-3}}
	for _, x := range suffixes {
		if n, ok := strings.CutSuffix(v, x.s); ok {
			f, err := strconv.ParseFloat(n, 64)
			return f * x.f, err
		}
	}
	return strconv.ParseFloat(v, 64)
}

func TestParseQuantity(t *testing.T) {
	for in, want := range map[string]float64{"256Mi": 256 << 20, "1.5Gi": 1.5 * (1 << 30), "50m": 0.05, "2": 2, "500M": 5e8} {
		if got, err := parseQuantity(in); err != nil || got != want {
			t.Errorf("parseQuantity(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := parseQuantity("lots"); err == nil {
		t.Error("parseQuantity accepted \"lots\"")
	}
}
