package events

import (
	"context"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"

	"github.com/kms-exporter/kms_exporter/awsclient"
)

// SQSAPI is the part of *sqs.Client the consumer uses.
type SQSAPI interface {
	ReceiveMessage(ctx context.Context, in *sqs.ReceiveMessageInput, optFns ...func(*sqs.Options)) (*sqs.ReceiveMessageOutput, error)
	DeleteMessage(ctx context.Context, in *sqs.DeleteMessageInput, optFns ...func(*sqs.Options)) (*sqs.DeleteMessageOutput, error)
	GetQueueAttributes(ctx context.Context, in *sqs.GetQueueAttributesInput, optFns ...func(*sqs.Options)) (*sqs.GetQueueAttributesOutput, error)
}

// NewSQSClients returns the SQS client of a region, made on first use from
// cfg (as config.LoadDefaultConfig loads it, so that the credential chain and
// AWS_ENDPOINT_URL_SQS apply). Region "" is cfg's own region: that of a queue
// URL that names none (an emulator's). cfg's HTTP client must allow a request
// to last longer than the 20 s of a long poll.
func NewSQSClients(cfg aws.Config) func(region string) SQSAPI {
	var mu sync.Mutex
	clients := map[string]*sqs.Client{}
	return func(region string) SQSAPI {
		if region == "" {
			region = cfg.Region
		}
		mu.Lock()
		defer mu.Unlock()
		c, ok := clients[region]
		if !ok {
			c = sqs.NewFromConfig(cfg, func(o *sqs.Options) { o.Region = region })
			clients[region] = c
		}
		return c
	}
}

// Queue is an SQS queue named by its URL.
type Queue struct {
	URL, Region, AccountID, Name string
}

var (
	queueHost = regexp.MustCompile(`^(?:sqs\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?|([a-z0-9-]+)\.queue\.amazonaws\.com|queue\.amazonaws\.com)$`)
	queueName = regexp.MustCompile(`^[A-Za-z0-9_-]{1,80}$|^[A-Za-z0-9_-]{1,75}\.fifo$`)
)

// ParseQueueURL reads a --events.sqs-queue-url value: an SQS queue URL,
// https://sqs.REGION.amazonaws.com/ACCOUNT_ID/NAME (or the older
// https://REGION.queue.amazonaws.com/... forms), or an emulator's queue on
// the loopback interface, http://127.0.0.1:PORT/ACCOUNT_ID/NAME, whose Region
// is "" (the SDK's configured region). Its errors say what is wrong.
func ParseQueueURL(s string) (Queue, error) {
	const shape = "https://sqs.REGION.amazonaws.com/ACCOUNT_ID/QUEUE_NAME"
	bad := func(why string) (Queue, error) {
		return Queue{}, fmt.Errorf("%q is not an SQS queue URL (%s): %s", s, shape, why)
	}
	u, err := url.Parse(s)
	if err != nil {
		return bad("it does not parse as a URL")
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return bad("it has a user, query or fragment")
	}
	q := Queue{URL: s}
	switch host := u.Hostname(); {
	case host == "127.0.0.1" || host == "::1" || host == "localhost":
		if u.Scheme != "http" && u.Scheme != "https" {
			return bad("the scheme is not http or https")
		}
	case u.Scheme != "https":
		return bad("the scheme is not https")
	case u.Port() != "":
		return bad("an AWS endpoint takes no port")
	default:
		m := queueHost.FindStringSubmatch(host)
		if m == nil {
			return bad(fmt.Sprintf("host %q is not an SQS endpoint", host))
		}
		q.Region = m[1] + m[2]
		if q.Region == "" {
			q.Region = "us-east-1" // the legacy queue.amazonaws.com
		}
		if !awsclient.ValidRegion(q.Region) {
			return bad(fmt.Sprintf("%q is not a region", q.Region))
		}
	}
	parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
	if len(parts) != 2 {
		return bad("the path is not /ACCOUNT_ID/QUEUE_NAME")
	}
	q.AccountID, q.Name = parts[0], parts[1]
	if !awsclient.ValidAccountID(q.AccountID) {
		return bad(fmt.Sprintf("%q is not an account id (12 digits)", q.AccountID))
	}
	if !queueName.MatchString(q.Name) {
		return bad(fmt.Sprintf("%q is not a queue name (1 to 80 letters, digits, - and _, .fifo at the end of a FIFO queue)", q.Name))
	}
	return q, nil
}
