// Package remediate turns automatic rotation on for noncompliant keys, the
// way the rule's own procedure does (EnableKeyRotation, then
// GetKeyRotationStatus must say true), and proves it worked.
//
// Every request is checked against the inventory first: a key that is
// unknown, out of scope, compliant, exempt, unreadable or outside the
// allow-list is refused without any AWS call.
package remediate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/arn"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/kms-exporter/kms_exporter/awsclient"
	"github.com/kms-exporter/kms_exporter/model"
	"github.com/kms-exporter/kms_exporter/policy"
)

// KMS is the part of the KMS API remediation calls.
type KMS interface {
	EnableKeyRotation(context.Context, *kms.EnableKeyRotationInput, ...func(*kms.Options)) (*kms.EnableKeyRotationOutput, error)
	GetKeyRotationStatus(context.Context, *kms.GetKeyRotationStatusInput, ...func(*kms.Options)) (*kms.GetKeyRotationStatusOutput, error)
}

// Inventory is where keys are looked up and where verified changes go.
type Inventory interface {
	Snapshot() *model.Snapshot
	ApplyRotationChanges(...model.RotationChange) *model.Snapshot
}

// Request asks to remediate one key.
type Request struct {
	AccountID          string `json:"account_id"`
	Region             string `json:"region"`
	KeyID              string `json:"key_id"`
	DryRun             bool   `json:"dry_run"`
	RotationPeriodDays *int   `json:"rotation_period_days,omitempty"`
}

// Selector asks to remediate every noncompliant key it matches.
type Selector struct {
	AccountID          string `json:"account_id"`
	Region             string `json:"region"`
	AliasPrefix        string `json:"alias_prefix"`
	Tag                string `json:"tag"` // KEY or KEY=VALUE
	DryRun             bool   `json:"dry_run"`
	RotationPeriodDays *int   `json:"rotation_period_days,omitempty"`
	// AllNoncompliant must be true for a selector without any filter: every
	// noncompliant key is then selected (the command line's --all-noncompliant).
	AllNoncompliant bool `json:"all_noncompliant"`
}

// ErrInvalidSelector is the error of a selector refused before any key is handled.
var ErrInvalidSelector = errors.New("invalid selector")

// validate refuses a selector with a malformed filter, or with none at all
// unless every noncompliant key is asked for explicitly.
func (s Selector) validate() error {
	switch {
	case s.Region != "" && !awsclient.ValidRegion(s.Region):
		return fmt.Errorf("region %q is not an AWS region name", s.Region)
	case s.AccountID != "" && !awsclient.ValidAccountID(s.AccountID):
		return fmt.Errorf("account_id %q is not a 12-digit AWS account id", s.AccountID)
	case !s.AllNoncompliant && s.AccountID == "" && s.Region == "" && s.AliasPrefix == "" && s.Tag == "":
		return errors.New(`the selector is empty: give account_id, region, alias_prefix or tag, or "all_noncompliant": true for every noncompliant key`)
	}
	return nil
}

// Outcomes of a request; they are the values of the result label of
// kms_remediations_total.
const (
	OutcomeEnabled            = "enabled"
	OutcomeDryRun             = "dry_run"
	OutcomeNotFound           = "not_found"
	OutcomeInvalid            = "invalid_request"
	OutcomeIneligible         = "ineligible"
	OutcomeNoAction           = "no_action_needed"
	OutcomeFailed             = "aws_error"
	OutcomeVerificationFailed = "verification_failed"
	OutcomeUnauthorized       = "unauthorized"
	OutcomeRateLimited        = "rate_limited"
	// OutcomeInProgress refuses a request for a key another request is acting on.
	OutcomeInProgress = "in_progress"
	// OutcomeCancelled: the request ended (timeout, client gone, shutdown)
	// before EnableKeyRotation was sent; nothing was changed.
	OutcomeCancelled = "cancelled"
)

// Outcomes lists every outcome, for counters initialised at zero.
var Outcomes = []string{OutcomeEnabled, OutcomeDryRun, OutcomeNotFound, OutcomeInvalid, OutcomeIneligible,
	OutcomeNoAction, OutcomeFailed, OutcomeVerificationFailed, OutcomeUnauthorized, OutcomeRateLimited,
	OutcomeInProgress, OutcomeCancelled}

