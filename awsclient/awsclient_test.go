package awsclient

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// fakeAWS answers STS AssumeRole, account:ListRegions and KMS ListKeys at
// the HTTP level, as AWS does, and records what it was asked.
type fakeAWS struct {
	mu          sync.Mutex
	assumed     []url.Values
	kmsAuth     []string
	denyAssume  bool
	throttle    int  // ListKeys calls to throttle first
	stall       int  // KMS calls to leave unanswered first (until the client gives up)
	stallBody   bool // the stalled calls get their headers and half a body first
	delay       time.Duration
	inFlight    atomic.Int32
	maxInFlight atomic.Int32
	regionsReq  []string
}

func (f *fakeAWS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	switch {
	case r.URL.Path == "/listRegions":
		f.mu.Lock()
		f.regionsReq = append(f.regionsReq, string(body))
		f.mu.Unlock()
		var in struct{ NextToken string }
		_ = json.Unmarshal(body, &in)
		w.Header().Set("Content-Type", "application/json")
		if in.NextToken == "" {
			fmt.Fprint(w, `{"NextToken":"page2","Regions":[{"RegionName":"eu-west-1","RegionOptStatus":"ENABLED_BY_DEFAULT"}]}`)
		} else {
			fmt.Fprint(w, `{"Regions":[{"RegionName":"ap-southeast-3","RegionOptStatus":"ENABLED"}]}`)
		}
	case strings.HasPrefix(r.Header.Get("X-Amz-Target"), "TrentService."):
		n := f.inFlight.Add(1)
		defer f.inFlight.Add(-1)
		for {
			m := f.maxInFlight.Load()
			if n <= m || f.maxInFlight.CompareAndSwap(m, n) {
				break
			}
		}
		time.Sleep(f.delay)
		f.mu.Lock()
		f.kmsAuth = append(f.kmsAuth, r.Header.Get("Authorization"))
		throttle, stall, stallBody := f.throttle > 0, f.stall > 0, f.stallBody
		if throttle {
			f.throttle--
		}
		if stall {
			f.stall--
		}
		f.mu.Unlock()
		if stall {
			if stallBody {
				w.Header().Set("Content-Type", "application/x-amz-json-1.1")
				fmt.Fprint(w, `{"Keys":[{"KeyId":"`)
				w.(http.Flusher).Flush()
			}
			select {
			case <-r.Context().Done():
			case <-time.After(10 * time.Second):
			}
			return
		}
		w.Header().Set("Content-Type", "application/x-amz-json-1.1")
		if throttle {
			w.WriteHeader(400)
			fmt.Fprint(w, `{"__type":"ThrottlingException","message":"You have exceeded the rate at which you may call KMS."}`)
			return
		}
		fmt.Fprint(w, `{"Keys":[],"Truncated":false}`)
	default: // STS query protocol
		form, _ := url.ParseQuery(string(body))
		if form.Get("Action") != "AssumeRole" {
			http.Error(w, "unexpected "+form.Get("Action"), 400)
			return
		}
		f.mu.Lock()
		f.assumed = append(f.assumed, form)
		deny := f.denyAssume
		f.mu.Unlock()
		w.Header().Set("Content-Type", "text/xml")
		if deny {
			w.WriteHeader(403)
			fmt.Fprint(w, `<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>not authorized to perform: sts:AssumeRole</Message></Error><RequestId>r1</RequestId></ErrorResponse>`)
			return
		}
		fmt.Fprint(w, `<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult>
<Credentials><AccessKeyId>ASIAFAKEASSUMED</AccessKeyId><SecretAccessKey>secret</SecretAccessKey><SessionToken>token</SessionToken><Expiration>2099-01-01T00:00:00Z</Expiration></Credentials>
<AssumedRoleUser><Arn>arn:aws:sts::444455556666:assumed-role/kms-audit/kms_exporter</Arn><AssumedRoleId>AROAFAKE:kms_exporter</AssumedRoleId></AssumedRoleUser>
</AssumeRoleResult><ResponseMetadata><RequestId>r2</RequestId></ResponseMetadata></AssumeRoleResponse>`)
	}
}

// setStall sets how many KMS calls to leave unanswered first; the handlers
// of calls given up by the client may still be running.
func (f *fakeAWS) setStall(n int, body bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stall, f.stallBody = n, body
}

