package main

import (
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"testing"
)

func TestSetMemoryLimit(t *testing.T) {
	before := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(before) })
	cgroup := func(file, content string) string {
		root := t.TempDir()
		if file != "" {
			if err := os.MkdirAll(filepath.Dir(filepath.Join(root, file)), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(root, file), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return root
	}
	for _, tt := range []struct {
		name, file, content string
		want                int64
	}{
		{"cgroup v2 limit", "memory.max", "536870912\n", 483183820},
		{"cgroup v1 limit", "memory/memory.limit_in_bytes", "1073741824\n", 966367641},
		{"cgroup v2 without a limit", "memory.max", "max\n", 0},
		{"cgroup v1 without a limit", "memory/memory.limit_in_bytes", "9223372036854771712\n", 0},
		{"no cgroup", "", "", 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			debug.SetMemoryLimit(math.MaxInt64)
			if got := setMemoryLimit(cgroup(tt.file, tt.content), slog.New(slog.DiscardHandler)); got != tt.want {
				t.Errorf("limit set = %d, want %d", got, tt.want)
			}
			want := tt.want
			if want == 0 {
				want = math.MaxInt64
			}
			if got := debug.SetMemoryLimit(-1); got != want {
				t.Errorf("runtime's limit = %d, want %d", got, want)
			}
		})
	}
	t.Run("GOMEMLIMIT wins", func(t *testing.T) {
		t.Setenv("GOMEMLIMIT", "300MiB")
		debug.SetMemoryLimit(math.MaxInt64)
		if got := setMemoryLimit(cgroup("memory.max", "536870912"), slog.New(slog.DiscardHandler)); got != 0 || debug.SetMemoryLimit(-1) != math.MaxInt64 {
			t.Errorf("the container's limit was applied over GOMEMLIMIT (%d)", got)
		}
	})
}
