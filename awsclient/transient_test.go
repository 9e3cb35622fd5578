package awsclient

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
)

// TestTransient sends a real DescribeKey through the SDK to a server that
// answers as KMS does, and checks which failures say nothing about the key
// (the verdict must not change) and which are KMS's answer about it.
func TestTransient(t *testing.T) {
	cases := []struct {
		name      string
		status    int
		code      string
		delay     time.Duration
		transient bool
		// plain: the body is plain text, not KMS's JSON (local-kms's 501).
		plain string
	}{
		{"throttled", 400, "ThrottlingException", 0, true, ""},
		{"KMS internal error", 500, "KMSInternalException", 0, true, ""},
		{"dependency timeout", 500, "DependencyTimeoutException", 0, true, ""},
		{"5xx with a code KMS does not model", 503, "ServiceUnavailable", 0, true, ""},
		{"too slow for the client timeout", 200, "", time.Second, true, ""},
		{"access denied", 400, "AccessDeniedException", 0, false, ""},
		{"not found", 400, "NotFoundException", 0, false, ""},
		{"cannot rotate", 400, "UnsupportedOperationException", 0, false, ""},
		{"invalid state", 400, "KMSInvalidStateException", 0, false, ""},
		{"the endpoint lacks the call (local-kms's 501)", 501, "HTTP501", 0, false, "Not implemented"},
		{"a plain-text 502 from a proxy", 502, "HTTP502", 0, true, "Bad gateway"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if c.delay > 0 {
					select {
					case <-time.After(c.delay):
					case <-r.Context().Done():
					}
					return
				}
				if c.plain != "" {
					w.WriteHeader(c.status)
					fmt.Fprint(w, c.plain)
					return
				}
				w.Header().Set("Content-Type", "application/x-amz-json-1.1")
				w.WriteHeader(c.status)
				fmt.Fprintf(w, `{"__type":%q,"message":"m"}`, c.code)
			}))
			defer srv.Close()
			err := describe(t, srv.URL)
			if err == nil {
				t.Fatal("DescribeKey succeeded")
			}
			if got := Transient(err); got != c.transient {
				t.Errorf("Transient(%v) = %v, want %v", err, got, c.transient)
			}
			if c.code != "" && ErrorCode(err) != c.code {
				t.Errorf("ErrorCode(%v) = %q, want %q", err, ErrorCode(err), c.code)
			}
		})
	}
	t.Run("connection refused", func(t *testing.T) {
		srv := httptest.NewServer(http.NotFoundHandler())
		url := srv.URL
		srv.Close()
		if err := describe(t, url); !Transient(err) {
			t.Errorf("Transient(%v) = false, want true", err)
		}
	})
	if Transient(nil) {
		t.Error("Transient(nil) = true")
	}
}

func describe(t *testing.T, url string) error {
	t.Helper()
	f := NewFactory(aws.Config{Region: "eu-west-1", BaseEndpoint: aws.String(url),
		Credentials: credentials.NewStaticCredentialsProvider("test", "test", "")},
		Options{MaxConcurrency: 1, MaxAttempts: 1, Timeout: 200 * time.Millisecond})
	_, err := f.KMS(Role{}, "eu-west-1").DescribeKey(context.Background(), &kms.DescribeKeyInput{KeyId: aws.String("k")})
	return err
}
