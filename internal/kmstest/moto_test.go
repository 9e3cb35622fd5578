package kmstest

import (
	"net/http"
	"strings"
	"testing"
)

// TestStartMoto starts moto's server and asks its SQS for the queues in
// the AWS JSON protocol aws-sdk-go-v2's SQS client speaks.
func TestStartMoto(t *testing.T) {
	m := StartMoto(t)
	req, _ := http.NewRequest(http.MethodPost, m.URL, strings.NewReader(`{}`))
	req.Header.Set("Content-Type", "application/x-amz-json-1.0")
	req.Header.Set("X-Amz-Target", "AmazonSQS.ListQueues")
	req.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=x/20260101/us-east-1/sqs/aws4_request, SignedHeaders=host, Signature=x")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/x-amz-json-1.0") {
		t.Fatalf("ListQueues over JSON: %s, Content-Type %q", resp.Status, resp.Header.Get("Content-Type"))
	}
}