// Result is the answer for one key.
type Result struct {
	AccountID string `json:"account_id,omitempty"`
	Region    string `json:"region,omitempty"`
	KeyID     string `json:"key_id,omitempty"`
	Aliases   string `json:"aliases,omitempty"`
	// Outcome is one of the Outcome constants; Reason says why.
	Outcome string `json:"outcome"`
	Reason  string `json:"reason,omitempty"`
	DryRun  bool   `json:"dry_run"`
	// ActedOn names the key EnableKeyRotation was (or would be) called on:
	// a multi-Region replica is remediated through its primary.
	ActedOnRegion string `json:"acted_on_region,omitempty"`
	ActedOnKeyID  string `json:"acted_on_key_id,omitempty"`
	// The rotation status re-read after the change.
	model.RotationView
	Verdict string `json:"verdict,omitempty"`
	// Interrupted: the work was cut short (shutdown, --remediation.timeout)
	// and may be retried.
	Interrupted bool `json:"interrupted,omitempty"`
	// stateConflict: an ineligible key could become eligible (its verdict
	// or state may change); otherwise a rule refuses it.
	stateConflict bool
}

// OK tells whether the key is (or, for a dry run, would be) remediated.
func (r Result) OK() bool { return r.Outcome == OutcomeEnabled || r.Outcome == OutcomeDryRun }

// Remediator decides and acts.
type Remediator struct {
	Inventory Inventory
	// Client returns the KMS client of an account (by role) in a region.
	Client func(roleARN, region string) KMS
	Policy policy.Policy
	// AllowTags (KEY or KEY=VALUE) and AllowAliasPrefixes, when any is set,
	// limit remediation to keys matching at least one of them.
	AllowTags          []string
	AllowAliasPrefixes []string
	Logger             *slog.Logger
	Now                func() time.Time
	// EnablesPerSecond bounds EnableKeyRotation calls per (account, region),
	// below its own KMS quota (15/s; 5/s in older documentation); 0 = no bound.
	EnablesPerSecond float64

	once     sync.Once
	results  *prometheus.CounterVec
	mu       sync.Mutex
	limiters map[string]*rate.Limiter
	// busy holds the keys being acted on (account/region/key id of the key
	// EnableKeyRotation goes to).
	busy map[string]bool
}

// claim marks a key as being acted on; false means another request is.
func (r *Remediator) claim(key string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.busy[key] {
		return false
	}
	if r.busy == nil {
		r.busy = map[string]bool{}
	}
	r.busy[key] = true
	return true
}

// release ends a claim.
func (r *Remediator) release(key string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.busy, key)
}

// waitForEnable waits for the mutating-call budget of an account and region;
// it fails when ctx ends first, or would before the budget allows the call.
func (r *Remediator) waitForEnable(ctx context.Context, account, region string) error {
	if r.EnablesPerSecond <= 0 {
		return ctx.Err()
	}
	r.mu.Lock()
	if r.limiters == nil {
		r.limiters = map[string]*rate.Limiter{}
	}
	l, ok := r.limiters[account+"/"+region]
	if !ok {
		l = rate.NewLimiter(rate.Limit(r.EnablesPerSecond), 1)
		r.limiters[account+"/"+region] = l
	}
	r.mu.Unlock()
	if err := l.Wait(ctx); err != nil {
		return fmt.Errorf("waiting for the EnableKeyRotation rate limit (--remediation.aws-requests-per-second): %w", err)
	}
	return nil
}

// Metrics returns the collector of kms_remediations_total, its outcomes at zero.
func (r *Remediator) Metrics() *prometheus.CounterVec {
	r.once.Do(func() {
		r.results = prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kms_remediations_total",
			Help: "Remediation decisions by result: " + strings.Join(Outcomes, ", ") + ".",
		}, []string{"result"})
		for _, o := range Outcomes {
			r.results.WithLabelValues(o)
		}
	})
	return r.results
}

var (
	keyIDPattern = regexp.MustCompile(`^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32})$`)
)