func newFake(t *testing.T, opts Options) (*fakeAWS, *Factory) {
	f := &fakeAWS{}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	cfg := aws.Config{Region: "eu-west-1", BaseEndpoint: aws.String(srv.URL),
		Credentials: credentials.NewStaticCredentialsProvider("AKIAOWNCREDS", "secret", "")}
	if opts.MaxAttempts == 0 {
		opts.MaxAttempts = 3
	}
	if opts.Timeout == 0 {
		opts.Timeout = 5 * time.Second
	}
	return f, NewFactory(cfg, opts)
}

func listKeys(ctx context.Context, c *Client) error {
	_, err := c.ListKeys(ctx, &kms.ListKeysInput{})
	return err
}

func TestAssumeRole(t *testing.T) {
	fake, factory := newFake(t, Options{MaxConcurrency: 2})
	role, err := ParseRole("arn:aws:iam::444455556666:role/kms-audit,external-id=org-secret-1")
	if err != nil {
		t.Fatal(err)
	}
	c := factory.KMS(role, "eu-west-1")
	if c.AccountID() != "444455556666" {
		t.Errorf("account id from the role ARN = %q", c.AccountID())
	}
	for range 2 {
		if err := listKeys(context.Background(), c); err != nil {
			t.Fatal(err)
		}
	}
	if err := listKeys(context.Background(), factory.KMS(Role{}, "eu-west-1")); err != nil {
		t.Fatal(err)
	}
	fake.mu.Lock()
	defer fake.mu.Unlock()
	if len(fake.assumed) != 1 {
		t.Fatalf("AssumeRole called %d times, want once (credentials are cached)", len(fake.assumed))
	}
	a := fake.assumed[0]
	if a.Get("RoleArn") != role.ARN || a.Get("ExternalId") != "org-secret-1" || a.Get("RoleSessionName") != "kms_exporter" {
		t.Errorf("AssumeRole request: %v", a)
	}
	if !strings.Contains(fake.kmsAuth[0], "Credential=ASIAFAKEASSUMED/") || !strings.Contains(fake.kmsAuth[1], "Credential=ASIAFAKEASSUMED/") {
		t.Errorf("KMS calls of the role not signed with the assumed credentials: %v", fake.kmsAuth[:2])
	}
	if !strings.Contains(fake.kmsAuth[2], "Credential=AKIAOWNCREDS/") {
		t.Errorf("own-account call not signed with the own credentials: %s", fake.kmsAuth[2])
	}
	// A role named by its ARN alone (as a snapshot names it) keeps its external id.
	if got := factory.Role(role.ARN); got != role {
		t.Errorf("Role(%q) = %+v, want %+v", role.ARN, got, role)
	}
	if got := factory.Role(""); got != (Role{}) {
		t.Errorf(`Role("") = %+v, want the own credentials`, got)
	}
}

func TestAssumeRoleDenied(t *testing.T) {
	fake, factory := newFake(t, Options{MaxConcurrency: 2})
	fake.denyAssume = true
	err := listKeys(context.Background(), factory.KMS(Role{ARN: "arn:aws:iam::444455556666:role/kms-audit"}, "eu-west-1"))
	if err == nil {
		t.Fatal("ListKeys succeeded without credentials")
	}
	if got := ErrorCode(err); got != "AccessDenied" {
		t.Errorf("ErrorCode = %q, want AccessDenied (%v)", got, err)
	}
	if len(fake.kmsAuth) != 0 {
		t.Errorf("KMS was called without credentials")
	}
}

func TestEnabledRegions(t *testing.T) {
	fake, factory := newFake(t, Options{MaxConcurrency: 2})
	regions, err := factory.EnabledRegions(context.Background(), Role{})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(regions, ",") != "eu-west-1,ap-southeast-3" {
		t.Errorf("regions = %v", regions)
	}
	if len(fake.regionsReq) != 2 || !strings.Contains(fake.regionsReq[0], `"ENABLED"`) || !strings.Contains(fake.regionsReq[0], `"ENABLED_BY_DEFAULT"`) {
		t.Errorf("ListRegions requests: %v", fake.regionsReq)
	}
}

