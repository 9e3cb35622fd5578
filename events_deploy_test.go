package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/cloudformation"
	cfntypes "github.com/aws/aws-sdk-go-v2/service/cloudformation/types"
	"github.com/aws/aws-sdk-go-v2/service/eventbridge"
	ebtypes "github.com/aws/aws-sdk-go-v2/service/eventbridge/types"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/kms-exporter/kms_exporter/events"
	"github.com/kms-exporter/kms_exporter/internal/harness"
	"github.com/kms-exporter/kms_exporter/internal/kmstest"
)

const (
	queueTemplate     = "deploy/events/cloudformation/kms-events-queue.yaml"
	forwarderTemplate = "deploy/events/cloudformation/kms-events-forwarder.yaml"
	eventsPolicyFile  = "deploy/iam/kms-exporter-events.json"
	terraformDir      = "deploy/events/terraform"
	terraformPattern  = terraformDir + "/kms-event-pattern.json"
)

// kmsEventNames are the CloudTrail-recorded KMS API calls after which the
// exporter re-reads the key they name: the event rules must let exactly
// these through, and kmsServiceDetailTypes, the events KMS itself sends.
var (
	kmsEventNames         = events.APICallNames
	kmsServiceDetailTypes = events.ServiceEventTypes
)

// eventPatterns returns the EventPattern of every AWS::Events::Rule of a
// template, by logical id.
func eventPatterns(t *testing.T, path string) map[string]any {
	t.Helper()
	out := map[string]any{}
	resources, _ := readYAML(t, path)[0]["Resources"].(map[string]any)
	for id, r := range resources {
		if dig(r, "Type") == "AWS::Events::Rule" {
			out[id] = dig(r, "Properties", "EventPattern")
		}
	}
	return out
}

// TestEventPatternsAreOne: the three rules of the two templates (central
// default bus, central custom bus, member forwarder) and the pattern file
// of the Terraform modules carry one pattern. CloudFormation has no YAML
// anchors, so the text is repeated and held equal here.
func TestEventPatternsAreOne(t *testing.T) {
	all := map[string]any{}
	for _, path := range []string{queueTemplate, forwarderTemplate} {
		for id, p := range eventPatterns(t, path) {
			all[path+" "+id] = p
		}
	}
	if len(all) != 3 {
		t.Fatalf("want 3 rules (2 central, 1 forwarder), found %v", slices.Sorted(maps.Keys(all)))
	}
	ref := eventPatterns(t, queueTemplate)["KmsEventsRule"]
	if ref == nil {
		t.Fatal("no KmsEventsRule in " + queueTemplate)
	}
	raw, err := os.ReadFile(terraformPattern)
	if err != nil {
		t.Fatal(err)
	}
	var tf any
	if err := json.Unmarshal(raw, &tf); err != nil {
		t.Fatalf("%s: %v", terraformPattern, err)
	}
	all[terraformPattern] = tf
	for where, p := range all {
		if !reflect.DeepEqual(p, ref) {
			t.Errorf("%s: pattern differs from KmsEventsRule's:\n%v\nwant\n%v", where, p, ref)
		}
	}
}

// TestEventPatternLists reads the pattern's lists against the events the
// exporter handles: every one, nothing else, no duplicates. (moto 5.2.1 does
// not implement TestEventPattern; TestEventsQueueStack routes real events
// through moto's matcher as well.)
func TestEventPatternLists(t *testing.T) {
	p := eventPatterns(t, queueTemplate)["KmsEventsRule"]
	or, _ := dig(p, "$or").([]any)
	if len(or) != 2 {
		t.Fatalf("want $or of two patterns (CloudTrail API calls, KMS service events), got %v", p)
	}
	strs := func(v any) []string {
		l, _ := v.([]any)
		var out []string
		for _, s := range l {
			out = append(out, fmt.Sprint(s))
		}
		return out
	}
	sameSet := func(what string, got, want []string) {
		t.Helper()
		g, w := slices.Clone(got), slices.Clone(want)
		slices.Sort(g)
		slices.Sort(w)
		if !slices.Equal(g, w) || len(slices.Compact(g)) != len(got) {
			t.Errorf("%s: %v, want exactly %v", what, got, want)
		}
	}
	api, svc := or[0], or[1]
	sameSet("CloudTrail source", strs(dig(api, "source")), []string{"aws.kms"})
	sameSet("CloudTrail detail-type", strs(dig(api, "detail-type")), []string{"AWS API Call via CloudTrail"})
	sameSet("eventSource", strs(dig(api, "detail", "eventSource")), []string{"kms.amazonaws.com"})
	sameSet("eventName", strs(dig(api, "detail", "eventName")), kmsEventNames)
	if len(api.(map[string]any)) != 3 || len(dig(api, "detail").(map[string]any)) != 2 {
		t.Errorf("CloudTrail pattern has more fields than source, detail-type, detail.eventSource, detail.eventName: %v", api)
	}
	sameSet("service source", strs(dig(svc, "source")), []string{"aws.kms"})
	sameSet("service detail-type", strs(dig(svc, "detail-type")), kmsServiceDetailTypes)
	if len(svc.(map[string]any)) != 2 {
		t.Errorf("service-event pattern has more fields than source and detail-type: %v", svc)
	}
}

