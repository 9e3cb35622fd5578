package events

import (
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestParseQueueURL(t *testing.T) {
	for _, tc := range []struct {
		url, region, err string
	}{
		{"https://sqs.eu-west-1.amazonaws.com/111122223333/kms-events", "eu-west-1", ""},
		{"https://sqs.cn-north-1.amazonaws.com.cn/111122223333/kms-events", "cn-north-1", ""},
		{"https://eu-west-1.queue.amazonaws.com/111122223333/kms-events", "eu-west-1", ""},
		{"https://queue.amazonaws.com/111122223333/kms-events", "us-east-1", ""},
		{"https://sqs.us-gov-west-1.amazonaws.com/111122223333/kms_events.fifo", "us-gov-west-1", ""},
		// An emulator on the loopback interface: the SDK's region.
		{"http://127.0.0.1:5000/123456789012/kms-events", "", ""},
		{"http://localhost:4566/000000000000/kms-events", "", ""},
		{"http://sqs.eu-west-1.amazonaws.com/111122223333/kms-events", "", "scheme is not https"},
		{"https://sqs.eu-west-1.amazonaws.com:8443/111122223333/kms-events", "", "takes no port"},
		{"https://example.com/111122223333/kms-events", "", `host "example.com" is not an SQS endpoint`},
		{"https://sqs.europe.amazonaws.com/111122223333/kms-events", "", `"europe" is not a region`},
		{"https://sqs.eu-west-1.amazonaws.com/kms-events", "", "path is not /ACCOUNT_ID/QUEUE_NAME"},
		{"https://sqs.eu-west-1.amazonaws.com/111122223333/kms-events/x", "", "path is not"},
		{"https://sqs.eu-west-1.amazonaws.com/1111/kms-events", "", `"1111" is not an account id`},
		{"https://sqs.eu-west-1.amazonaws.com/111122223333/kms events", "", "is not a queue name"},
		{"https://sqs.eu-west-1.amazonaws.com/111122223333/" + strings.Repeat("q", 81), "", "is not a queue name"},
		{"https://sqs.eu-west-1.amazonaws.com/111122223333/kms-events?x=1", "", "query"},
		{"https://user:pw@sqs.eu-west-1.amazonaws.com/111122223333/kms-events", "", "user"},
		{"arn:aws:sqs:eu-west-1:111122223333:kms-events", "", "scheme is not https"},
		{"kms-events", "", "scheme is not https"},
		{"", "", "scheme is not https"},
	} {
		q, err := ParseQueueURL(tc.url)
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%q: %v", tc.url, err)
		case tc.err == "" && (q.Region != tc.region || q.URL != tc.url || q.Name == "" || q.AccountID == ""):
			t.Errorf("%q: %+v, want region %q", tc.url, q, tc.region)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%q: error %v, want one saying %q", tc.url, err, tc.err)
		}
	}
}

func TestNew(t *testing.T) {
	clients := NewSQSClients(aws.Config{Region: region})
	ok := Options{QueueURLs: []string{"https://sqs.eu-west-1.amazonaws.com/111122223333/kms-events"}, Clients: clients, Sink: newSink()}
	if _, err := New(ok); err != nil {
		t.Fatal(err)
	}
	for name, o := range map[string]Options{
		"no queue":  {Clients: clients, Sink: newSink()},
		"bad queue": {QueueURLs: []string{"https://example.com/1/q"}, Clients: clients, Sink: newSink()},
		"twice":     {QueueURLs: []string{ok.QueueURLs[0], ok.QueueURLs[0]}, Clients: clients, Sink: newSink()},
		"no sink":   {QueueURLs: ok.QueueURLs, Clients: clients},
		"no client": {QueueURLs: ok.QueueURLs, Sink: newSink()},
	} {
		if _, err := New(o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestNewSQSClients: one client per region, the configured region for a
// queue URL that names none.
func TestNewSQSClients(t *testing.T) {
	clients := NewSQSClients(aws.Config{Region: region})
	if clients("") != clients(region) || clients(region) == clients("us-east-1") {
		t.Error("not one client per region")
	}
}

// TestMetricsLint: the metrics follow Prometheus's naming rules, and every
// known label value is there from the start, at 0.
func TestMetricsLint(t *testing.T) {
	c, err := New(Options{QueueURLs: []string{"https://sqs.eu-west-1.amazonaws.com/111122223333/kms-events"},
		Clients: NewSQSClients(aws.Config{Region: region}), Sink: newSink()})
	if err != nil {
		t.Fatal(err)
	}
	problems, err := testutil.CollectAndLint(c)
	if err != nil || len(problems) > 0 {
		t.Fatalf("%v %+v", err, problems)
	}
	want := len(Types) + len(IgnoreReasons) + 1 + 1 + len(Results) + 1
	if n := testutil.CollectAndCount(c); n != want {
		t.Errorf("%d series before any event, want %d", n, want)
	}
}