func TestThrottlingRetriedAndCounted(t *testing.T) {
	fake, factory := newFake(t, Options{MaxConcurrency: 2, MaxAttempts: 3})
	fake.throttle = 2
	c := factory.KMS(Role{}, "eu-west-1")
	c.LearnAccountID("111122223333")
	if err := listKeys(context.Background(), c); err != nil {
		t.Fatalf("throttled twice with 3 attempts: %v", err)
	}
	fake.throttle = 5
	err := listKeys(context.Background(), c)
	if ErrorCode(err) != "ThrottlingException" {
		t.Fatalf("throttled past the attempts: %v", err)
	}
	want := `
# HELP kms_api_request_errors_total AWS KMS API requests that failed, retries included, by operation and error code (ThrottlingException = throttled).
# TYPE kms_api_request_errors_total counter
kms_api_request_errors_total{account_id="111122223333",error_code="AccessDeniedException",operation="DescribeKey",region="eu-west-1"} 0
kms_api_request_errors_total{account_id="111122223333",error_code="AccessDeniedException",operation="EnableKeyRotation",region="eu-west-1"} 0
kms_api_request_errors_total{account_id="111122223333",error_code="AccessDeniedException",operation="GetKeyRotationStatus",region="eu-west-1"} 0
kms_api_request_errors_total{account_id="111122223333",error_code="AccessDeniedException",operation="ListAliases",region="eu-west-1"} 0
kms_api_request_errors_total{account_id="111122223333",error_code="AccessDeniedException",operation="ListKeyRotations",region="eu-west-1"} 0
kms_api_request_errors_total{account_id="111122223333",error_code="AccessDeniedException",operation="ListKeys",region="eu-west-1"} 0
kms_api_request_errors_total{account_id="111122223333",error_code="AccessDeniedException",operation="ListResourceTags",region="eu-west-1"} 0
kms_api_request_errors_total{account_id="111122223333",error_code="ThrottlingException",operation="DescribeKey",region="eu-west-1"} 0
kms_api_request_errors_total{account_id="111122223333",error_code="ThrottlingException",operation="EnableKeyRotation",region="eu-west-1"} 0
kms_api_request_errors_total{account_id="111122223333",error_code="ThrottlingException",operation="GetKeyRotationStatus",region="eu-west-1"} 0
kms_api_request_errors_total{account_id="111122223333",error_code="ThrottlingException",operation="ListAliases",region="eu-west-1"} 0
kms_api_request_errors_total{account_id="111122223333",error_code="ThrottlingException",operation="ListKeyRotations",region="eu-west-1"} 0
kms_api_request_errors_total{account_id="111122223333",error_code="ThrottlingException",operation="ListKeys",region="eu-west-1"} 5
kms_api_request_errors_total{account_id="111122223333",error_code="ThrottlingException",operation="ListResourceTags",region="eu-west-1"} 0
# HELP kms_api_requests_total AWS KMS API requests made, retries included, by operation.
# TYPE kms_api_requests_total counter
kms_api_requests_total{account_id="111122223333",operation="DescribeKey",region="eu-west-1"} 0
kms_api_requests_total{account_id="111122223333",operation="EnableKeyRotation",region="eu-west-1"} 0
kms_api_requests_total{account_id="111122223333",operation="GetKeyRotationStatus",region="eu-west-1"} 0
kms_api_requests_total{account_id="111122223333",operation="ListAliases",region="eu-west-1"} 0
kms_api_requests_total{account_id="111122223333",operation="ListKeyRotations",region="eu-west-1"} 0
kms_api_requests_total{account_id="111122223333",operation="ListKeys",region="eu-west-1"} 6
kms_api_requests_total{account_id="111122223333",operation="ListResourceTags",region="eu-west-1"} 0
`
	if err := testutil.CollectAndCompare(factory, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
	if problems, err := testutil.CollectAndLint(factory); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}

// TestAttemptTimeoutRetried: an attempt left unanswered past Options.Timeout
// (no answer at all, or headers and half a body) is abandoned, counted as a
// RequestTimeout and retried; past the attempts the call fails as a
// transient timeout. The caller's own deadline or cancellation is not
// retried.
func TestAttemptTimeoutRetried(t *testing.T) {
	fake, factory := newFake(t, Options{MaxConcurrency: 2, MaxAttempts: 3, Timeout: 300 * time.Millisecond})
	c := factory.KMS(Role{}, "eu-west-1")
	c.LearnAccountID("111122223333")
	attempts := func() int { return factory.Counts()["ListKeys"] }
	timeouts := func() float64 {
		c.stats.mu.Lock()
		defer c.stats.mu.Unlock()
		return c.stats.errors[opCode{"ListKeys", "RequestTimeout"}]
	}
	for _, body := range []bool{false, true} {
		before, timedOutBefore := attempts(), timeouts()
		fake.setStall(1, body)
		start := time.Now()
		if err := listKeys(context.Background(), c); err != nil {
			t.Fatalf("one attempt unanswered (half a body: %v) with 3 attempts: %v", body, err)
		}
		if waited := time.Since(start); waited > 5*time.Second {
			t.Errorf("half a body: %v: the call took %s, the unanswered attempt was not abandoned at its timeout", body, waited)
		}
		if got := attempts() - before; got != 2 {
			t.Errorf("half a body: %v: %d attempts, want 2", body, got)
		}
		if got := timeouts() - timedOutBefore; got != 1 {
			t.Errorf("half a body: %v: %v attempts counted as RequestTimeout, want 1", body, got)
		}
	}

	before := attempts()
	fake.setStall(3, false)
	err := listKeys(context.Background(), c)
	if ErrorCode(err) != "RequestTimeout" || !Transient(err) || !strings.Contains(err.Error(), "--aws.timeout") {
		t.Errorf("every attempt unanswered: %v (code %q, transient %v), want a transient RequestTimeout naming --aws.timeout", err, ErrorCode(err), Transient(err))
	}
	if got := attempts() - before; got != 3 {
		t.Errorf("every attempt unanswered: %d attempts, want 3", got)
	}

	for _, c2 := range []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
		code string
	}{
		{"the caller's deadline", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 100*time.Millisecond)
		}, "RequestTimeout"},
		{"the caller's cancellation", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(100*time.Millisecond, cancel)
			return ctx, cancel
		}, "RequestCanceled"},
	} {
		before := attempts()
		fake.setStall(1, false)
		ctx, cancel := c2.ctx()
		err := listKeys(ctx, c)
		cancel()
		if ErrorCode(err) != c2.code || !Transient(err) {
			t.Errorf("%s: %v (code %q, transient %v), want a transient %s", c2.name, err, ErrorCode(err), Transient(err), c2.code)
		}
		if got := attempts() - before; got != 1 {
			t.Errorf("%s: %d attempts, want 1 (not retried)", c2.name, got)
		}
	}
}

