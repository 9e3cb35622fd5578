// Package awsclient builds the AWS clients the exporter uses: one KMS client per
// (account, region), all derived from one aws.Config, each with its own
// client-side rate limit and all sharing one bound on requests in flight.
// Every attempt (retries included) is counted by operation and error code.
package awsclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/arn"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/credentials/stscreds"
	"github.com/aws/aws-sdk-go-v2/service/account"
	accounttypes "github.com/aws/aws-sdk-go-v2/service/account/types"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/organizations"
	orgtypes "github.com/aws/aws-sdk-go-v2/service/organizations/types"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/middleware"
	"golang.org/x/time/rate"

	"github.com/kms-exporter/kms_exporter/policy"
)

// Role is an account reached by assuming a role; the zero Role means the
// exporter's own credentials.
type Role struct {
	ARN        string
	ExternalID string
}

// AccountID returns the account id named in the role ARN, or "" for the own account.
func (r Role) AccountID() string {
	if r.ARN == "" {
		return ""
	}
	a, err := arn.Parse(r.ARN)
	if err != nil {
		return ""
	}
	return a.AccountID
}

// ParseRole reads a --aws.assume-role value: ROLE_ARN, optionally followed by
// ",external-id=ID".
func ParseRole(s string) (Role, error) {
	// Error messages name the ARN only: an external id stays out of logs.
	roleARN, rest, _ := strings.Cut(strings.TrimSpace(s), ",")
	a, err := arn.Parse(roleARN)
	if err != nil || a.Service != "iam" || !strings.HasPrefix(a.Resource, "role/") || len(a.AccountID) != 12 {
		return Role{}, fmt.Errorf("%q is not an IAM role ARN (arn:aws:iam::123456789012:role/NAME[,external-id=ID])", roleARN)
	}
	r := Role{ARN: roleARN}
	if rest != "" {
		id, ok := strings.CutPrefix(rest, "external-id=")
		if !ok || id == "" {
			return Role{}, fmt.Errorf("%q: after the role ARN only \",external-id=ID\" is allowed", roleARN)
		}
		r.ExternalID = id
	}
	return r, nil
}

// Options tune every client a Factory makes.
type Options struct {
	// RequestsPerSecond is the client-side rate limit per (account, region),
	// applied to every attempt; 0 means no limit.
	RequestsPerSecond float64
	// OperationRates are limits of their own (requests per second per
	// account and region; 0: none) for the operations named, whose KMS
	// quota is apart from and far below the others' (ListKeyRotations:
	// 100/s). Their attempts do not count against RequestsPerSecond.
	OperationRates map[string]float64
	// MaxConcurrency bounds the requests in flight across all clients.
	MaxConcurrency int
	// MaxAttempts per call, the first one included (throttling is retried with backoff).
	MaxAttempts int
	// Timeout for one attempt.
	Timeout time.Duration
}

// Operations the exporter calls, for counters initialised at zero.
var Operations = slices.Concat(ReadOperations, []string{"EnableKeyRotation"})

// ReadOperations are the calls of the audit, all read-only: what the
// read-only IAM policy allows.
var ReadOperations = []string{"ListKeys", "ListAliases", "DescribeKey", "GetKeyRotationStatus", "ListResourceTags", "ListKeyRotations"}

// Error codes counted from zero for every operation, so alerts and dashboards see 0.
var knownErrorCodes = []string{"ThrottlingException", "AccessDeniedException"}

// Factory makes and caches the clients.
type Factory struct {
	base aws.Config
	// kmsHTTP is the KMS clients' HTTP client: without a timeout of its own
	// (attemptTimeout bounds each attempt with its context instead).
	kmsHTTP aws.HTTPClient
	opts    Options
	sem     chan struct{}
	mu      sync.Mutex
	clients map[clientKey]*Client
	creds   map[Role]aws.CredentialsProvider
}

type clientKey struct {
	role   Role
	region string
}

// Client is the KMS client of one (account, region) with its call statistics.
type Client struct {
	*kms.Client
	Region string
	Role   Role
	stats  *callStats
	// account is the account id, known from the role ARN or learnt from the
	// first key or alias ARN the API returns (no STS call is needed).
	account atomic.Pointer[string]
}