// TestEventsPolicy: the consumer's statement allows the three SQS calls
// on one queue, and equals the policy the central stack prints.
func TestEventsPolicy(t *testing.T) {
	p := readPolicy(t, eventsPolicyFile)
	if len(p.Statement) != 1 {
		t.Fatalf("%d statements", len(p.Statement))
	}
	s := p.Statement[0]
	// Exactly the calls the consumer can make: the methods of events.SQSAPI.
	var calls []string
	api := reflect.TypeFor[events.SQSAPI]()
	for i := range api.NumMethod() {
		calls = append(calls, "sqs:"+api.Method(i).Name)
	}
	if s.Effect != "Allow" || !slices.Equal(slices.Sorted(slices.Values(s.Action)), calls) {
		t.Errorf("statement %+v, want Allow of %v", s, calls)
	}
	queueName := fmt.Sprint(dig(readYAML(t, queueTemplate)[0], "Parameters", "QueueName", "Default"))
	if !strings.HasPrefix(s.Resource, "arn:aws:sqs:") || !strings.HasSuffix(s.Resource, ":"+queueName) || strings.Contains(s.Resource, "*") {
		t.Errorf("Resource %q: want the ARN of the template's queue %q, no wildcard", s.Resource, queueName)
	}
}

// cloudTrailEvent is a KMS API call as EventBridge delivers it from
// CloudTrail (the detail is the CloudTrail record).
func cloudTrailEvent(bus, eventSource, eventName string) ebtypes.PutEventsRequestEntry {
	const key = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
	detail, _ := json.Marshal(map[string]any{
		"eventVersion": "1.08",
		"userIdentity": map[string]any{
			"type": "AssumedRole", "principalId": "AROAEXAMPLE:alice", "accountId": "111122223333",
			"arn": "arn:aws:sts::111122223333:assumed-role/Admin/alice",
		},
		"eventTime":          "2026-05-01T12:00:00Z",
		"eventSource":        eventSource,
		"eventName":          eventName,
		"awsRegion":          "eu-west-1",
		"sourceIPAddress":    "192.0.2.10",
		"userAgent":          "aws-cli/2.9.19",
		"requestParameters":  map[string]any{"keyId": "1234abcd-12ab-34cd-56ef-1234567890ab"},
		"responseElements":   map[string]any{"keyId": key},
		"requestID":          "b6c3e1f2-0000-4000-8000-000000000001",
		"eventID":            "b6c3e1f2-0000-4000-8000-000000000002",
		"readOnly":           false,
		"resources":          []any{map[string]any{"accountId": "111122223333", "type": "AWS::KMS::Key", "ARN": key}},
		"eventType":          "AwsApiCall",
		"managementEvent":    true,
		"recipientAccountId": "111122223333",
		"eventCategory":      "Management",
	})
	source := "aws." + strings.TrimSuffix(eventSource, ".amazonaws.com")
	return ebtypes.PutEventsRequestEntry{
		EventBusName: aws.String(bus),
		Source:       aws.String(source),
		DetailType:   aws.String("AWS API Call via CloudTrail"),
		Detail:       aws.String(string(detail)),
		Time:         aws.Time(time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)),
	}
}

