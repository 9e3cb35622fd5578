package events

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/kms-exporter/kms_exporter/awsclient"
	"github.com/kms-exporter/kms_exporter/model"
)

// ErrNotAudited is returned by Sink.Mark for an account or region the
// exporter does not audit.
var ErrNotAudited = model.ErrNotAudited

// Sink re-reads keys; the inventory implements it. Mark asks for ref to be
// re-read as soon as possible; the channel receives nil once a snapshot
// holding the key's state as read after the mark is published (the key may
// also turn out deleted: still nil), or an error if the read failed
// (transient AWS error) or ctx ended. Mark returns ErrNotAudited at once for
// targets not audited. The channel receives one value and must not block
// the sender (buffer it): the consumer stops waiting when its own bound
// passes. Marks are idempotent: marking a key already marked is harmless.
type Sink interface {
	Mark(ctx context.Context, ref KeyRef) (<-chan error, error)
}

// RotationSink is a Sink that also reads a key's rotation history again
// when asked (the inventory implements it): the consumer calls MarkRotated,
// as Mark, for the keys of an event saying their material rotated.
type RotationSink interface {
	Sink
	MarkRotated(ctx context.Context, ref KeyRef) (<-chan error, error)
}

// Options configure a Consumer.
type Options struct {
	// QueueURLs are the queues to poll, each checked by ParseQueueURL.
	QueueURLs []string
	// Clients returns the SQS client of a region ("" for a queue URL that
	// names none): NewSQSClients.
	Clients func(region string) SQSAPI
	// Sink re-reads the keys the events name.
	Sink Sink
	// Logger; nil discards.
	Logger *slog.Logger
	// Now is the clock of the lag metric; nil is time.Now.
	Now func() time.Time
	// Concurrency bounds the messages handled at once, over all queues; 0 is 10.
	Concurrency int
}

const (
	// ReceiveMessage polls long and takes as many messages as SQS allows.
	waitTimeSeconds = 20
	maxMessages     = 10
	// defaultVisibility is SQS's default VisibilityTimeout.
	defaultVisibility   = 30 * time.Second
	deleteTimeout       = 5 * time.Second
	minReceiveBackoff   = time.Second
	maxReceiveBackoff   = time.Minute
	visibilityAttribute = types.QueueAttributeNameVisibilityTimeout
)

// Consumer reads KMS events from SQS queues and marks the keys they name
// for reading again. It is a prometheus.Collector of its own metrics.
type Consumer struct {
	queues  []*queue
	sink    Sink
	logger  *slog.Logger
	now     func() time.Time
	sem     chan struct{}
	metrics *metrics
	// minBackoff and maxBackoff bound the wait after a failed receive.
	minBackoff, maxBackoff time.Duration
	// waitSeconds is the long poll of ReceiveMessage.
	waitSeconds int32
}

type queue struct {
	Queue
	client SQSAPI
	// visibility is the queue's VisibilityTimeout once read (known).
	visibility time.Duration
	known      bool
}

// New checks the options and returns a Consumer; it calls no AWS API.
func New(o Options) (*Consumer, error) {
	if len(o.QueueURLs) == 0 {
		return nil, errors.New("events: no queue URL")
	}
	if o.Clients == nil || o.Sink == nil {
		return nil, errors.New("events: Clients and Sink are required")
	}
	c := &Consumer{
		sink:       o.Sink,
		logger:     o.Logger,
		now:        o.Now,
		sem:        make(chan struct{}, cmp.Or(max(o.Concurrency, 0), 10)),
		metrics:    newMetrics(o.QueueURLs),
		minBackoff: minReceiveBackoff,
		maxBackoff: maxReceiveBackoff,
		// The most SQS allows: the fewest empty receives.
		waitSeconds: waitTimeSeconds,
	}
	if c.logger == nil {
		c.logger = slog.New(slog.DiscardHandler)
	}
	if c.now == nil {
		c.now = time.Now
	}
	seen := map[string]bool{}
	for _, u := range o.QueueURLs {
		q, err := ParseQueueURL(u)
		if err != nil {
			return nil, err
		}
		if seen[u] {
			return nil, fmt.Errorf("queue %s given twice", u)
		}
		seen[u] = true
		c.queues = append(c.queues, &queue{Queue: q, client: o.Clients(q.Region)})
	}
	return c, nil
}

// Run polls every queue, each in its own goroutine, until ctx ends, and
// returns once the messages in hand are handled (their marks end with ctx).
// Failures to receive are counted, logged and retried with backoff: Run
// never returns before ctx ends.
func (c *Consumer) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, q := range c.queues {
		wg.Go(func() { c.poll(ctx, q) })
	}
	wg.Wait()
}

func (c *Consumer) poll(ctx context.Context, q *queue) {
	var handlers sync.WaitGroup
	defer handlers.Wait()
	logger := c.logger.With("queue", q.URL)
	backoff := time.Duration(0)
	for ctx.Err() == nil {
		if !q.known {
			c.readVisibility(ctx, q, logger)
		}
		out, err := q.client.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{
			QueueUrl:                    aws.String(q.URL),
			MaxNumberOfMessages:         maxMessages,
			WaitTimeSeconds:             c.waitSeconds,
			MessageSystemAttributeNames: []types.MessageSystemAttributeName{types.MessageSystemAttributeNameApproximateReceiveCount},
		})
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			c.metrics.receiveErrors.WithLabelValues(q.URL).Inc()
			backoff = min(max(2*backoff, c.minBackoff), c.maxBackoff)
			// Full jitter on the upper half: queues failing together
			// (an outage) do not retry in step.
			wait := backoff/2 + rand.N(backoff/2+1)
			logger.Warn("receiving events failed", "err", err, "error_code", awsclient.ErrorCode(err), "retry_in", wait)
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			continue
		}
		backoff = 0
		// The marks of these messages must end before SQS hands them out again.
		deadline := time.Now().Add(q.markBound())
		for _, m := range out.Messages {
			select {
			case c.sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			handlers.Go(func() {
				defer func() { <-c.sem }()
				c.handle(ctx, q, m, deadline, logger)
			})
		}
	}
}