// AccountID returns the client's account id, "" while it is not known yet.
func (c *Client) AccountID() string {
	if p := c.account.Load(); p != nil {
		return *p
	}
	return ""
}

// LearnAccountID records the account id when it was not known.
func (c *Client) LearnAccountID(id string) {
	if id != "" {
		c.account.CompareAndSwap(nil, &id)
	}
}

// NewFactory derives clients from base (as loaded by config.LoadDefaultConfig,
// so the standard credential chain and AWS_ENDPOINT_URL_KMS apply).
func NewFactory(base aws.Config, opts Options) *Factory {
	if opts.MaxConcurrency < 1 {
		opts.MaxConcurrency = 1
	}
	if opts.MaxAttempts < 1 {
		opts.MaxAttempts = 1
	}
	base = base.Copy()
	transport := func(t *http.Transport) {
		// Every request in flight may come back to an idle connection: the
		// SDK's defaults (10 per host, 100 in all) would close and reopen
		// connections all the time beyond them.
		t.MaxIdleConnsPerHost = opts.MaxConcurrency
		if t.MaxIdleConns != 0 { // 0: no bound
			t.MaxIdleConns = max(t.MaxIdleConns, opts.MaxConcurrency)
		}
	}
	// STS, Account and Organizations calls are few: net/http's own timeout
	// bounds them.
	base.HTTPClient = newHTTPClient(opts.Timeout, transport)
	base.Retryer = func() aws.Retryer {
		return retry.NewStandard(func(o *retry.StandardOptions) {
			o.MaxAttempts = opts.MaxAttempts
			// The client-side retry token bucket starves many goroutines
			// sharing one client (aws-sdk-go-v2 #1665); the rate limiter below
			// is what keeps the exporter polite.
			o.RateLimiter = ratelimit.None
		})
	}
	return &Factory{
		base:    base,
		kmsHTTP: newHTTPClient(0, transport),
		opts:    opts,
		sem:     make(chan struct{}, opts.MaxConcurrency),
		clients: map[clientKey]*Client{},
		creds:   map[Role]aws.CredentialsProvider{},
	}
}

// config returns the aws.Config for a role in a region. Callers hold f.mu.
func (f *Factory) config(role Role, region string) aws.Config {
	cfg := f.base.Copy()
	cfg.Region = region
	if role.ARN != "" {
		p, ok := f.creds[role]
		if !ok {
			p = aws.NewCredentialsCache(stscreds.NewAssumeRoleProvider(sts.NewFromConfig(f.base), role.ARN,
				func(o *stscreds.AssumeRoleOptions) {
					o.RoleSessionName = "kms_exporter"
					if role.ExternalID != "" {
						o.ExternalID = aws.String(role.ExternalID)
					}
				}))
			f.creds[role] = p
		}
		cfg.Credentials = p
	}
	return cfg
}

// KMS returns the client for a role in a region, making it on first use.
func (f *Factory) KMS(role Role, region string) *Client {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := clientKey{role, region}
	if c, ok := f.clients[k]; ok {
		return c
	}
	stats := newCallStats()
	limiters := limits{all: newLimiter(f.opts.RequestsPerSecond), ops: map[string]*rate.Limiter{}}
	for op, rps := range f.opts.OperationRates {
		limiters.ops[op] = newLimiter(rps)
	}
	c := &Client{
		Client: kms.NewFromConfig(f.config(role, region), func(o *kms.Options) {
			o.HTTPClient = f.kmsHTTP
			o.APIOptions = append(o.APIOptions, func(s *middleware.Stack) error {
				if err := s.Finalize.Insert(f.perAttempt(limiters, stats), "Retry", middleware.After); err != nil {
					return err
				}
				return s.Finalize.Add(f.attemptTimeout(), middleware.After)
			})
		}),
		Region: region,
		Role:   role,
		stats:  stats,
	}
	c.LearnAccountID(role.AccountID())
	f.clients[k] = c
	return c
}