// normalise validates a request's names; a key ARN fills in account and
// region, and is returned, to be compared with the inventory's.
func normalise(req *Request) (keyARN string, err error) {
	if a, err := arn.Parse(req.KeyID); err == nil {
		id, ok := strings.CutPrefix(a.Resource, "key/")
		if a.Service != "kms" || !ok {
			return "", fmt.Errorf("key_id %q is not a KMS key ARN", req.KeyID)
		}
		if (req.AccountID != "" && req.AccountID != a.AccountID) || (req.Region != "" && req.Region != a.Region) {
			return "", fmt.Errorf("key_id ARN names account %s, region %s: it contradicts account_id or region", a.AccountID, a.Region)
		}
		keyARN = req.KeyID
		req.KeyID, req.AccountID, req.Region = id, a.AccountID, a.Region
	}
	switch {
	case !keyIDPattern.MatchString(req.KeyID):
		return "", fmt.Errorf("key_id %q is not a KMS key id (UUID or mrk-…) nor a key ARN", req.KeyID)
	case !awsclient.ValidRegion(req.Region):
		return "", fmt.Errorf("region %q is not an AWS region name", req.Region)
	case req.AccountID != "" && !awsclient.ValidAccountID(req.AccountID):
		return "", fmt.Errorf("account_id %q is not a 12-digit AWS account id", req.AccountID)
	}
	return keyARN, nil
}

// period returns the rotation period to set, or a refusal.
func (r *Remediator) period(requested *int) (int, *Result) {
	if requested == nil {
		return r.Policy.MaxRotationPeriodDays, nil
	}
	p := *requested
	if !policy.ValidRotationPeriod(p) {
		return 0, &Result{Outcome: OutcomeInvalid, Reason: fmt.Sprintf("rotation_period_days %d is outside KMS's %d..%d", p, policy.MinRotationPeriodDays, policy.MaxRotationPeriodDays)}
	}
	if p > r.Policy.MaxRotationPeriodDays {
		return 0, &Result{Outcome: OutcomeIneligible, Reason: fmt.Sprintf("rotation_period_days %d exceeds the policy's %d", p, r.Policy.MaxRotationPeriodDays)}
	}
	return p, nil
}

// Remediate handles one key; who names the requester in the log.
func (r *Remediator) Remediate(ctx context.Context, req Request, who string) Result {
	return r.remediateOne(ctx, req, who, nil)
}

// remediateOne handles one key; admit, when set, is asked just before the
// first AWS call whether the caller's budget allows it.
func (r *Remediator) remediateOne(ctx context.Context, req Request, who string, admit func() bool) Result {
	res := r.remediate(ctx, req, admit)
	r.record(res, who)
	return res
}

func (r *Remediator) remediate(ctx context.Context, req Request, admit func() bool) Result {
	keyARN, err := normalise(&req)
	if err != nil {
		return Result{KeyID: req.KeyID, Region: req.Region, AccountID: req.AccountID, Outcome: OutcomeInvalid, Reason: err.Error()}
	}
	days, refusal := r.period(req.RotationPeriodDays)
	if refusal != nil {
		refusal.KeyID, refusal.Region, refusal.AccountID = req.KeyID, req.Region, req.AccountID
		return *refusal
	}
	snap := r.Inventory.Snapshot()
	if req.AccountID == "" {
		accounts := map[string]bool{}
		for _, t := range snap.Targets {
			accounts[t.AccountID] = true
		}
		if len(accounts) > 1 {
			return Result{KeyID: req.KeyID, Region: req.Region, Outcome: OutcomeInvalid,
				Reason: "account_id is required: several accounts are audited"}
		}
	}
	target, key := snap.Locate(req.AccountID, req.Region, req.KeyID)
	if key == nil {
		return Result{KeyID: req.KeyID, Region: req.Region, AccountID: req.AccountID, Outcome: OutcomeNotFound,
			Reason: "no such key in the inventory (audited accounts and regions, as of the last refresh)"}
	}
	if keyARN != "" && keyARN != key.ARN {
		// Same id, account and region, yet another key: another partition.
		return Result{KeyID: req.KeyID, Region: req.Region, AccountID: req.AccountID, Outcome: OutcomeNotFound,
			Reason: fmt.Sprintf("no key %s in the inventory: the inventory's key with this id is %s", keyARN, key.ARN)}
	}
	res, change := r.act(ctx, target, key, days, req.DryRun, admit)
	results := []Result{res}
	r.publish(results, []*model.RotationChange{change})
	return results[0]
}