// readVisibility reads the queue's VisibilityTimeout; until it can, the
// default of SQS (30 s) is assumed.
func (c *Consumer) readVisibility(ctx context.Context, q *queue, logger *slog.Logger) {
	out, err := q.client.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{
		QueueUrl:       aws.String(q.URL),
		AttributeNames: []types.QueueAttributeName{visibilityAttribute},
	})
	if err != nil {
		if ctx.Err() == nil {
			logger.Warn("reading the queue's visibility timeout failed; assuming 30s", "err", err, "error_code", awsclient.ErrorCode(err))
		}
		return
	}
	s, err := strconv.Atoi(out.Attributes[string(visibilityAttribute)])
	if err != nil || s < 0 {
		logger.Warn("the queue's visibility timeout is not a number of seconds; assuming 30s", "value", out.Attributes[string(visibilityAttribute)])
		s = int(defaultVisibility / time.Second)
	}
	q.visibility, q.known = time.Duration(s)*time.Second, true
}

// markBound is how long the marks of a message may take from its receipt:
// under the queue's visibility timeout, so that the message is not delivered
// again while it is still held.
func (q *queue) markBound() time.Duration {
	v := q.visibility
	if !q.known {
		v = defaultVisibility
	}
	return max(v-min(5*time.Second, v/5), 100*time.Millisecond)
}

// handle reads one message, marks the keys it names, waits for them to be
// published and then deletes it. A message whose marks fail or time out is
// left on the queue, to be delivered again.
func (c *Consumer) handle(ctx context.Context, q *queue, m types.Message, deadline time.Time, logger *slog.Logger) {
	logger = logger.With("message_id", aws.ToString(m.MessageId), "receive_count", m.Attributes[string(types.MessageSystemAttributeNameApproximateReceiveCount)])
	ev, err := Parse([]byte(aws.ToString(m.Body)))
	switch {
	case err != nil:
		// The error names the field at fault, never the body.
		c.metrics.malformed.Inc()
		logger.Warn("deleting a message that is not a readable KMS event", "err", err)
		c.delete(ctx, q, m, logger)
		return
	case ev.Ignored != "":
		c.metrics.received.WithLabelValues(ev.Type).Inc()
		c.ignore(ctx, q, m, ev, ev.Ignored, logger)
		return
	}
	c.metrics.received.WithLabelValues(ev.Type).Inc()
	logger = logger.With("event_id", ev.ID, "type", ev.Type)

	markCtx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	type pending struct {
		ref KeyRef
		ch  <-chan error
	}
	var marks []pending
	failed := false
	mark := c.sink.Mark
	if rs, ok := c.sink.(RotationSink); ok && ev.Rotated {
		mark = rs.MarkRotated
	}
	for _, ref := range ev.Refs {
		ch, err := mark(markCtx, ref)
		switch {
		case errors.Is(err, ErrNotAudited):
			logger.Debug("event about a key not audited", "key", ref.String())
		case err != nil:
			logger.Warn("marking a key failed", "key", ref.String(), "err", err)
			failed = true
		default:
			marks = append(marks, pending{ref, ch})
		}
	}
	if !failed && len(marks) == 0 {
		c.ignore(ctx, q, m, ev, ReasonNotAudited, logger)
		return
	}
	for _, p := range marks {
		var err error
		select {
		case err = <-p.ch:
		case <-markCtx.Done():
			err = markCtx.Err()
		}
		if errors.Is(err, ErrNotAudited) { // known only once the first refresh ended
			logger.Debug("event about a key not audited", "key", p.ref.String())
			continue
		}
		if err != nil {
			logger.Warn("reading a key again failed; the message stays on the queue", "key", p.ref.String(), "err", err)
			failed = true
			continue
		}
		if !ev.Time.IsZero() {
			c.metrics.lag.Observe(max(c.now().Sub(ev.Time), 0).Seconds())
		}
	}
	if failed {
		c.metrics.messages.WithLabelValues(ResultRetried).Inc()
		return
	}
	logger.Debug("keys read again", "keys", len(marks))
	c.delete(ctx, q, m, logger)
}

func (c *Consumer) ignore(ctx context.Context, q *queue, m types.Message, ev Event, reason string, logger *slog.Logger) {
	c.metrics.ignored.WithLabelValues(reason).Inc()
	logger.Debug("event ignored", "event_id", ev.ID, "type", ev.Type, "reason", reason)
	c.delete(ctx, q, m, logger)
}

// delete removes a handled message. It goes on for a moment after ctx ends:
// the work is done, and a message left behind would only be handled again.
func (c *Consumer) delete(ctx context.Context, q *queue, m types.Message, logger *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), deleteTimeout)
	defer cancel()
	_, err := q.client.DeleteMessage(ctx, &sqs.DeleteMessageInput{QueueUrl: aws.String(q.URL), ReceiptHandle: m.ReceiptHandle})
	if err != nil {
		c.metrics.messages.WithLabelValues(ResultDeleteFailed).Inc()
		logger.Warn("deleting a handled message failed; it will be handled again", "err", err, "error_code", awsclient.ErrorCode(err))
		return
	}
	c.metrics.messages.WithLabelValues(ResultDeleted).Inc()
}