// serviceEvent is an event KMS sends itself, naming the key in resources
// and detail.key-id.
func serviceEvent(bus, detailType string) ebtypes.PutEventsRequestEntry {
	const key = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
	return ebtypes.PutEventsRequestEntry{
		EventBusName: aws.String(bus),
		Source:       aws.String("aws.kms"),
		DetailType:   aws.String(detailType),
		Detail:       aws.String(`{"key-id":"1234abcd-12ab-34cd-56ef-1234567890ab"}`),
		Resources:    []string{key},
	}
}

// envelope is what the queue holds: the EventBridge event.
type envelope struct {
	Version    string
	Source     string
	DetailType string `json:"detail-type"`
	Region     string
	Resources  []string
	Detail     struct {
		EventSource       string
		EventName         string
		KeyID             string `json:"key-id"`
		RequestParameters struct{ KeyID string }
	}
}

// name tells an event by what the rule matched it on.
func (e envelope) name() string {
	if e.DetailType == "AWS API Call via CloudTrail" {
		return e.Detail.EventName
	}
	return e.DetailType
}

type motoClients struct {
	cfn *cloudformation.Client
	eb  *eventbridge.Client
	sqs *sqs.Client
}

func clientsFor(url, region string) motoClients {
	cfg := aws.Config{
		Region:       region,
		Credentials:  credentials.NewStaticCredentialsProvider("test", "test", ""),
		BaseEndpoint: aws.String(url),
		// One attempt: moto answers a failed CreateStack with a 500 after
		// creating part of the stack, and a retry then reports only
		// AlreadyExists.
		RetryMaxAttempts: 1,
	}
	return motoClients{cloudformation.NewFromConfig(cfg), eventbridge.NewFromConfig(cfg), sqs.NewFromConfig(cfg)}
}

// createStack creates a stack from a template file, waits for
// CREATE_COMPLETE and returns its outputs.
func (c motoClients) createStack(t *testing.T, name, path string, params map[string]string) map[string]string {
	t.Helper()
	ctx := context.Background()
	body, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	in := &cloudformation.CreateStackInput{
		StackName:    aws.String(name),
		TemplateBody: aws.String(string(body)),
		Capabilities: []cfntypes.Capability{cfntypes.CapabilityCapabilityIam},
	}
	for k, v := range params {
		in.Parameters = append(in.Parameters, cfntypes.Parameter{ParameterKey: aws.String(k), ParameterValue: aws.String(v)})
	}
	if _, err := c.cfn.CreateStack(ctx, in); err != nil {
		t.Fatalf("CreateStack %s: %v", path, err)
	}
	out, err := cloudformation.NewStackCreateCompleteWaiter(c.cfn, func(o *cloudformation.StackCreateCompleteWaiterOptions) {
		o.MinDelay, o.MaxDelay = 200*time.Millisecond, time.Second
	}).WaitForOutput(ctx, &cloudformation.DescribeStacksInput{StackName: aws.String(name)}, 20*time.Second)
	if err != nil {
		t.Fatalf("stack %s: %v", name, err)
	}
	outputs := map[string]string{}
	for _, o := range out.Stacks[0].Outputs {
		outputs[aws.ToString(o.OutputKey)] = aws.ToString(o.OutputValue)
	}
	return outputs
}

func (c motoClients) putEvents(t *testing.T, entries ...ebtypes.PutEventsRequestEntry) {
	t.Helper()
	for batch := range slices.Chunk(entries, 10) {
		out, err := c.eb.PutEvents(context.Background(), &eventbridge.PutEventsInput{Entries: batch})
		if err != nil {
			t.Fatal(err)
		}
		if out.FailedEntryCount != 0 {
			for _, e := range out.Entries {
				if e.ErrorCode != nil {
					t.Errorf("PutEvents: %s: %s", aws.ToString(e.ErrorCode), aws.ToString(e.ErrorMessage))
				}
			}
			t.FailNow()
		}
	}
}

