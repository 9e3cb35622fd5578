package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kms-exporter/kms_exporter/internal/eventstest"
	"github.com/kms-exporter/kms_exporter/internal/harness"
	"github.com/kms-exporter/kms_exporter/internal/kmstest"
)

// TestServeWithEvents runs the binary with --events.sqs-queue-url on moto's
// SQS, fed by an EventBridge rule, a resync of a day and an hour between
// refreshes: a rotation disabled with the AWS CLI shows on /metrics within
// seconds of its CloudTrail event reaching the bus, the message is deleted
// once it does, and the metrics of the event path say so.
func TestServeWithEvents(t *testing.T) {
	srv, ids := kmstest.StartMixedT(t, "eu-west-1")
	bus := eventstest.NewBus(t, "eu-west-1")
	p := launch(t, []string{"--refresh.interval=1h", "--refresh.resync-interval=24h", "--events.sqs-queue-url=" + bus.QueueURL},
		testEnv(srv.URL, "AWS_ENDPOINT_URL_SQS="+bus.Moto.URL))
	p.waitReady(t)
	metrics := "http://" + p.addr + "/metrics"
	id := ids["payments"]
	if _, body := get(t, metrics); !strings.Contains(body, complianceLine(id, "compliant", "rotation_enabled")) {
		t.Fatalf("before: %s is not compliant", id)
	}

	harness.AWSCLI(t, srv.URL, "eu-west-1", "kms", "disable-key-rotation", "--key-id", id)
	// Without an event nothing would show before the next refresh, an hour away.
	time.Sleep(time.Second)
	if _, body := get(t, metrics); !strings.Contains(body, complianceLine(id, "compliant", "rotation_enabled")) {
		t.Fatalf("%s changed without an event", id)
	}
	arn := fmt.Sprintf("arn:aws:kms:eu-west-1:%s:key/%s", kmstest.DefaultAccount, id)
	sent := time.Now()
	bus.APICall(t, "DisableKeyRotation", kmstest.DefaultAccount, "eu-west-1", arn, sent)
	harness.Poll(t, 10*time.Second, func() string {
		if _, body := get(t, metrics); !strings.Contains(body, complianceLine(id, "noncompliant", "rotation_disabled")) {
			return id + " is not noncompliant yet"
		}
		return ""
	})
	t.Logf("DisableKeyRotation event to noncompliant on /metrics: %v", time.Since(sent).Round(time.Millisecond))
	harness.Poll(t, 10*time.Second, func() string {
		if h := bus.Held(t); h != "0 visible, 0 in flight" {
			return "queue: " + h
		}
		return ""
	})
	_, body := get(t, metrics)
	for _, want := range []string{
		`kms_exporter_events_received_total{type="DisableKeyRotation"} 1`,
		`kms_exporter_event_messages_total{result="deleted"} 1`,
		`kms_exporter_event_lag_seconds_count 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// TestEventsSurviveARestart kills the exporter in the middle of a batch,
// while it holds a message (its re-read of the key hangs) and after it
// handled another, turns the change back, and starts a new
// exporter: the message comes back after the queue's visibility timeout and
// is handled and deleted by the new one (no event lost), and the late
// DisableKeyRotation event does not make the key noncompliant: the key shows
// what KMS says now (an event applied again is a read again, never its
// content).
func TestEventsSurviveARestart(t *testing.T) {
	srv, ids := kmstest.StartMixedT(t, "eu-west-1")
	proxy := kmstest.NewProxy(t, srv.URL)
	bus := eventstest.NewBusVisibility(t, "eu-west-1", 5)
	args := []string{"--refresh.interval=1h", "--refresh.resync-interval=24h", "--events.sqs-queue-url=" + bus.QueueURL}
	env := testEnv(proxy.URL, "AWS_ENDPOINT_URL_SQS="+bus.Moto.URL)
	id := ids["payments"]
	arn := fmt.Sprintf("arn:aws:kms:eu-west-1:%s:key/%s", kmstest.DefaultAccount, id)
	counter := func(p *process, series string) string {
		_, body := get(t, "http://"+p.addr+"/metrics")
		for _, line := range strings.Split(body, "\n") {
			if v, ok := strings.CutPrefix(line, series+" "); ok {
				return v
			}
		}
		return "none"
	}

	first := launch(t, args, env)
	first.waitReady(t)
	proxy.AddFault(&kmstest.Fault{Op: "DescribeKey", KeyID: id, Delay: time.Minute})
	harness.AWSCLI(t, srv.URL, "eu-west-1", "kms", "disable-key-rotation", "--key-id", id)
	// A batch: the hung key's event, and another key's, which the first
	// exporter handles before it dies.
	other := ids["legacy-billing"]
	harness.AWSCLI(t, srv.URL, "eu-west-1", "kms", "enable-key-rotation", "--key-id", other)
	bus.APICall(t, "DisableKeyRotation", kmstest.DefaultAccount, "eu-west-1", arn, time.Now())
	bus.APICall(t, "EnableKeyRotation", kmstest.DefaultAccount, "eu-west-1", strings.Replace(arn, id, other, 1), time.Now())
	harness.Poll(t, 10*time.Second, func() string {
		if v := counter(first, `kms_exporter_event_messages_total{result="deleted"}`); v != "1" {
			return "messages deleted by the first exporter: " + v
		}
		if v := counter(first, `kms_exporter_events_received_total{type="DisableKeyRotation"}`); v != "1" {
			return "events received by the first exporter: " + v
		}
		return ""
	})
	if _, body := get(t, "http://"+first.addr+"/metrics"); !strings.Contains(body, complianceLine(other, "compliant", "rotation_enabled")) {
		t.Errorf("the first exporter did not publish %s, whose event it handled", other)
	}
	_ = first.cmd.Process.Kill() // while its re-read of the key hangs
	<-first.exited
	if h := bus.Held(t); h != "0 visible, 1 in flight" {
		t.Fatalf("queue when the first exporter died: %s, want the message in flight", h)
	}

	harness.AWSCLI(t, srv.URL, "eu-west-1", "kms", "enable-key-rotation", "--key-id", id)
	proxy.ClearFaults()
	second := launch(t, args, env)
	second.waitReady(t)
	harness.Poll(t, time.Minute, func() string {
		if v := counter(second, `kms_exporter_event_messages_total{result="deleted"}`); v != "1" {
			return "messages deleted by the second exporter: " + v + "; queue: " + bus.Held(t)
		}
		return ""
	})
	if h := bus.Held(t); h != "0 visible, 0 in flight" {
		t.Errorf("queue after the second exporter: %s, want empty", h)
	}
	if _, body := get(t, "http://"+second.addr+"/metrics"); !strings.Contains(body, complianceLine(id, "compliant", "rotation_enabled")) {
		t.Errorf("the late DisableKeyRotation event made %s other than what KMS says (compliant)", id)
	}
}
