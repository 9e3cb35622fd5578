package events

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Results of a message, the values of the result label of
// kms_exporter_event_messages_total.
const (
	// ResultDeleted: handled (its keys read again and published, or nothing
	// to read) and deleted from the queue.
	ResultDeleted = "deleted"
	// ResultRetried: a read failed or did not finish in time; left on the
	// queue, which delivers it again after its visibility timeout.
	ResultRetried = "retried"
	// ResultDeleteFailed: handled, but DeleteMessage failed: the queue
	// delivers it again, and it is handled again (harmless).
	ResultDeleteFailed = "delete_failed"
)

// Results are the values of the result label.
var Results = []string{ResultDeleted, ResultRetried, ResultDeleteFailed}

// LagBuckets of kms_exporter_event_lag_seconds: from 0.1 s (a service event
// read at once) to 15 min (CloudTrail delivers API calls to EventBridge within
// minutes, and a retried message adds a visibility timeout).
var LagBuckets = []float64{0.1, 0.5, 1, 5, 15, 30, 60, 120, 180, 300, 450, 600, 900}

type metrics struct {
	received      *prometheus.CounterVec
	ignored       *prometheus.CounterVec
	malformed     prometheus.Counter
	receiveErrors *prometheus.CounterVec
	messages      *prometheus.CounterVec
	lag           prometheus.Histogram
}

func newMetrics(queueURLs []string) *metrics {
	return &metrics{
		received: counterVec("kms_exporter_events_received_total",
			"KMS events received from the SQS queues, by type: the CloudTrail event name of an API call, the detail-type of a KMS service event, or other.", "type", Types),
		ignored: counterVec("kms_exporter_events_ignored_total",
			"Events received that named no key to read again, by reason: unrelated, alias_only, no_key, not_audited.", "reason", IgnoreReasons),
		malformed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kms_exporter_events_malformed_total",
			Help: "SQS messages that were not a readable EventBridge event (deleted).",
		}),
		receiveErrors: counterVec("kms_exporter_event_receive_errors_total",
			"Failed SQS ReceiveMessage calls, by queue URL.", "queue", queueURLs),
		messages: counterVec("kms_exporter_event_messages_total",
			"SQS messages handled, by result: deleted, retried (a read failed: left for redelivery), delete_failed.", "result", Results),
		lag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kms_exporter_event_lag_seconds",
			Help:    "Time from a KMS event (its CloudTrail eventTime, else its EventBridge time) to a snapshot holding the key as read after it being published.",
			Buckets: LagBuckets,
		}),
	}
}

// counterVec returns a counter of one label with every known value at 0, so
// that dashboards and alerts see 0 rather than nothing.
func counterVec(name, help, label string, values []string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, []string{label})
	for _, v := range values {
		c.WithLabelValues(v)
	}
	return c
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.received, m.ignored, m.malformed, m.receiveErrors, m.messages, m.lag}
}

// Describe implements prometheus.Collector.
func (c *Consumer) Describe(ch chan<- *prometheus.Desc) {
	for _, col := range c.metrics.collectors() {
		col.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (c *Consumer) Collect(ch chan<- prometheus.Metric) {
	for _, col := range c.metrics.collectors() {
		col.Collect(ch)
	}
}