// drain receives and deletes every message of a queue, the way the exporter
// consumes it, until a one-second long poll comes back empty.
func (c motoClients) drain(t *testing.T, queueURL string) []envelope {
	t.Helper()
	ctx := context.Background()
	var got []envelope
	for {
		out, err := c.sqs.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{
			QueueUrl: aws.String(queueURL), MaxNumberOfMessages: 10, WaitTimeSeconds: 1,
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(out.Messages) == 0 {
			return got
		}
		for _, m := range out.Messages {
			var e envelope
			if err := json.Unmarshal([]byte(aws.ToString(m.Body)), &e); err != nil {
				t.Fatalf("message is not an EventBridge event: %v\n%s", err, aws.ToString(m.Body))
			}
			got = append(got, e)
			if _, err := c.sqs.DeleteMessage(ctx, &sqs.DeleteMessageInput{QueueUrl: aws.String(queueURL), ReceiptHandle: m.ReceiptHandle}); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func names(events []envelope) []string {
	var out []string
	for _, e := range events {
		out = append(out, e.name())
	}
	slices.Sort(out)
	return out
}

// TestEventsQueueStack deploys both templates on moto: the central stack in
// eu-west-1 with a custom bus, a forwarder in us-east-1 pointing at it, then
// sends KMS and unrelated events and reads what reaches the queue.
func TestEventsQueueStack(t *testing.T) {
	moto := kmstest.StartMoto(t)
	central := clientsFor(moto.URL, "eu-west-1")
	const bus = "kms-events"
	out := central.createStack(t, "kms-events-queue", queueTemplate, map[string]string{
		"EventBusName": bus, "OrganizationId": "o-a1b2c3d4e5",
	})
	for _, k := range []string{"QueueUrl", "QueueArn", "DeadLetterQueueUrl", "DeadLetterQueueArn", "EventBusArn", "ExporterPolicy"} {
		if out[k] == "" {
			t.Fatalf("stack output %s missing: %v", k, out)
		}
	}

	t.Run("queues", func(t *testing.T) {
		ctx := context.Background()
		attrs := func(url string) map[string]string {
			a, err := central.sqs.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{
				QueueUrl: aws.String(url), AttributeNames: []sqstypes.QueueAttributeName{sqstypes.QueueAttributeNameAll},
			})
			if err != nil {
				t.Fatal(err)
			}
			return a.Attributes
		}
		q, dlq := attrs(out["QueueUrl"]), attrs(out["DeadLetterQueueUrl"])
		var redrive struct {
			DeadLetterTargetArn string
			MaxReceiveCount     json.Number
		}
		if err := json.Unmarshal([]byte(q["RedrivePolicy"]), &redrive); err != nil {
			t.Fatalf("RedrivePolicy %q: %v", q["RedrivePolicy"], err)
		}
		if redrive.DeadLetterTargetArn != out["DeadLetterQueueArn"] || redrive.MaxReceiveCount != "5" {
			t.Errorf("RedrivePolicy %+v, want the dead-letter queue %s after 5 receives", redrive, out["DeadLetterQueueArn"])
		}
		want := map[string]string{"VisibilityTimeout": "120", "MessageRetentionPeriod": "86400", "SqsManagedSseEnabled": "true", "ReceiveMessageWaitTimeSeconds": "20"}
		for k, v := range want {
			if q[k] != v {
				t.Errorf("queue %s = %q, want %q", k, q[k], v)
			}
		}
		if dlq["MessageRetentionPeriod"] != "1209600" || dlq["SqsManagedSseEnabled"] != "true" {
			t.Errorf("dead-letter queue: retention %q, SSE %q", dlq["MessageRetentionPeriod"], dlq["SqsManagedSseEnabled"])
		}
	})

	t.Run("exporter policy output", func(t *testing.T) {
		var printed iamPolicy
		if err := json.Unmarshal([]byte(out["ExporterPolicy"]), &printed); err != nil {
			t.Fatalf("ExporterPolicy output is not a policy: %v\n%s", err, out["ExporterPolicy"])
		}
		shipped := readPolicy(t, eventsPolicyFile)
		if len(printed.Statement) != 1 || printed.Statement[0].Resource != out["QueueArn"] ||
			!slices.Equal(printed.Statement[0].Action, shipped.Statement[0].Action) {
			t.Errorf("ExporterPolicy %+v: want the actions of %s on %s", printed, eventsPolicyFile, out["QueueArn"])
		}
	})

	t.Run("only KMS events reach the queue", func(t *testing.T) {
		// One KMS change and two unrelated events, on the custom bus (as
		// forwarded) and on the default bus (this account's own).
		for _, b := range []string{bus, "default"} {
			central.putEvents(t,
				cloudTrailEvent(b, "kms.amazonaws.com", "DisableKeyRotation"),
				cloudTrailEvent(b, "kms.amazonaws.com", "Encrypt"),
				cloudTrailEvent(b, "s3.amazonaws.com", "PutBucketPolicy"),
			)
			got := central.drain(t, out["QueueUrl"])
			if len(got) != 1 {
				t.Fatalf("bus %s: %d messages %v, want only DisableKeyRotation", b, len(got), names(got))
			}
			e := got[0]
			if e.Version != "0" || e.Source != "aws.kms" || e.DetailType != "AWS API Call via CloudTrail" ||
				e.Detail.EventSource != "kms.amazonaws.com" || e.Detail.EventName != "DisableKeyRotation" ||
				e.Detail.RequestParameters.KeyID != "1234abcd-12ab-34cd-56ef-1234567890ab" {
				t.Errorf("bus %s: message %+v", b, e)
			}
		}
	})

	t.Run("the pattern passes every handled event and nothing else", func(t *testing.T) {
		var entries []ebtypes.PutEventsRequestEntry
		for _, n := range kmsEventNames {
			entries = append(entries, cloudTrailEvent("default", "kms.amazonaws.com", n))
		}
		for _, d := range kmsServiceDetailTypes {
			entries = append(entries, serviceEvent("default", d))
		}
		// KMS calls the exporter does not act on, the same names from
		// another service, and KMS's other service events.
		for _, n := range []string{"Encrypt", "Decrypt", "GenerateDataKey", "DescribeKey", "GetKeyRotationStatus", "ListKeys", "RotateKey"} {
			entries = append(entries, cloudTrailEvent("default", "kms.amazonaws.com", n))
		}
		entries = append(entries,
			cloudTrailEvent("default", "s3.amazonaws.com", "TagResource"),
			cloudTrailEvent("default", "secretsmanager.amazonaws.com", "CreateKey"),
			serviceEvent("default", "AWS Service Event via CloudTrail"),
		)
		central.putEvents(t, entries...)
		want := slices.Concat(kmsEventNames, kmsServiceDetailTypes)
		slices.Sort(want)
		if got := names(central.drain(t, out["QueueUrl"])); !slices.Equal(got, want) {
			t.Errorf("queue received %v\nwant exactly %v", got, want)
		}
	})

	t.Run("forwarder", func(t *testing.T) {
		member := clientsFor(moto.URL, "us-east-1")
		fwd := member.createStack(t, "kms-events-forwarder", forwarderTemplate, map[string]string{
			"CentralEventBusArn": out["EventBusArn"],
		})
		ctx := context.Background()
		ruleName := fwd["RuleArn"][strings.LastIndex(fwd["RuleArn"], "/")+1:]
		rule, err := member.eb.DescribeRule(ctx, &eventbridge.DescribeRuleInput{Name: aws.String(ruleName)})
		if err != nil {
			t.Fatalf("forwarding rule %s: %v", fwd["RuleArn"], err)
		}
		var pattern any
		if err := json.Unmarshal([]byte(aws.ToString(rule.EventPattern)), &pattern); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(pattern, eventPatterns(t, queueTemplate)["KmsEventsRule"]) {
			t.Errorf("deployed forwarding pattern %s differs from the central rule's", aws.ToString(rule.EventPattern))
		}
		targets, err := member.eb.ListTargetsByRule(ctx, &eventbridge.ListTargetsByRuleInput{Rule: aws.String(ruleName)})
		if err != nil || len(targets.Targets) != 1 || aws.ToString(targets.Targets[0].Arn) != out["EventBusArn"] ||
			aws.ToString(targets.Targets[0].RoleArn) != fwd["RoleArn"] {
			t.Fatalf("forwarding targets %+v (%v): want the central bus %s with role %s", targets, err, out["EventBusArn"], fwd["RoleArn"])
		}
		// Events that cannot be put on the central bus go to the member's
		// dead-letter queue, encrypted, kept 14 days.
		if dlc := targets.Targets[0].DeadLetterConfig; dlc == nil || aws.ToString(dlc.Arn) != fwd["DeadLetterQueueArn"] {
			t.Errorf("forwarding target dead-letter config %+v, want %s", dlc, fwd["DeadLetterQueueArn"])
		}
		dlq, err := member.sqs.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{
			QueueUrl: aws.String(fwd["DeadLetterQueueUrl"]), AttributeNames: []sqstypes.QueueAttributeName{sqstypes.QueueAttributeNameAll},
		})
		if err != nil || dlq.Attributes["QueueArn"] != fwd["DeadLetterQueueArn"] ||
			dlq.Attributes["MessageRetentionPeriod"] != "1209600" || dlq.Attributes["SqsManagedSseEnabled"] != "true" {
			t.Errorf("forwarder dead-letter queue %v (%v): want %s, 14 days, SSE-SQS", dlq, err, fwd["DeadLetterQueueArn"])
		}
		// A KMS change in the member region reaches the central queue; an
		// unrelated event does not.
		member.putEvents(t,
			cloudTrailEvent("default", "kms.amazonaws.com", "EnableKeyRotation"),
			cloudTrailEvent("default", "kms.amazonaws.com", "Decrypt"),
		)
		if got := names(central.drain(t, out["QueueUrl"])); !slices.Equal(got, []string{"EnableKeyRotation"}) {
			t.Errorf("central queue received %v from the member region, want [EnableKeyRotation]", got)
		}
	})
}

// TestEventsTemplatesLint runs cfn-lint, which checks every resource's
// properties against CloudFormation's schemas (moto skips resource types it
// does not implement: AWS::SQS::QueuePolicy, AWS::Events::EventBusPolicy).
func TestEventsTemplatesLint(t *testing.T) {
	run(t, ".", "cfn-lint", queueTemplate, forwarderTemplate)
}

// TestEventsTemplatePolicies reads the resource policies moto does not
// apply: only EventBridge, for the KMS rules, may send to the queues; only
// the organisation may put events on the bus; the forwarder's role may put
// events on the central bus and nothing else.
func TestEventsTemplatePolicies(t *testing.T) {
	central, _ := readYAML(t, queueTemplate)[0]["Resources"].(map[string]any)
	var rules []string
	for id, r := range central {
		if dig(r, "Type") != "AWS::Events::Rule" {
			continue
		}
		rules = append(rules, id+".Arn")
		if dig(r, "Properties", "Targets", 0, "Arn") != "Queue.Arn" || dig(r, "Properties", "Targets", 0, "DeadLetterConfig", "Arn") != "DeadLetterQueue.Arn" ||
			dig(r, "Properties", "Targets", 1) != nil {
			t.Errorf("rule %s: targets %v, want the queue, undeliverable events to the dead-letter queue", id, dig(r, "Properties", "Targets"))
		}
	}
	slices.Sort(rules)

	checkRulesOnly(t, "queue policy", dig(central, "QueuePolicy", "Properties"), []string{"Queue", "DeadLetterQueue"}, rules)

	bp := dig(central, "OrganizationPutEvents")
	st := dig(bp, "Properties", "Statement")
	if dig(bp, "Condition") != "AllowOrganization" || dig(st, "Effect") != "Allow" || dig(st, "Principal") != "*" ||
		dig(st, "Action") != "events:PutEvents" || dig(st, "Condition", "StringEquals", "aws:PrincipalOrgID") != "OrganizationId" {
		t.Errorf("event bus policy %v: want PutEvents for the organisation only, and none without an OrganizationId", bp)
	}

	forwarder, _ := readYAML(t, forwarderTemplate)[0]["Resources"].(map[string]any)
	role := dig(forwarder, "ForwardRole", "Properties")
	trust := dig(role, "AssumeRolePolicyDocument", "Statement")
	perm := dig(role, "Policies", 0, "PolicyDocument", "Statement")
	if dig(trust, 0, "Principal", "Service") != "events.amazonaws.com" || dig(trust, 1) != nil ||
		dig(perm, 0, "Action") != "events:PutEvents" || dig(perm, 0, "Resource") != "CentralEventBusArn" || dig(perm, 1) != nil ||
		dig(role, "Policies", 1) != nil || dig(role, "ManagedPolicyArns") != nil {
		t.Errorf("forwarder role %v: want EventBridge to assume it for PutEvents on the central bus only", role)
	}
	target := dig(forwarder, "ForwardKmsEventsRule", "Properties", "Targets", 0)
	if dig(target, "Arn") != "CentralEventBusArn" || dig(target, "RoleArn") != "ForwardRole.Arn" ||
		dig(target, "DeadLetterConfig", "Arn") != "ForwardDeadLetterQueue.Arn" {
		t.Errorf("forwarding target %v: want the central bus with the role, undeliverable events to the dead-letter queue", target)
	}
	checkRulesOnly(t, "forwarder dead-letter queue policy", dig(forwarder, "ForwardDeadLetterQueuePolicy", "Properties"),
		[]string{"ForwardDeadLetterQueue"}, []string{"ForwardKmsEventsRule.Arn"})
}

// checkRulesOnly: the queue policy qp (an AWS::SQS::QueuePolicy's
// Properties) is on queues, lets only events.amazonaws.com send to them,
// only for the rules (sorted; what !GetAtt names, a !If's condition left
// out), and denies every request without TLS.
func checkRulesOnly(t *testing.T, name string, qp any, queues, rules []string) {
	t.Helper()
	allow, deny := dig(qp, "PolicyDocument", "Statement", 0), dig(qp, "PolicyDocument", "Statement", 1)
	sources := slices.DeleteFunc(stringsIn(dig(allow, "Condition", "ArnEquals", "aws:SourceArn")), func(s string) bool { return s == "CreateBus" })
	slices.Sort(sources)
	condition, _ := dig(allow, "Condition").(map[string]any)
	if !slices.Equal(stringsIn(dig(qp, "Queues")), queues) ||
		dig(allow, "Effect") != "Allow" || dig(allow, "Principal", "Service") != "events.amazonaws.com" || dig(allow, "Action") != "sqs:SendMessage" ||
		!slices.Equal(slices.Compact(sources), rules) || len(condition) != 1 {
		t.Errorf("%s %v: want only events.amazonaws.com to SendMessage to %v, with aws:SourceArn one of %v", name, allow, queues, rules)
	}
	if dig(deny, "Effect") != "Deny" || dig(deny, "Condition", "Bool", "aws:SecureTransport") != "false" || dig(qp, "PolicyDocument", "Statement", 2) != nil {
		t.Errorf("%s: want a deny of requests without TLS and nothing more, got %v", name, deny)
	}
}

// TestEventsTerraform checks the Terraform modules offline: terraform fmt,
// then init from the local provider mirror and validate, on a copy (init
// writes a lock file and .terraform/). Set KMS_EXPORTER_TF_PLUGIN_DIR to a
// provider mirror holding hashicorp/aws (default /opt/tf-plugins).
// An apply on moto works too (docs/events.md) but takes minutes: the AWS
// provider waits for SQS attributes to settle.
func TestEventsTerraform(t *testing.T) {
	tf := harness.Tool(t, "terraform")
	plugins := cmp.Or(os.Getenv("KMS_EXPORTER_TF_PLUGIN_DIR"), "/opt/tf-plugins")
	if _, err := os.Stat(filepath.Join(plugins, "registry.terraform.io/hashicorp/aws")); err != nil {
		msg := "no hashicorp/aws provider in " + plugins + " (KMS_EXPORTER_TF_PLUGIN_DIR)"
		if harness.RequireTools(t) {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	terraform := func(dir string, args ...string) {
		t.Helper()
		cmd := exec.Command(tf, args...)
		cmd.Dir = dir
		// No version check over the network, no user configuration.
		cmd.Env = append(os.Environ(), "CHECKPOINT_DISABLE=1", "TF_IN_AUTOMATION=1", "TF_CLI_CONFIG_FILE=/dev/null")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("terraform %s in %s: %v\n%s", strings.Join(args, " "), dir, err, out)
		}
	}
	terraform(terraformDir, "fmt", "-check", "-recursive", "-diff")
	copyDir := t.TempDir()
	if err := os.CopyFS(copyDir, os.DirFS(terraformDir)); err != nil {
		t.Fatal(err)
	}
	for _, module := range []string{"central", "forwarder"} {
		dir := filepath.Join(copyDir, module)
		terraform(dir, "init", "-backend=false", "-input=false", "-no-color", "-plugin-dir="+plugins)
		terraform(dir, "validate", "-no-color")
	}
}
