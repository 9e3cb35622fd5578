package eventstest_test

import (
	"context"
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/kms-exporter/kms_exporter/events"
	"github.com/kms-exporter/kms_exporter/internal/eventstest"
	"github.com/kms-exporter/kms_exporter/internal/harness"
	"github.com/kms-exporter/kms_exporter/internal/kmstest"
)

// fields returns the sorted field names of a JSON object, and of its
// "detail" object.
func fields(t *testing.T, body []byte) (envelope, detail []string) {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	var d map[string]json.RawMessage
	if err := json.Unmarshal(m["detail"], &d); err != nil {
		t.Fatalf("detail: %v", err)
	}
	envelope, detail = slices.Collect(maps.Keys(m)), slices.Collect(maps.Keys(d))
	sort.Strings(envelope)
	sort.Strings(detail)
	return envelope, detail
}

func fixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(kmstest.RepoRoot(), "events", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestFollowRotations: with the bus following the proxy, an on-demand
// rotation puts on the queue the RotateKeyOnDemand CloudTrail event and a
// KMS CMK Rotation event (ON_DEMAND), and an automatic rotation a KMS CMK
// Rotation event (AUTOMATIC) dated when it completed; each has the fields
// of AWS's examples (events/testdata) and parses as naming the key.
func TestFollowRotations(t *testing.T) {
	const region = "eu-west-1"
	srv := kmstest.StartT(t, kmstest.Options{Region: region})
	proxy := kmstest.NewProxy(t, srv.URL)
	clk := harness.NewClock(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	proxy.SetClock(clk.Now)
	bus := eventstest.NewBus(t, region)
	bus.Follow(proxy, kmstest.DefaultAccount, func(err error) { t.Error(err) })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	c := kmstest.Client(proxy.URL, region)
	created, err := c.CreateKey(ctx, &kms.CreateKeyInput{})
	if err != nil {
		t.Fatal(err)
	}
	id := aws.ToString(created.KeyMetadata.KeyId)
	arn := aws.ToString(created.KeyMetadata.Arn)
	material := func() string {
		d, err := c.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: &id})
		if err != nil {
			t.Fatal(err)
		}
		return aws.ToString(d.KeyMetadata.CurrentKeyMaterialId)
	}
	if _, err := c.EnableKeyRotation(ctx, &kms.EnableKeyRotationInput{KeyId: &id, RotationPeriodInDays: aws.Int32(90)}); err != nil {
		t.Fatal(err)
	}
	first := material()
	if _, err := c.RotateKeyOnDemand(ctx, &kms.RotateKeyOnDemandInput{KeyId: &id}); err != nil {
		t.Fatal(err)
	}
	onDemandAt := clk.Now()
	second := material()
	clk.Add(91 * 24 * time.Hour)
	third := material() // the call that sees the date passed
	automaticAt := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC).Add(90 * 24 * time.Hour)

	var bodies []string
	deadline := time.Now().Add(20 * time.Second)
	for len(bodies) < 5 && time.Now().Before(deadline) {
		got, err := bus.Receive(ctx, 10, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		bodies = append(bodies, got...)
	}
	// CreateKey, EnableKeyRotation, RotateKeyOnDemand, two rotations.
	if len(bodies) != 5 {
		t.Fatalf("%d events on the queue, want 5: %q", len(bodies), bodies)
	}
	wantRotationEnv, wantRotationDetail := fields(t, fixture(t, "service-rotation.json"))
	wantRotationEnv = slices.DeleteFunc(wantRotationEnv, func(f string) bool { return f == "account" }) // moto leaves it out
	wantTrailEnv, wantTrailDetail := fields(t, fixture(t, "cloudtrail-rotate-key-on-demand.json"))
	wantTrailEnv = slices.DeleteFunc(wantTrailEnv, func(f string) bool { return f == "account" })

	var rotations []map[string]any
	var onDemandCalls int
	for _, body := range bodies {
		ev, err := events.Parse([]byte(body))
		if err != nil {
			t.Fatalf("%v: %s", err, body)
		}
		if len(ev.Refs) != 1 || ev.Refs[0].KeyID != id || ev.Refs[0].Region != region {
			t.Errorf("%s event names %+v, want key %s in %s", ev.Type, ev.Refs, id, region)
		}
		env, detail := fields(t, []byte(body))
		var msg struct {
			Time      time.Time
			Resources []string
			Detail    map[string]any
		}
		if err := json.Unmarshal([]byte(body), &msg); err != nil {
			t.Fatal(err)
		}
		switch ev.Type {
		case events.DetailTypeRotation:
			if !slices.Equal(env, wantRotationEnv) || !slices.Equal(detail, wantRotationDetail) {
				t.Errorf("KMS CMK Rotation fields %v / detail %v, want %v / %v as AWS's example", env, detail, wantRotationEnv, wantRotationDetail)
			}
			if !slices.Equal(msg.Resources, []string{arn}) {
				t.Errorf("KMS CMK Rotation resources %v, want [%s]", msg.Resources, arn)
			}
			msg.Detail["time"] = msg.Time
			rotations = append(rotations, msg.Detail)
		case "RotateKeyOnDemand":
			onDemandCalls++
			if !slices.Equal(env, wantTrailEnv) || !slices.Equal(detail, wantTrailDetail) {
				t.Errorf("RotateKeyOnDemand fields %v / detail %v, want %v / %v as AWS's example", env, detail, wantTrailEnv, wantTrailDetail)
			}
			if re, _ := msg.Detail["responseElements"].(map[string]any); re["keyId"] != id {
				t.Errorf("RotateKeyOnDemand responseElements %v, want the key id", msg.Detail["responseElements"])
			}
			if !ev.Time.Equal(onDemandAt) {
				t.Errorf("RotateKeyOnDemand recorded at %s, want the proxy's time of the call (%s)", ev.Time, onDemandAt)
			}
		}
	}
	if onDemandCalls != 1 || len(rotations) != 2 {
		t.Fatalf("%d RotateKeyOnDemand and %d KMS CMK Rotation events, want 1 and 2", onDemandCalls, len(rotations))
	}
	sort.Slice(rotations, func(i, j int) bool { return rotations[i]["time"].(time.Time).Before(rotations[j]["time"].(time.Time)) })
	for i, want := range []map[string]any{
		{"key-id": id, "key-origin": "AWS_KMS", "rotation-type": "ON_DEMAND", "previous-key-material-id": first, "current-key-material-id": second, "time": onDemandAt},
		{"key-id": id, "key-origin": "AWS_KMS", "rotation-type": "AUTOMATIC", "previous-key-material-id": second, "current-key-material-id": third, "time": automaticAt},
	} {
		for k, v := range want {
			if got := rotations[i][k]; got != v && !(k == "time" && got.(time.Time).Equal(v.(time.Time))) {
				t.Errorf("rotation %d: %s = %v, want %v", i, k, got, v)
			}
		}
	}
}
