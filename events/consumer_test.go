package events

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/eventbridge"
	ebtypes "github.com/aws/aws-sdk-go-v2/service/eventbridge/types"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/kms-exporter/kms_exporter/internal/harness"
	"github.com/kms-exporter/kms_exporter/internal/kmstest"
)

// fakeSink stands in for the inventory: it records the marks, answers nil at
// once, or fails or holds the marks of chosen keys.
type fakeSink struct {
	mu    sync.Mutex
	marks []KeyRef
	// fail: marks left that answer a read error.
	fail map[KeyRef]int
	// hold: marks left that answer only when their ctx ends.
	hold map[KeyRef]int
	// held: the ctx of the last held mark of a key.
	held map[KeyRef]context.Context
	// overlaps counts marks of a key made while a held mark of it was still
	// waiting: the message was handed out again while the consumer held it.
	overlaps int
	// rotated holds the marks made with MarkRotated.
	rotated []KeyRef
}

// MarkRotated is Mark, remembered as a rotation's.
func (s *fakeSink) MarkRotated(ctx context.Context, ref KeyRef) (<-chan error, error) {
	s.mu.Lock()
	s.rotated = append(s.rotated, ref)
	s.mu.Unlock()
	return s.Mark(ctx, ref)
}

func newSink() *fakeSink {
	return &fakeSink{fail: map[KeyRef]int{}, hold: map[KeyRef]int{}, held: map[KeyRef]context.Context{}}
}

func (s *fakeSink) Mark(ctx context.Context, ref KeyRef) (<-chan error, error) {
	if ref.AccountID != account {
		return nil, ErrNotAudited
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.marks = append(s.marks, ref)
	if h, ok := s.held[ref]; ok && h.Err() == nil {
		s.overlaps++
	}
	ch := make(chan error, 1)
	switch {
	case s.hold[ref] > 0:
		s.hold[ref]--
		s.held[ref] = ctx
		go func() { <-ctx.Done(); ch <- ctx.Err() }()
	case s.fail[ref] > 0:
		s.fail[ref]--
		ch <- errors.New("ThrottlingException: Rate exceeded")
	default:
		ch <- nil
	}
	return ch, nil
}

func (s *fakeSink) Marks() []KeyRef {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.marks)
}

// motoSQS is moto's SQS with a client of the test's own.
type motoSQS struct {
	moto *kmstest.Moto
	cfg  aws.Config
	sqs  *sqs.Client
}

func startSQS(t *testing.T) *motoSQS {
	m := kmstest.StartMoto(t)
	cfg := aws.Config{
		Region:       region,
		BaseEndpoint: aws.String(m.URL),
		Credentials:  credentials.NewStaticCredentialsProvider("test", "test", ""),
	}
	return &motoSQS{moto: m, cfg: cfg, sqs: sqs.NewFromConfig(cfg)}
}

// queue creates a queue and a dead-letter queue that takes its messages
// after maxReceives receives; it returns both URLs.
func (m *motoSQS) queue(t *testing.T, name string, visibility, maxReceives int) (url, dlq string) {
	t.Helper()
	ctx := context.Background()
	d, err := m.sqs.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String(name + "-dlq")})
	if err != nil {
		t.Fatal(err)
	}
	dlqARN := m.attr(t, *d.QueueUrl, types.QueueAttributeNameQueueArn)
	q, err := m.sqs.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String(name), Attributes: map[string]string{
		"VisibilityTimeout": strconv.Itoa(visibility),
		"RedrivePolicy":     fmt.Sprintf(`{"deadLetterTargetArn":%q,"maxReceiveCount":"%d"}`, dlqARN, maxReceives),
	}})
	if err != nil {
		t.Fatal(err)
	}
	return *q.QueueUrl, *d.QueueUrl
}

func (m *motoSQS) attr(t *testing.T, url string, name types.QueueAttributeName) string {
	t.Helper()
	out, err := m.sqs.GetQueueAttributes(context.Background(), &sqs.GetQueueAttributesInput{
		QueueUrl: aws.String(url), AttributeNames: []types.QueueAttributeName{name}})
	if err != nil {
		t.Fatal(err)
	}
	return out.Attributes[string(name)]
}