// publish makes the changes read from AWS visible at once, in one new
// snapshot, and sets each changed key's result's verdict from it; changes[i]
// (nil when nothing was read) goes with results[i].
func (r *Remediator) publish(results []Result, changes []*model.RotationChange) {
	var apply []model.RotationChange
	for _, c := range changes {
		if c != nil {
			apply = append(apply, *c)
		}
	}
	if len(apply) == 0 {
		return
	}
	snap := r.Inventory.ApplyRotationChanges(apply...)
	for i, c := range changes {
		if c == nil {
			continue
		}
		if _, k := snap.Locate(results[i].AccountID, results[i].Region, results[i].KeyID); k != nil {
			results[i].Verdict = string(k.Verdict.Get().Status)
		}
	}
}

// RemediateAll handles every noncompliant key the selector matches. An
// invalid selector is an ErrInvalidSelector, before anything is done; a
// context that ends stops it between keys, with the results so far.
func (r *Remediator) RemediateAll(ctx context.Context, sel Selector, who string) ([]Result, error) {
	if err := sel.validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidSelector, err)
	}
	days, refusal := r.period(sel.RotationPeriodDays)
	if refusal != nil {
		return nil, fmt.Errorf("%w: %s", ErrInvalidSelector, refusal.Reason)
	}
	snap := r.Inventory.Snapshot()
	var results []Result
	var changes []*model.RotationChange
	var stopped error
	// However the loop ends, what was changed is published and logged.
	defer func() {
		r.publish(results, changes)
		for _, res := range results {
			r.record(res, who)
		}
		if stopped != nil {
			r.Logger.Warn("remediation stopped before every selected key was handled", "by", who, "handled", len(results), "err", stopped)
		}
	}()
	for _, t := range snap.Targets {
		if (sel.AccountID != "" && t.AccountID != sel.AccountID) || (sel.Region != "" && t.Region != sel.Region) {
			continue
		}
		for _, k := range t.Keys {
			if k.Verdict.Get().Status != policy.Noncompliant || !matches(k, sel.AliasPrefix, sel.Tag) {
				continue
			}
			if ctx.Err() != nil {
				stopped = fmt.Errorf("stopped after %d keys, the others were not touched: %w", len(results), context.Cause(ctx))
				return results, stopped
			}
			res, change := r.act(ctx, t, k, days, sel.DryRun, nil)
			results = append(results, res)
			changes = append(changes, change)
		}
	}
	return results, nil
}

// matches tells whether a key has an alias with the prefix and the tag (each when given).
func matches(k *model.Key, aliasPrefix, tag string) bool {
	if aliasPrefix != "" && !hasAliasPrefix(k, []string{aliasPrefix}) {
		return false
	}
	return tag == "" || hasTag(k, []string{tag})
}

func hasAliasPrefix(k *model.Key, prefixes []string) bool {
	for _, a := range k.Aliases {
		for _, p := range prefixes {
			if strings.HasPrefix(a, p) {
				return true
			}
		}
	}
	return false
}

func hasTag(k *model.Key, tags []string) bool {
	for _, t := range tags {
		key, value, withValue := strings.Cut(t, "=")
		if v, ok := k.Tags[key]; ok && (!withValue || v == value) {
			return true
		}
	}
	return false
}