// Role returns the role with this ARN as a client was made for it (with its
// external id), or the Role of just that ARN; "" is the own credentials.
// The inventory names a target's role by ARN alone: this finds the rest.
func (f *Factory) Role(arn string) Role {
	f.mu.Lock()
	defer f.mu.Unlock()
	for r := range f.creds {
		if r.ARN == arn {
			return r
		}
	}
	return Role{ARN: arn}
}

// EnabledRegions lists the regions enabled for the role's account (account:ListRegions).
func (f *Factory) EnabledRegions(ctx context.Context, role Role) ([]string, error) {
	f.mu.Lock()
	cfg := f.config(role, f.base.Region)
	f.mu.Unlock()
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	p := account.NewListRegionsPaginator(account.NewFromConfig(cfg), &account.ListRegionsInput{
		RegionOptStatusContains: []accounttypes.RegionOptStatus{
			accounttypes.RegionOptStatusEnabled, accounttypes.RegionOptStatusEnabledByDefault},
	})
	var regions []string
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("listing enabled regions: %w", err)
		}
		for _, r := range page.Regions {
			regions = append(regions, aws.ToString(r.RegionName))
		}
	}
	return regions, nil
}

// OrganizationRoles lists the roles to assume in the organisation's active
// member accounts: organizations:ListAccounts with the exporter's own
// credentials (the management or a delegated administrator account), the
// role roleName in each, except the caller's own account (sts:GetCallerIdentity),
// which its own credentials audit.
func (f *Factory) OrganizationRoles(ctx context.Context, roleName, externalID string) ([]Role, error) {
	f.mu.Lock()
	cfg := f.config(Role{}, f.base.Region)
	f.mu.Unlock()
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	me, err := sts.NewFromConfig(cfg).GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if err != nil {
		return nil, fmt.Errorf("sts:GetCallerIdentity: %w", err)
	}
	caller, err := arn.Parse(aws.ToString(me.Arn))
	if err != nil {
		return nil, fmt.Errorf("caller ARN: %w", err)
	}
	var roles []Role
	p := organizations.NewListAccountsPaginator(organizations.NewFromConfig(cfg), &organizations.ListAccountsInput{})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("organizations:ListAccounts: %w", err)
		}
		for _, a := range page.Accounts {
			id := aws.ToString(a.Id)
			active := a.State == orgtypes.AccountStateActive ||
				(a.State == "" && a.Status == orgtypes.AccountStatusActive) //nolint:staticcheck // Status until State is everywhere
			if !active || id == aws.ToString(me.Account) {
				continue
			}
			roles = append(roles, Role{ARN: fmt.Sprintf("arn:%s:iam::%s:role/%s", caller.Partition, id, roleName), ExternalID: externalID})
		}
	}
	return roles, nil
}

// limits are a client's rate limiters: all, unless the operation has its
// own in ops (nil: no limit).
type limits struct {
	all *rate.Limiter
	ops map[string]*rate.Limiter
}

func (l limits) of(op string) *rate.Limiter {
	if own, ok := l.ops[op]; ok {
		return own
	}
	return l.all
}

// newLimiter returns a limiter of rps requests per second (burst: one
// second's worth), or nil for rps 0: no limit.
func newLimiter(rps float64) *rate.Limiter {
	if rps <= 0 {
		return nil
	}
	return rate.NewLimiter(rate.Limit(rps), max(1, int(rps)))
}

// newHTTPClient returns an HTTP client for AWS calls with net/http's timeout
// (0: none) on a transport set by options.
func newHTTPClient(timeout time.Duration, options ...func(*http.Transport)) aws.HTTPClient {
	return bodyReadAfterClose{awshttp.NewBuildableClient().WithTimeout(timeout).WithTransportOptions(options...)}
}

// bodyReadAfterClose is an HTTP client that keeps its connection when the SDK
// closes a request's body while net/http is still writing the request.
//
// The SDK closes the body as soon as the response's headers are back
// (smithy-go's ClientHandler, transport/http/client.go), and its body then
// reads as ended; but the body's WriteTo answers io.EOF as an error
// (transport/http/internal/io/safe.go). net/http reads a body of known
// length once more after sending it, to check that nothing is left, with
// io.Copy, which calls WriteTo; when AWS answered first (a busy machine can
// hold the writing goroutine that long), net/http takes the io.EOF for a
// failed write and closes the connection: the next call opens a new one, and
// the answer still on its way is lost ("use of closed network connection",
// one more attempt). Hiding WriteTo makes that last read a plain Read, whose
// io.EOF is the end of the body.
type bodyReadAfterClose struct{ aws.HTTPClient }