// TestRateLimitPerTarget: the limiter only guarantees a minimum duration,
// so this bound cannot flake on a slow machine.
func TestRateLimitPerTarget(t *testing.T) {
	_, factory := newFake(t, Options{MaxConcurrency: 8, RequestsPerSecond: 40})
	c := factory.KMS(Role{}, "eu-west-1")
	start := time.Now()
	var wg sync.WaitGroup
	for range 100 {
		wg.Go(func() {
			if err := listKeys(context.Background(), c); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	// A burst of 40, then 60 more at 40/s: at least 1.5s.
	if elapsed := time.Since(start); elapsed < 1400*time.Millisecond {
		t.Errorf("100 calls at 40/s took %s: the rate limit was not applied", elapsed)
	}
}

func TestMaxConcurrencyAcrossClients(t *testing.T) {
	fake, factory := newFake(t, Options{MaxConcurrency: 3})
	fake.delay = 20 * time.Millisecond
	var wg sync.WaitGroup
	for _, region := range []string{"eu-west-1", "us-east-1", "ap-south-1"} {
		c := factory.KMS(Role{}, region)
		for range 10 {
			wg.Go(func() {
				if err := listKeys(context.Background(), c); err != nil {
					t.Error(err)
				}
			})
		}
	}
	wg.Wait()
	if m := fake.maxInFlight.Load(); m > 3 || m < 1 {
		t.Errorf("max requests in flight = %d, want at most 3", m)
	}
}

func TestParseRole(t *testing.T) {
	good := map[string]Role{
		"arn:aws:iam::123456789012:role/audit":                     {ARN: "arn:aws:iam::123456789012:role/audit"},
		"arn:aws:iam::123456789012:role/path/audit,external-id=x1": {ARN: "arn:aws:iam::123456789012:role/path/audit", ExternalID: "x1"},
		"arn:aws-us-gov:iam::123456789012:role/audit":              {ARN: "arn:aws-us-gov:iam::123456789012:role/audit"},
	}
	for in, want := range good {
		if got, err := ParseRole(in); err != nil || got != want {
			t.Errorf("ParseRole(%q) = %+v, %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "audit", "arn:aws:iam::123:role/audit", "arn:aws:iam::123456789012:user/bob",
		"arn:aws:s3:::bucket", "arn:aws:iam::123456789012:role/audit,external-id=", "arn:aws:iam::123456789012:role/audit,foo=bar"} {
		if _, err := ParseRole(bad); err == nil {
			t.Errorf("ParseRole(%q) accepted", bad)
		}
	}
}

func TestParseRoleKeepsExternalIDOutOfErrors(t *testing.T) {
	_, err := ParseRole("arn:aws:iam::123456789012:role/audit,externalid=s3cr3t-value")
	if err == nil || strings.Contains(err.Error(), "s3cr3t") {
		t.Errorf("error %v", err)
	}
}

func TestParseRegions(t *testing.T) {
	regions, discover, err := ParseRegions([]string{"eu-west-1,us-east-1", "eu-west-1", " ap-southeast-3 "})
	if err != nil || discover || strings.Join(regions, " ") != "eu-west-1 us-east-1 ap-southeast-3" {
		t.Errorf("got %v %v %v", regions, discover, err)
	}
	if r, d, err := ParseRegions([]string{"all"}); err != nil || !d || r != nil {
		t.Errorf("all: %v %v %v", r, d, err)
	}
	if r, d, err := ParseRegions(nil); err != nil || d || r != nil {
		t.Errorf("none: %v %v %v", r, d, err)
	}
	for _, bad := range [][]string{{"EU-WEST-1"}, {"eu-west"}, {"all", "eu-west-1"}, {""}, {"us-gov-west-1; rm"}} {
		if _, _, err := ParseRegions(bad); err == nil {
			t.Errorf("ParseRegions(%q) accepted", bad)
		}
	}
}

// countingConnections serves f and returns a count of the connections
// opened to it and a factory of clients of it with maxConcurrency requests
// in flight, one attempt each.
func countingConnections(t *testing.T, f *fakeAWS, maxConcurrency int) (*atomic.Int32, *Factory) {
	t.Helper()
	var opened atomic.Int32
	srv := httptest.NewUnstartedServer(f)
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			opened.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	factory := NewFactory(aws.Config{Region: "eu-west-1", BaseEndpoint: aws.String(srv.URL),
		Credentials: credentials.NewStaticCredentialsProvider("AKIAOWNCREDS", "secret", "")},
		Options{MaxConcurrency: maxConcurrency, MaxAttempts: 1, Timeout: 10 * time.Second})
	return &opened, factory
}

// TestConnectionKeptWhenTheAnswerComesFirst: the SDK closes a request's
// body as soon as the answer's headers are back; when they come back before
// net/http has finished writing the request (a busy machine holding its
// writing goroutine), the connection is still kept for the next call and the
// answer is read whole. (Before bodyReadAfterClose every such call closed its
// connection, and an answer not yet read was lost.)
func TestConnectionKeptWhenTheAnswerComesFirst(t *testing.T) {
	opened, factory := countingConnections(t, &fakeAWS{}, 1)
	var dialer net.Dialer
	factory.kmsHTTP = newHTTPClient(0, func(tr *http.Transport) {
		tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := dialer.DialContext(ctx, network, addr)
			return slowAfterBody{conn}, err
		}
	})
	c := factory.KMS(Role{}, "eu-west-1")
	for i := range 3 {
		if err := listKeys(context.Background(), c); err != nil {
			t.Fatalf("call %d: %v", i+1, err)
		}
	}
	if got := opened.Load(); got != 1 {
		t.Errorf("3 calls one after the other opened %d connections, want 1", got)
	}
}

// slowAfterBody is a connection whose writer, having sent a request's body
// (any write but the headers), is held long enough for the answer to come
// back first, and not so long that net/http gives up the connection anyway.
type slowAfterBody struct{ net.Conn }

func (c slowAfterBody) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if !bytes.HasPrefix(b, []byte("POST ")) {
		time.Sleep(10 * time.Millisecond) // net/http keeps a connection only if its write ends within 50 ms of the answer
	}
	return n, err
}

// TestConnectionsKeptForEveryRequestInFlight: with more requests in flight
// than net/http's default bound on idle connections (100), a second round of
// calls reuses the first round's connections instead of opening new ones.
func TestConnectionsKeptForEveryRequestInFlight(t *testing.T) {
	const inFlight = 130
	opened, factory := countingConnections(t, &fakeAWS{delay: 100 * time.Millisecond}, inFlight)
	c := factory.KMS(Role{}, "eu-west-1")
	round := func() {
		var wg sync.WaitGroup
		for range inFlight {
			wg.Go(func() {
				if err := listKeys(context.Background(), c); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
	}
	round()
	first := opened.Load()
	round()
	if again := opened.Load() - first; again > 0 {
		t.Errorf("the second round of %d calls opened %d new connections (the first opened %d): idle ones were closed", inFlight, again, first)
	}
}
