package awsclient

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// callStats counts the attempts of one client by operation and error code.
type callStats struct {
	mu     sync.Mutex
	calls  map[string]float64
	errors map[opCode]float64
}

type opCode struct{ op, code string }

func newCallStats() *callStats {
	s := &callStats{calls: map[string]float64{}, errors: map[opCode]float64{}}
	for _, op := range Operations {
		s.calls[op] = 0
		for _, code := range knownErrorCodes {
			s.errors[opCode{op, code}] = 0
		}
	}
	return s
}

func (s *callStats) add(op string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls[op]++
	if err != nil {
		s.errors[opCode{op, ErrorCode(err)}]++
	}
}

var (
	requestsDesc = prometheus.NewDesc("kms_api_requests_total",
		"AWS KMS API requests made, retries included, by operation.",
		[]string{"account_id", "region", "operation"}, nil)
	errorsDesc = prometheus.NewDesc("kms_api_request_errors_total",
		"AWS KMS API requests that failed, retries included, by operation and error code (ThrottlingException = throttled).",
		[]string{"account_id", "region", "operation", "error_code"}, nil)
)

// Describe implements prometheus.Collector.
func (f *Factory) Describe(ch chan<- *prometheus.Desc) {
	ch <- requestsDesc
	ch <- errorsDesc
}

// Collect implements prometheus.Collector: the counters of every client made
// so far, summed per (account, region). Two clients reach the same account
// when it is configured twice (its own credentials and a role in it, or two
// roles): their calls are one account's calls, and one series each.
func (f *Factory) Collect(ch chan<- prometheus.Metric) {
	type target struct{ account, region string }
	calls := map[target]map[string]float64{}
	errs := map[target]map[opCode]float64{}
	f.mu.Lock()
	for _, c := range f.clients {
		t := target{c.AccountID(), c.Region}
		if calls[t] == nil {
			calls[t], errs[t] = map[string]float64{}, map[opCode]float64{}
		}
		c.stats.mu.Lock()
		for op, n := range c.stats.calls {
			calls[t][op] += n
		}
		for k, n := range c.stats.errors {
			errs[t][k] += n
		}
		c.stats.mu.Unlock()
	}
	f.mu.Unlock()
	for t, byOp := range calls {
		for op, n := range byOp {
			ch <- prometheus.MustNewConstMetric(requestsDesc, prometheus.CounterValue, n, t.account, t.region, op)
		}
		for k, n := range errs[t] {
			ch <- prometheus.MustNewConstMetric(errorsDesc, prometheus.CounterValue, n, t.account, t.region, k.op, k.code)
		}
	}
}

// Counts returns a copy of the attempts counted per operation, summed over
// every client (for tests and benchmarks).
func (f *Factory) Counts() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]int{}
	for _, c := range f.clients {
		c.stats.mu.Lock()
		for op, n := range c.stats.calls {
			out[op] += int(n)
		}
		c.stats.mu.Unlock()
	}
	return out
}