func (c bodyReadAfterClose) Do(req *http.Request) (*http.Response, error) {
	if req.Body != nil && req.Body != http.NoBody {
		// The request is the SDK's own, built for this attempt; it closes
		// Body after Do, and readCloser passes that on.
		req.Body = readCloser{req.Body}
	}
	return c.HTTPClient.Do(req)
}

// readCloser is an io.ReadCloser with no other method.
type readCloser struct{ io.ReadCloser }

// perAttempt returns the middleware run for every attempt of every call: wait
// for the operation's rate limit, take a place among the requests in flight,
// count.
func (f *Factory) perAttempt(limiters limits, stats *callStats) middleware.FinalizeMiddleware {
	return middleware.FinalizeMiddlewareFunc("KMSExporterPerAttempt", func(
		ctx context.Context, in middleware.FinalizeInput, next middleware.FinalizeHandler,
	) (middleware.FinalizeOutput, middleware.Metadata, error) {
		if limiter := limiters.of(middleware.GetOperationName(ctx)); limiter != nil {
			if err := limiter.Wait(ctx); err != nil {
				return middleware.FinalizeOutput{}, middleware.Metadata{}, err
			}
		}
		select {
		case f.sem <- struct{}{}:
		case <-ctx.Done():
			return middleware.FinalizeOutput{}, middleware.Metadata{}, ctx.Err()
		}
		out, md, err := next.HandleFinalize(ctx, in)
		<-f.sem
		stats.add(middleware.GetOperationName(ctx), err)
		return out, md, err
	})
}

// attemptTimeout returns the middleware that bounds an attempt's exchange
// with AWS by Options.Timeout: the last of the finalize step, after the
// credentials and the signature (an AssumeRole has its own timeout), around
// sending the request and reading the whole answer (the SDK deserializes it
// within this step, into the operation's output).
//
// The bound is the attempt's context deadline rather than net/http's
// Client.Timeout, which starts a goroutine and a timer for every request
// (about 2% of the exporter's CPU in a refresh of 300,000 keys).
func (f *Factory) attemptTimeout() middleware.FinalizeMiddleware {
	return middleware.FinalizeMiddlewareFunc("KMSExporterAttemptTimeout", func(
		ctx context.Context, in middleware.FinalizeInput, next middleware.FinalizeHandler,
	) (middleware.FinalizeOutput, middleware.Metadata, error) {
		if f.opts.Timeout <= 0 {
			return next.HandleFinalize(ctx, in)
		}
		attemptCtx, cancel := context.WithTimeoutCause(ctx, f.opts.Timeout, errAttemptTimeout)
		defer cancel()
		out, md, err := next.HandleFinalize(attemptCtx, in)
		var apiErr smithy.APIError
		if err != nil && ctx.Err() == nil && context.Cause(attemptCtx) == errAttemptTimeout && !errors.As(err, &apiErr) {
			// The SDK reports a call whose context ended as cancelled, which
			// its retryer never retries: this deadline is the attempt's, not
			// the caller's. Only the text of the error is kept (wrapped, it
			// would be a cancellation again). An answer from AWS that came
			// just as the time ran out stays what it is.
			err = timedOut{after: f.opts.Timeout, detail: err.Error()}
		}
		return out, md, err
	})
}

var errAttemptTimeout = errors.New("attempt timed out")

// timedOut is an attempt that outlasted Options.Timeout: a timeout
// (ErrorCode: RequestTimeout; Transient) that the SDK's retryer retries.
type timedOut struct {
	after  time.Duration
	detail string // the error the SDK returned, as text
}

func (e timedOut) Error() string {
	return fmt.Sprintf("no complete answer within the attempt timeout (%s, --aws.timeout): %s", e.after, e.detail)
}
func (timedOut) Unwrap() error        { return context.DeadlineExceeded }
func (timedOut) Timeout() bool        { return true }
func (timedOut) RetryableError() bool { return true }