// eligibility refuses a key that must not be remediated; nil means go ahead.
func (r *Remediator) eligibility(k *model.Key) *Result {
	refuse := func(outcome, reason string, stateConflict bool) *Result {
		return &Result{Outcome: outcome, Reason: reason, stateConflict: stateConflict}
	}
	if reason := policy.Scope(k.Meta.Get()); reason != "" && k.Verdict.Get().Status != policy.Unknown {
		return refuse(OutcomeIneligible, "not applicable: "+reason, false)
	}
	switch k.Verdict.Get().Status {
	case policy.Compliant:
		return refuse(OutcomeNoAction, "already compliant", true)
	case policy.Exempt:
		return refuse(OutcomeIneligible, "exempt: "+k.Verdict.Get().ExemptionReason, true)
	case policy.Unknown:
		return refuse(OutcomeIneligible, "verdict unknown ("+k.Verdict.Get().Reason+"): refresh first", true)
	case policy.Noncompliant:
		if rot := k.Rotation; rot != nil && rot.Enabled && !policy.PeriodExceeds(rot, r.Policy) {
			// Noncompliant for its key material's age (or an ended exemption of it):
			// EnableKeyRotation would change nothing.
			return refuse(OutcomeIneligible, "rotation is already enabled within the policy's period; the key material is older than --compliance.max-key-material-age-days: rotate it on demand (aws kms rotate-key-on-demand)", true)
		}
	default:
		return refuse(OutcomeIneligible, "verdict "+string(k.Verdict.Get().Status), true)
	}
	if len(r.AllowTags)+len(r.AllowAliasPrefixes) > 0 && !hasTag(k, r.AllowTags) && !hasAliasPrefix(k, r.AllowAliasPrefixes) {
		return refuse(OutcomeIneligible, "not in the remediation allow-list (--remediation.allow-tag, --remediation.allow-alias-prefix)", false)
	}
	if k.MultiRegionType() == policy.MultiRegionReplica && k.PrimaryRegion() == "" {
		return refuse(OutcomeIneligible, "multi-Region replica whose primary is unknown", true)
	}
	return nil
}

// act checks a located key and, unless refused or a dry run, re-reads its
// rotation status, enables rotation unless it became compliant meanwhile,
// and re-reads the status; it returns what AWS said, to publish.
func (r *Remediator) act(ctx context.Context, t *model.TargetState, k *model.Key, days int, dryRun bool, admit func() bool) (Result, *model.RotationChange) {
	res := Result{AccountID: k.AccountID, Region: k.Region, KeyID: k.ID, Aliases: strings.Join(k.Aliases, ","), DryRun: dryRun,
		ActedOnRegion: k.Region, ActedOnKeyID: k.ID, Verdict: string(k.Verdict.Get().Status)}
	if refusal := r.eligibility(k); refusal != nil {
		refusal.AccountID, refusal.Region, refusal.KeyID, refusal.Aliases, refusal.DryRun, refusal.Verdict =
			res.AccountID, res.Region, res.KeyID, res.Aliases, dryRun, res.Verdict
		return *refusal, nil
	}
	if k.MultiRegionType() == policy.MultiRegionReplica {
		// Rotation of a multi-Region key is set on its primary, in the primary's region.
		res.ActedOnRegion = k.PrimaryRegion()
	}
	if dryRun {
		res.Outcome, res.Reason = OutcomeDryRun, fmt.Sprintf("would enable rotation every %d days", days)
		return res, nil
	}
	if admit != nil && !admit() {
		res.Outcome, res.Reason = OutcomeRateLimited, "over the remediation rate limit (--remediation.requests-per-second): retry later"
		return res, nil
	}
	// One action per key at a time: a replica and its primary are one key.
	lock := k.AccountID + "/" + res.ActedOnRegion + "/" + res.ActedOnKeyID
	if !r.claim(lock) {
		res.Outcome = OutcomeInProgress
		res.Reason = fmt.Sprintf("another request is remediating this key (%s in %s) right now; nothing was done", res.ActedOnKeyID, res.ActedOnRegion)
		return res, nil
	}
	defer r.release(lock)
	api := r.Client(t.RoleARN, res.ActedOnRegion)
	id := aws.String(res.ActedOnKeyID)
	cancelled := func(when string, err error) (Result, *model.RotationChange) {
		if ctx.Err() != nil {
			err = context.Cause(ctx)
		}
		res.Outcome, res.Interrupted = OutcomeCancelled, true
		res.Reason = fmt.Sprintf("stopped %s (%v): nothing was changed", when, err)
		return res, nil
	}
	// The owner may have enabled rotation since the last refresh: enabling it
	// again with this period could lengthen theirs.
	before, err := api.GetKeyRotationStatus(ctx, &kms.GetKeyRotationStatusInput{KeyId: id})
	if err != nil {
		if ctx.Err() != nil {
			return cancelled("while reading the rotation status, before EnableKeyRotation", err)
		}
		res.Outcome = OutcomeFailed
		res.Reason = "GetKeyRotationStatus before enabling: " + awsclient.ErrorCode(err) + ": nothing was changed"
		return res, nil
	}
	rot := res.setRotation(before)
	in := k.Input()
	in.Rotation = &rot
	if policy.Decide(in, r.Policy, r.Now()).Status == policy.Compliant {
		res.Outcome = OutcomeNoAction
		res.Reason = fmt.Sprintf("already compliant: rotation was enabled (period %d days) since the last refresh; EnableKeyRotation was not called", rot.PeriodDays)
		return res, r.change(k, rot)
	}
	if err := r.waitForEnable(ctx, k.AccountID, res.ActedOnRegion); err != nil {
		return cancelled("before EnableKeyRotation", err)
	}
	if _, err := api.EnableKeyRotation(ctx, &kms.EnableKeyRotationInput{KeyId: id, RotationPeriodInDays: aws.Int32(int32(days))}); err != nil {
		if ctx.Err() != nil {
			res.Outcome, res.Interrupted = OutcomeVerificationFailed, true
			res.Reason = fmt.Sprintf("EnableKeyRotation was sent but its answer was cut short (%v): rotation may be enabled; not verified", context.Cause(ctx))
			return res, nil
		}
		res.Outcome, res.Reason = OutcomeFailed, "EnableKeyRotation: "+awsclient.ErrorCode(err)
		return res, nil
	}
	st, err := api.GetKeyRotationStatus(ctx, &kms.GetKeyRotationStatusInput{KeyId: id})
	if err != nil {
		res.Outcome = OutcomeVerificationFailed
		res.Reason = "EnableKeyRotation succeeded; GetKeyRotationStatus: " + awsclient.ErrorCode(err)
		if ctx.Err() != nil {
			res.Interrupted = true
			res.Reason = fmt.Sprintf("EnableKeyRotation succeeded; re-reading the status was cut short (%v): rotation is probably enabled; not verified", context.Cause(ctx))
		}
		return res, nil
	}
	rot = res.setRotation(st)
	switch {
	case !rot.Enabled:
		res.Outcome, res.Reason = OutcomeVerificationFailed, "rotation still disabled after EnableKeyRotation"
	case rot.PeriodDays != 0 && int(rot.PeriodDays) != days:
		res.Outcome, res.Reason = OutcomeVerificationFailed, fmt.Sprintf("rotation period is %d days, %d was set", rot.PeriodDays, days)
	default:
		res.Outcome = OutcomeEnabled
	}
	// Whatever AWS now says is the truth the inventory shows, success or not.
	return res, r.change(k, rot)
}

