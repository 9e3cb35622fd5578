package main

import (
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
)

// memoryLimitShare is the part of the container's memory limit given to the
// Go runtime as its soft limit: the rest is headroom for what the runtime
// does not count (thread stacks, the binary) and for the moment between two
// collections.
const memoryLimitShare = 0.9

// setMemoryLimit gives the Go runtime a soft memory limit of 90% of the
// container's (the cgroup's memory.max under root, cgroup v2, else v1's
// memory.limit_in_bytes), so that it collects garbage harder before the
// kernel would kill the process, instead of only when the heap doubles. An
// explicit GOMEMLIMIT (which the runtime reads itself) is left alone, as is
// a process without a limit. It returns the limit set, 0 when none.
func setMemoryLimit(root string, logger *slog.Logger) int64 {
	if v, ok := os.LookupEnv("GOMEMLIMIT"); ok {
		logger.Info("memory limit from GOMEMLIMIT", "GOMEMLIMIT", v)
		return 0
	}
	for _, file := range []string{"memory.max", "memory/memory.limit_in_bytes"} {
		b, err := os.ReadFile(filepath.Join(root, file))
		if err != nil {
			continue
		}
		v := strings.TrimSpace(string(b))
		limit, err := strconv.ParseInt(v, 10, 64)
		// "max" (v2), or v1's page-rounded maximum: no limit.
		if err != nil || limit <= 0 || limit >= math.MaxInt64/2 {
			return 0
		}
		soft := int64(float64(limit) * memoryLimitShare)
		debug.SetMemoryLimit(soft)
		logger.Info("memory limit set from the container's (set GOMEMLIMIT to choose another)", "container_limit_bytes", limit,
			"go_memory_limit_bytes", soft)
		return soft
	}
	return 0
}
