// Package eventstest runs the event path of the exporter on real parts for
// tests and benchmarks: moto's SQS and EventBridge, a queue with its
// dead-letter queue, and the rule of events.EventPattern sending KMS events
// to it, as deploy/events sets them up in AWS. What CloudTrail does in AWS
// (record a KMS call and hand its event to EventBridge) the test does with
// PutEvents, in the shape AWS documents (see events/testdata).
package eventstest

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/eventbridge"
	ebtypes "github.com/aws/aws-sdk-go-v2/service/eventbridge/types"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/kms-exporter/kms_exporter/events"
	"github.com/kms-exporter/kms_exporter/internal/kmstest"
)

// Bus is moto with a KMS event queue behind an EventBridge rule.
type Bus struct {
	Moto     *kmstest.Moto
	QueueURL string
	DLQURL   string
	sqs      *sqs.Client
	eb       *eventbridge.Client
}

// NewBus starts moto for a test and sets up the queue, with a visibility
// timeout of 30 s (SQS's default), and the rule (see Setup).
func NewBus(t testing.TB, region string) *Bus { return NewBusVisibility(t, region, 30) }

// NewBusVisibility is NewBus with the queue's visibility timeout in seconds:
// how soon a message received and not deleted is delivered again.
func NewBusVisibility(t testing.TB, region string, visibility int) *Bus {
	t.Helper()
	m := kmstest.StartMoto(t)
	b, err := Setup(context.Background(), m, region, visibility)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Setup creates, on a running moto, the queue (this visibility timeout in
// seconds, a dead-letter queue after 5 receives) and the rule sending KMS
// events to it.
func Setup(ctx context.Context, m *kmstest.Moto, region string, visibility int) (*Bus, error) {
	cfg := aws.Config{Region: region, BaseEndpoint: aws.String(m.URL),
		Credentials: credentials.NewStaticCredentialsProvider("test", "test", "")}
	b := &Bus{Moto: m, sqs: sqs.NewFromConfig(cfg), eb: eventbridge.NewFromConfig(cfg)}
	dlq, err := b.sqs.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String("kms-events-dlq")})
	if err != nil {
		return nil, err
	}
	b.DLQURL = aws.ToString(dlq.QueueUrl)
	dlqARN, err := b.attribute(ctx, b.DLQURL, sqstypes.QueueAttributeNameQueueArn)
	if err != nil {
		return nil, err
	}
	q, err := b.sqs.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String("kms-events"), Attributes: map[string]string{
		"VisibilityTimeout": strconv.Itoa(visibility),
		"RedrivePolicy":     fmt.Sprintf(`{"deadLetterTargetArn":%q,"maxReceiveCount":"5"}`, dlqARN),
	}})
	if err != nil {
		return nil, err
	}
	b.QueueURL = aws.ToString(q.QueueUrl)
	queueARN, err := b.attribute(ctx, b.QueueURL, sqstypes.QueueAttributeNameQueueArn)
	if err != nil {
		return nil, err
	}
	if _, err := b.eb.PutRule(ctx, &eventbridge.PutRuleInput{Name: aws.String("kms-exporter"), EventPattern: aws.String(events.EventPattern())}); err != nil {
		return nil, err
	}
	_, err = b.eb.PutTargets(ctx, &eventbridge.PutTargetsInput{Rule: aws.String("kms-exporter"), Targets: []ebtypes.Target{
		{Id: aws.String("queue"), Arn: aws.String(queueARN)}}})
	return b, err
}

func (b *Bus) attribute(ctx context.Context, url string, name sqstypes.QueueAttributeName) (string, error) {
	out, err := b.sqs.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{
		QueueUrl: aws.String(url), AttributeNames: []sqstypes.QueueAttributeName{name}})
	if err != nil {
		return "", err
	}
	return out.Attributes[string(name)], nil
}