// setRotation shows a status read from AWS in the result and returns it.
func (res *Result) setRotation(st *kms.GetKeyRotationStatusOutput) policy.Rotation {
	rot := awsclient.Rotation(st)
	res.RotationView = model.ViewRotation(&rot)
	return rot
}

// change is the inventory change for a rotation status read from AWS.
func (r *Remediator) change(k *model.Key, rot policy.Rotation) *model.RotationChange {
	return &model.RotationChange{AccountID: k.AccountID, KeyID: k.ID, Rotation: rot, At: r.Now()}
}

// Count counts one decision in kms_remediations_total: a request refused
// before it named a key (HTTP-level checks: authentication, rate limit,
// an unreadable body) is counted by its outcome here.
func (r *Remediator) Count(outcome string) {
	r.Metrics()
	r.results.WithLabelValues(outcome).Inc()
}

// record logs one decision as one line and counts it.
func (r *Remediator) record(res Result, who string) {
	r.Count(res.Outcome)
	level := slog.LevelInfo
	switch {
	case res.Outcome == OutcomeRateLimited:
		// Counted one by one; whoever refuses a batch logs one line for it.
		level = slog.LevelDebug
	case !res.OK() && res.Outcome != OutcomeNoAction:
		level = slog.LevelWarn
	}
	r.Logger.Log(context.Background(), level, "remediation", "by", who, "account_id", res.AccountID, "region", res.Region,
		"key_id", res.KeyID, "acted_on_region", res.ActedOnRegion, "dry_run", res.DryRun, "result", res.Outcome,
		"reason", res.Reason, "verdict", res.Verdict)
}