// ErrorCode names an error from an AWS call for labels and verdict reasons:
// the API error code where AWS sent one, otherwise the kind of failure.
func ErrorCode(err error) string {
	if err == nil {
		return ""
	}
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode() != "" {
		return apiErr.ErrorCode()
	}
	var netErr net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return "RequestTimeout"
	case errors.Is(err, context.Canceled):
		return "RequestCanceled"
	}
	var respErr *awshttp.ResponseError
	if errors.As(err, &respErr) && respErr.HTTPStatusCode() > 0 {
		return fmt.Sprintf("HTTP%d", respErr.HTTPStatusCode())
	}
	var deser *smithy.DeserializationError
	switch {
	case errors.As(err, &netErr), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		// Refused, reset or closed connections, DNS failures.
		return "ConnectionError"
	case errors.As(err, &deser):
		return "DeserializationError"
	}
	return "Error"
}

// Transient tells whether a failed call says nothing about the resource it
// named: throttling that outlasted the retries, a failure on AWS's side (5xx,
// KMSInternalException, DependencyTimeoutException), a timeout, a cancelled
// call, or a connection that broke or never opened. Such a failure must not
// change a verdict (docs/aws-semantics.md, "Errors: transient or the key's
// own condition"). Any other error is AWS's answer about the resource itself
// (AccessDeniedException, NotFoundException, UnsupportedOperationException,
// KMSInvalidStateException, ...).
func Transient(err error) bool {
	if err == nil {
		return false
	}
	var respErr *awshttp.ResponseError
	if errors.As(err, &respErr) && respErr.HTTPStatusCode() == http.StatusNotImplemented {
		// The endpoint does not offer the call at all (an emulator's 501,
		// local-kms for ListKeyRotations): an answer that will stay the
		// same, not a passing failure. AWS itself never answers 501.
		return false
	}
	var apiErr smithy.APIError
	if !errors.As(err, &apiErr) || apiErr.ErrorCode() == "" {
		// No answer from AWS at all: a timeout, a broken connection, a
		// response that could not be read.
		return true
	}
	if _, throttle := retry.DefaultThrottleErrorCodes[apiErr.ErrorCode()]; throttle {
		return true
	}
	if apiErr.ErrorFault() == smithy.FaultServer {
		return true
	}
	return errors.As(err, &respErr) && respErr.HTTPStatusCode() >= 500
}

var (
	regionPattern  = regexp.MustCompile(`^[a-z]{2}(-[a-z]+)+-[0-9]+$`)
	accountPattern = regexp.MustCompile(`^[0-9]{12}$`)
)

// ValidRegion tells whether s is shaped like an AWS region name.
func ValidRegion(s string) bool { return regionPattern.MatchString(s) }

// ValidAccountID tells whether s is an AWS account id: 12 digits.
func ValidAccountID(s string) bool { return accountPattern.MatchString(s) }

// Rotation is what GetKeyRotationStatus answered, as the policy reads it.
func Rotation(out *kms.GetKeyRotationStatusOutput) policy.Rotation {
	return policy.Rotation{
		Enabled:      out.KeyRotationEnabled,
		PeriodDays:   aws.ToInt32(out.RotationPeriodInDays),
		NextRotation: aws.ToTime(out.NextRotationDate),
	}
}

// ParseRegions reads the --aws.region values, each one region or a
// comma-separated list. It returns discover=true for the single value "all",
// and nil regions when none were given.
func ParseRegions(values []string) (regions []string, discover bool, err error) {
	seen := map[string]bool{}
	for _, v := range values {
		for _, r := range strings.Split(v, ",") {
			r = strings.TrimSpace(r)
			switch {
			case r == "all":
				discover = true
			case !ValidRegion(r):
				return nil, false, fmt.Errorf("%q is not an AWS region name (e.g. eu-west-1) nor \"all\"", r)
			case !seen[r]:
				seen[r] = true
				regions = append(regions, r)
			}
		}
	}
	if discover && len(regions) > 0 {
		return nil, false, errors.New(`"all" cannot be combined with region names`)
	}
	return regions, discover, nil
}