func (b *Bus) attr(t testing.TB, url string, name sqstypes.QueueAttributeName) string {
	t.Helper()
	v, err := b.attribute(context.Background(), url, name)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// Held says how many messages the queue holds, visible and in flight.
func (b *Bus) Held(t testing.TB) string {
	return b.attr(t, b.QueueURL, sqstypes.QueueAttributeNameApproximateNumberOfMessages) + " visible, " +
		b.attr(t, b.QueueURL, sqstypes.QueueAttributeNameApproximateNumberOfMessagesNotVisible) + " in flight"
}

// APICall puts on the bus the event CloudTrail records for a KMS API call
// on a key (its ARN) made at the given time; see PutAPICall.
func (b *Bus) APICall(t testing.TB, eventName, account, region, keyARN string, at time.Time) {
	t.Helper()
	if err := b.PutAPICall(context.Background(), eventName, account, region, keyARN, at); err != nil {
		t.Fatal(err)
	}
}

// PutAPICall puts on the bus an EventBridge "AWS API Call via CloudTrail"
// event whose detail is the CloudTrail record of a KMS call on a key.
func (b *Bus) PutAPICall(ctx context.Context, eventName, account, region, keyARN string, at time.Time) error {
	detail, err := json.Marshal(map[string]any{
		"eventVersion": "1.08",
		"userIdentity": map[string]any{"type": "IAMUser", "accountId": account, "arn": "arn:aws:iam::" + account + ":user/tester"},
		"eventTime":    at.UTC().Format(time.RFC3339), "eventSource": "kms.amazonaws.com", "eventName": eventName,
		"awsRegion": region, "sourceIPAddress": "192.0.2.0", "userAgent": "aws-cli",
		"requestParameters": map[string]any{"keyId": keyARN}, "responseElements": responseElements(eventName, keyARN),
		"requestID": "81f5b794-452b-4d6a-932b-68c188165273", "eventID": "fefc43a7-8e06-419f-bcab-b3bf18d6a401",
		"readOnly": false, "resources": []map[string]any{{"accountId": account, "type": "AWS::KMS::Key", "ARN": keyARN}},
		"eventType": "AwsApiCall", "managementEvent": true, "recipientAccountId": account, "eventCategory": "Management",
	})
	if err != nil {
		return err
	}
	out, err := b.eb.PutEvents(ctx, &eventbridge.PutEventsInput{Entries: []ebtypes.PutEventsRequestEntry{{
		Source: aws.String("aws.kms"), DetailType: aws.String(events.DetailTypeAPICall), Time: aws.Time(at),
		Detail: aws.String(string(detail)),
	}}})
	if err == nil && out.FailedEntryCount != 0 {
		err = fmt.Errorf("PutEvents: %d entries failed", out.FailedEntryCount)
	}
	return err
}

// responseElements is what CloudTrail records a call answered, where the
// exporter's events read it: RotateKeyOnDemand answers the key's id
// (developerguide/ct-rotatekeyondemand.html); the others are left out.
func responseElements(eventName, keyARN string) any {
	if eventName == "RotateKeyOnDemand" {
		return map[string]any{"keyId": keyIDOf(keyARN)}
	}
	return nil
}

func keyIDOf(keyARN string) string {
	if _, id, ok := strings.Cut(keyARN, ":key/"); ok {
		return id
	}
	return keyARN
}

// Rotation puts on the bus the "KMS CMK Rotation" event KMS sends when a
// key's material rotates; see PutRotation.
func (b *Bus) Rotation(t testing.TB, r kmstest.Rotation) {
	t.Helper()
	if err := b.PutRotation(context.Background(), r); err != nil {
		t.Fatal(err)
	}
}

// PutRotation puts on the bus the "KMS CMK Rotation" event of a completed
// rotation, as KMS sends it (developerguide/kms-events.html): source
// aws.kms, the key ARN in resources, detail {key-id, key-origin,
// rotation-type, previous-key-material-id, current-key-material-id}.
func (b *Bus) PutRotation(ctx context.Context, r kmstest.Rotation) error {
	detail, err := json.Marshal(map[string]string{
		"key-id": r.KeyID, "key-origin": r.Origin, "rotation-type": r.Type,
		"previous-key-material-id": r.Previous, "current-key-material-id": r.Current,
	})
	if err != nil {
		return err
	}
	out, err := b.eb.PutEvents(ctx, &eventbridge.PutEventsInput{Entries: []ebtypes.PutEventsRequestEntry{{
		Source: aws.String("aws.kms"), DetailType: aws.String(events.DetailTypeRotation), Time: aws.Time(r.At),
		Resources: []string{r.KeyARN}, Detail: aws.String(string(detail)),
	}}})
	if err == nil && out.FailedEntryCount != 0 {
		err = fmt.Errorf("PutEvents: %d entries failed", out.FailedEntryCount)
	}
	return err
}

// Follow makes the bus hear what the proxy's calls and rotations make AWS
// send: the CloudTrail event of each call that changes a key (SetTrail),
// dated by the proxy's clock, and the "KMS CMK Rotation" event of each
// rotation, on demand or automatic (SetRotations). A failure to put an
// event is handed to fail.
func (b *Bus) Follow(p *kmstest.Proxy, account string, fail func(error)) {
	p.SetTrail(func(op, region, keyARN string) {
		if err := b.PutAPICall(context.Background(), op, account, region, keyARN, p.Now()); err != nil {
			fail(fmt.Errorf("putting the %s event on the bus: %w", op, err))
		}
	})
	p.SetRotations(func(r kmstest.Rotation) {
		if err := b.PutRotation(context.Background(), r); err != nil {
			fail(fmt.Errorf("putting the rotation event of %s on the bus: %w", r.KeyARN, err))
		}
	})
}

// Receive takes up to max messages off the queue, waiting up to wait for
// the first, deletes them and returns their bodies.
func (b *Bus) Receive(ctx context.Context, max int32, wait time.Duration) ([]string, error) {
	out, err := b.sqs.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: aws.String(b.QueueURL),
		MaxNumberOfMessages: max, WaitTimeSeconds: int32(wait.Seconds())})
	if err != nil {
		return nil, err
	}
	var bodies []string
	for _, m := range out.Messages {
		bodies = append(bodies, aws.ToString(m.Body))
		if _, err := b.sqs.DeleteMessage(ctx, &sqs.DeleteMessageInput{QueueUrl: aws.String(b.QueueURL), ReceiptHandle: m.ReceiptHandle}); err != nil {
			return bodies, err
		}
	}
	return bodies, nil
}
