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

// Collect implements prometheus.Collector: the counters of every client made so far.
func (f *Factory) Collect(ch chan<- prometheus.Metric) {
	f.mu.Lock()
	clients := make([]*Client, 0, len(f.clients))
	for _, c := range f.clients {
		clients = append(clients, c)
	}
	f.mu.Unlock()
	for _, c := range clients {
		account := c.AccountID()
		c.stats.mu.Lock()
		for op, n := range c.stats.calls {
			ch <- prometheus.MustNewConstMetric(requestsDesc, prometheus.CounterValue, n, account, c.Region, op)
		}
		for k, n := range c.stats.errors {
			ch <- prometheus.MustNewConstMetric(errorsDesc, prometheus.CounterValue, n, account, c.Region, k.op, k.code)
		}
		c.stats.mu.Unlock()
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