// held returns the messages on the queue, visible and in flight.
func (m *motoSQS) held(t *testing.T, url string) string {
	return m.attr(t, url, types.QueueAttributeNameApproximateNumberOfMessages) + " visible, " +
		m.attr(t, url, types.QueueAttributeNameApproximateNumberOfMessagesNotVisible) + " in flight"
}

func (m *motoSQS) send(t *testing.T, url string, bodies ...[]byte) {
	t.Helper()
	for _, b := range bodies {
		if _, err := m.sqs.SendMessage(context.Background(), &sqs.SendMessageInput{
			QueueUrl: aws.String(url), MessageBody: aws.String(string(b))}); err != nil {
			t.Fatal(err)
		}
	}
}

// consumer returns a Consumer of the queues whose receives retry quickly,
// logging into logs.
func (m *motoSQS) consumer(t *testing.T, sink Sink, logs *harness.Buffer, urls ...string) *Consumer {
	t.Helper()
	c, err := New(Options{
		QueueURLs: urls,
		Clients:   NewSQSClients(m.cfg),
		Sink:      sink,
		Logger:    slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	c.waitSeconds = 1
	c.minBackoff, c.maxBackoff = 20*time.Millisecond, 200*time.Millisecond
	return c
}

// run runs c until the returned stop is called (or the test ends); stop
// fails the test unless Run returns within 2s of the cancel.
func run(t *testing.T, c *Consumer) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(2 * time.Second):
				t.Error("Run did not return within 2s of its ctx ending")
				<-done
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func count(c *Consumer, result string) float64 {
	return testutil.ToFloat64(c.metrics.messages.WithLabelValues(result))
}

// waitHandled polls until n messages were deleted and r retried.
func waitHandled(t *testing.T, c *Consumer, deleted, retried float64) {
	t.Helper()
	harness.Poll(t, 15*time.Second, func() string {
		d, r := count(c, ResultDeleted), count(c, ResultRetried)
		if d < deleted || r < retried {
			return fmt.Sprintf("%v deleted, %v retried; waiting for %v and %v", d, r, deleted, retried)
		}
		return ""
	})
}

func lagCount(t *testing.T, c *Consumer) uint64 {
	var m dto.Metric
	if err := c.metrics.lag.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.Histogram.GetSampleCount()
}

func sorted(refs []KeyRef) []KeyRef {
	return slices.SortedFunc(slices.Values(refs), func(a, b KeyRef) int { return strings.Compare(a.String(), b.String()) })
}

// consumeAll: every fixture, a malformed message, a duplicate and an event
// of an account not audited go through moto's SQS. The sink gets exactly the
// keys the events name; every message is deleted; the metrics say what
// happened.
func consumeAll(t *testing.T, m *motoSQS) {
	url, _ := m.queue(t, testQueue(t), 30, 5)
	files := []string{
		"cloudtrail-create-alias.json", "cloudtrail-create-key-failed.json", "cloudtrail-create-key.json",
		"cloudtrail-decrypt.json", "cloudtrail-delete-alias-no-key.json", "cloudtrail-delete-alias.json",
		"cloudtrail-disable-key-rotation-denied.json", "cloudtrail-disable-key-rotation.json",
		"cloudtrail-enable-key-rotation-alias.json", "cloudtrail-enable-key-rotation.json",
		"cloudtrail-replicate-key.json", "cloudtrail-rotate-key-on-demand.json",
		"cloudtrail-schedule-key-deletion.json", "cloudtrail-tag-resource.json", "cloudtrail-update-alias.json",
		"cloudtrail-update-primary-region.json", "other-source.json", "service-deletion.json",
		"service-material-expiration.json", "service-rotation.json",
	}
	for _, f := range files {
		m.send(t, url, fixture(t, f))
	}
	rotation := fixture(t, "service-rotation.json")
	m.send(t, url,
		rotation, // delivered twice: marked twice, harmlessly
		[]byte(`{"detail-type": "KMS CMK Rotation", "detail": "not an object"}`),
		[]byte(strings.ReplaceAll(string(rotation), account, "444455556666")))

	sink := newSink()
	logs := &harness.Buffer{}
	c := m.consumer(t, sink, logs, url)
	stop := run(t, c)
	waitHandled(t, c, float64(len(files)+3), 0)
	stop()

	var want []KeyRef
	for range 12 {
		want = append(want, ref(key1))
	}
	want = append(want, ref(key2), ref(key2), ref(key2), ref(mrk), ref(mrk),
		KeyRef{AccountID: account, Region: "us-east-1", KeyID: mrk}, KeyRef{AccountID: account, Region: "us-east-1", KeyID: mrk})
	if got := sorted(sink.Marks()); !slices.Equal(got, sorted(want)) {
		t.Errorf("marks\n%v\nwant\n%v", got, sorted(want))
	}
	if h := m.held(t, url); h != "0 visible, 0 in flight" {
		t.Errorf("queue after: %s; want it empty", h)
	}
	if err := testutil.CollectAndCompare(c, strings.NewReader(`
# HELP kms_exporter_event_messages_total SQS messages handled, by result: deleted, retried (a read failed: left for redelivery), delete_failed.
# TYPE kms_exporter_event_messages_total counter
kms_exporter_event_messages_total{result="delete_failed"} 0
kms_exporter_event_messages_total{result="deleted"} 23
kms_exporter_event_messages_total{result="retried"} 0
# HELP kms_exporter_events_ignored_total Events received that named no key to read again, by reason: unrelated, alias_only, no_key, not_audited.
# TYPE kms_exporter_events_ignored_total counter
kms_exporter_events_ignored_total{reason="alias_only"} 2
kms_exporter_events_ignored_total{reason="no_key"} 1
kms_exporter_events_ignored_total{reason="not_audited"} 1
kms_exporter_events_ignored_total{reason="unrelated"} 2
# HELP kms_exporter_events_malformed_total SQS messages that were not a readable EventBridge event (deleted).
# TYPE kms_exporter_events_malformed_total counter
kms_exporter_events_malformed_total 1
`), "kms_exporter_event_messages_total", "kms_exporter_events_ignored_total", "kms_exporter_events_malformed_total"); err != nil {
		t.Error(err)
	}
	for typ, want := range map[string]float64{
		DetailTypeRotation: 3, "EnableKeyRotation": 2, "DisableKeyRotation": 2, "DeleteAlias": 2, TypeOther: 2, "PutKeyPolicy": 0,
	} {
		if got := testutil.ToFloat64(c.metrics.received.WithLabelValues(typ)); got != want {
			t.Errorf("events received of type %q: %v, want %v", typ, got, want)
		}
	}
	if n := lagCount(t, c); n != uint64(len(want)) {
		t.Errorf("lag observed %d times, want once per key read (%d)", n, len(want))
	}
	for _, secret := range []string{"Alice", "EXAMPLE_KEY_ID", "HIDDEN_DUE_TO_SECURITY_REASONS", "not an object"} {
		if strings.Contains(logs.String(), secret) {
			t.Errorf("the logs show %q from a message:\n%s", secret, logs)
		}
	}
	if !strings.Contains(logs.String(), "not a readable KMS event") {
		t.Errorf("the malformed message was not logged:\n%s", logs)
	}
}

// rotationOnce queues one KMS CMK Rotation event of key1 on a queue of the
// test's own and runs a consumer of it with a sink that fail and hold set up.
func (m *motoSQS) rotationOnce(t *testing.T, visibility, maxReceives, fail, hold int) (c *Consumer, sink *fakeSink, url, dlq string) {
	url, dlq = m.queue(t, testQueue(t), visibility, maxReceives)
	m.send(t, url, fixture(t, "service-rotation.json"))
	sink = newSink()
	sink.fail[ref(key1)], sink.hold[ref(key1)] = fail, hold
	c = m.consumer(t, sink, &harness.Buffer{}, url)
	run(t, c)
	return c, sink, url, dlq
}

// consumerRetriesFailedRead: a message whose read fails stays on the
// queue, comes back after its visibility timeout, and is deleted once the
// read succeeds.
func consumerRetriesFailedRead(t *testing.T, m *motoSQS) {
	c, sink, url, _ := m.rotationOnce(t, 1, 5, 1, 0)
	waitHandled(t, c, 1, 1)
	if got := sink.Marks(); !slices.Equal(got, []KeyRef{ref(key1), ref(key1)}) {
		t.Errorf("marks %v, want key1 twice (failed, then read)", got)
	}
	if h := m.held(t, url); h != "0 visible, 0 in flight" {
		t.Errorf("queue after: %s; want it empty", h)
	}
	if n := lagCount(t, c); n != 1 {
		t.Errorf("lag observed %d times, want once (the successful read)", n)
	}
}

// consumerMarksRotations: the keys of a rotation (a KMS CMK Rotation
// event, a RotateKeyOnDemand call) are marked as rotated, so that their
// rotation history is read again; those of any other event are not.
func consumerMarksRotations(t *testing.T, m *motoSQS) {
	url, _ := m.queue(t, testQueue(t), 30, 5)
	m.send(t, url, fixture(t, "service-rotation.json"), fixture(t, "cloudtrail-rotate-key-on-demand.json"),
		fixture(t, "cloudtrail-disable-key-rotation.json"))
	sink := newSink()
	c := m.consumer(t, sink, &harness.Buffer{}, url)
	run(t, c)
	waitHandled(t, c, 3, 0)
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if len(sink.marks) != 3 || len(sink.rotated) != 2 {
		t.Errorf("%d marks, %d of them as rotated (%v); want 3, the two rotations as rotated", len(sink.marks), len(sink.rotated), sink.rotated)
	}
}

// consumerWaitsLessThanVisibility: a read that does not answer is given
// up before the queue hands the message out again, so one message is never
// held twice at once.
func consumerWaitsLessThanVisibility(t *testing.T, m *motoSQS) {
	c, sink, _, _ := m.rotationOnce(t, 2, 5, 0, 1)
	waitHandled(t, c, 1, 1)
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if sink.overlaps > 0 || len(sink.marks) != 2 {
		t.Errorf("%d marks, %d while the first still waited; want 2 marks, none overlapping", len(sink.marks), sink.overlaps)
	}
}

// consumerDeadLetter: a message whose read keeps failing goes to the
// queue's dead-letter queue after maxReceiveCount receives, never deleted.
func consumerDeadLetter(t *testing.T, m *motoSQS) {
	c, _, _, dlq := m.rotationOnce(t, 1, 2, 100, 0)
	harness.Poll(t, 15*time.Second, func() string {
		if h := m.held(t, dlq); h != "1 visible, 0 in flight" {
			return "dead-letter queue: " + h
		}
		return ""
	})
	if d, r := count(c, ResultDeleted), count(c, ResultRetried); d != 0 || r != 2 {
		t.Errorf("%v deleted, %v retried; want 0 and 2", d, r)
	}
}

// consumerSurvivesQueueDeletion: receives from a deleted queue fail,
// are counted and retried; once the queue exists again, its events are read.
func consumerSurvivesQueueDeletion(t *testing.T, m *motoSQS) {
	url, _ := m.queue(t, testQueue(t), 30, 5)
	sink := newSink()
	c := m.consumer(t, sink, &harness.Buffer{}, url)
	stop := run(t, c)
	if _, err := m.sqs.DeleteQueue(context.Background(), &sqs.DeleteQueueInput{QueueUrl: aws.String(url)}); err != nil {
		t.Fatal(err)
	}
	errs := func() float64 { return testutil.ToFloat64(c.metrics.receiveErrors.WithLabelValues(url)) }
	harness.Poll(t, 10*time.Second, func() string {
		if n := errs(); n < 2 {
			return fmt.Sprintf("%v receive errors counted", n)
		}
		return ""
	})
	if again, _ := m.queue(t, testQueue(t), 30, 5); again != url {
		t.Fatalf("the queue came back as %s, not %s", again, url)
	}
	m.send(t, url, fixture(t, "service-rotation.json"))
	waitHandled(t, c, 1, 0)
	stop()
	if got := sink.Marks(); !slices.Equal(got, []KeyRef{ref(key1)}) {
		t.Errorf("marks %v, want key1 once", got)
	}
}

// TestMotoSQS runs the tests that share one moto server, in parallel, each
// on queues of its own.
func TestMotoSQS(t *testing.T) {
	m := startSQS(t)
	for name, test := range map[string]func(*testing.T, *motoSQS){
		"Consumer":                        consumeAll,
		"ConsumerRetriesFailedRead":       consumerRetriesFailedRead,
		"ConsumerWaitsLessThanVisibility": consumerWaitsLessThanVisibility,
		"ConsumerMarksRotations":          consumerMarksRotations,
		"ConsumerDeadLetter":              consumerDeadLetter,
		"ConsumerSurvivesQueueDeletion":   consumerSurvivesQueueDeletion,
		"EventBridgeRouting":              eventBridgeRouting,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			test(t, m)
		})
	}
}

