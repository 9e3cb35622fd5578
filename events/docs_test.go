package events

import (
	"encoding/json"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/prometheus/client_golang/prometheus"
)

// TestDocs: docs/events-consumer.md shows EventPattern's pattern and
// documents exactly the metrics the consumer exposes.
func TestDocs(t *testing.T) {
	raw, err := os.ReadFile("../docs/events-consumer.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	block := regexp.MustCompile("(?s)```json\n(.*?)```").FindStringSubmatch(doc)
	var shown, pattern any
	if block == nil || json.Unmarshal([]byte(block[1]), &shown) != nil {
		t.Fatal("no JSON rule pattern in the doc")
	}
	if err := json.Unmarshal([]byte(EventPattern()), &pattern); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(shown, pattern) {
		t.Errorf("the doc's pattern is not EventPattern():\n%s", EventPattern())
	}

	documented := regexp.MustCompile("(?m)^\\| `(kms_exporter_[a-z_]+)` \\|").FindAllStringSubmatch(doc, -1)
	var names []string
	for _, m := range documented {
		names = append(names, m[1])
	}
	c, err := New(Options{QueueURLs: []string{"https://sqs.eu-west-1.amazonaws.com/111122223333/kms-events"},
		Clients: NewSQSClients(aws.Config{Region: region}), Sink: newSink()})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var exposed []string
	for _, f := range families {
		exposed = append(exposed, f.GetName())
	}
	slices.Sort(names)
	if !slices.Equal(names, exposed) {
		t.Errorf("documented metrics %s\nexposed %s", strings.Join(names, ", "), strings.Join(exposed, ", "))
	}
}