// testQueue is a queue name of the test's own.
func testQueue(t *testing.T) string {
	return "kms-events-" + strings.ReplaceAll(strings.ToLower(t.Name()), "/", "-")
}

// TestConsumerSurvivesEndpointDown: with moto stopped, receives fail and are
// counted with backoff, and Run still returns promptly when its ctx ends.
func TestConsumerSurvivesEndpointDown(t *testing.T) {
	t.Parallel()
	m := startSQS(t)
	url, _ := m.queue(t, testQueue(t), 30, 5)
	c := m.consumer(t, newSink(), &harness.Buffer{}, url)
	stop := run(t, c)
	m.moto.Close()
	harness.Poll(t, 10*time.Second, func() string {
		if n := testutil.ToFloat64(c.metrics.receiveErrors.WithLabelValues(url)); n < 3 {
			return fmt.Sprintf("%v receive errors counted", n)
		}
		return ""
	})
	stop()
}

// eventBridgeRouting: a rule with EventPattern on moto's EventBridge
// sends KMS events to the queue, and not the calls the consumer ignores.
func eventBridgeRouting(t *testing.T, m *motoSQS) {
	url, _ := m.queue(t, testQueue(t), 30, 5)
	ctx := context.Background()
	eb := eventbridge.NewFromConfig(m.cfg)
	if _, err := eb.PutRule(ctx, &eventbridge.PutRuleInput{Name: aws.String("kms-exporter"), EventPattern: aws.String(EventPattern())}); err != nil {
		t.Fatal(err)
	}
	if _, err := eb.PutTargets(ctx, &eventbridge.PutTargetsInput{Rule: aws.String("kms-exporter"), Targets: []ebtypes.Target{
		{Id: aws.String("queue"), Arn: aws.String(m.attr(t, url, types.QueueAttributeNameQueueArn))}}}); err != nil {
		t.Fatal(err)
	}
	var entries []ebtypes.PutEventsRequestEntry
	for _, f := range []string{"service-rotation.json", "cloudtrail-enable-key-rotation.json", "cloudtrail-decrypt.json"} {
		var e struct {
			DetailType string          `json:"detail-type"`
			Source     string          `json:"source"`
			Resources  []string        `json:"resources"`
			Detail     json.RawMessage `json:"detail"`
		}
		if err := json.Unmarshal(fixture(t, f), &e); err != nil {
			t.Fatal(err)
		}
		entries = append(entries, ebtypes.PutEventsRequestEntry{Source: aws.String(e.Source), DetailType: aws.String(e.DetailType),
			Resources: e.Resources, Detail: aws.String(string(e.Detail))})
	}
	out, err := eb.PutEvents(ctx, &eventbridge.PutEventsInput{Entries: entries})
	if err != nil || out.FailedEntryCount != 0 {
		t.Fatalf("PutEvents with source aws.kms: %v, %+v", err, out)
	}
	// moto routes while PutEvents runs: the Decrypt call was filtered out.
	if h := m.held(t, url); h != "2 visible, 0 in flight" {
		t.Fatalf("queue after PutEvents: %s; want the rotation and EnableKeyRotation events", h)
	}
	sink := newSink()
	c := m.consumer(t, sink, &harness.Buffer{}, url)
	run(t, c)
	waitHandled(t, c, 2, 0)
	if got := sink.Marks(); !slices.Equal(got, []KeyRef{ref(key1), ref(key1)}) {
		t.Errorf("marks %v, want key1 twice", got)
	}
	for _, typ := range []string{DetailTypeRotation, "EnableKeyRotation"} {
		if n := testutil.ToFloat64(c.metrics.received.WithLabelValues(typ)); n != 1 {
			t.Errorf("%v events of type %q received, want 1", n, typ)
		}
	}
}
