// Package inventory lists every KMS key of each (account, region), reads what
// the verdict needs, decides the verdict, and keeps the result as an
// immutable snapshot (model.Snapshot) refreshed in the background.
package inventory

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"math"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/arn"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/kms-exporter/kms_exporter/awsclient"
	"github.com/kms-exporter/kms_exporter/model"
	"github.com/kms-exporter/kms_exporter/policy"
)

// KMS is the part of the KMS API the inventory calls; *kms.Client implements it.
type KMS interface {
	ListKeys(context.Context, *kms.ListKeysInput, ...func(*kms.Options)) (*kms.ListKeysOutput, error)
	ListAliases(context.Context, *kms.ListAliasesInput, ...func(*kms.Options)) (*kms.ListAliasesOutput, error)
	DescribeKey(context.Context, *kms.DescribeKeyInput, ...func(*kms.Options)) (*kms.DescribeKeyOutput, error)
	GetKeyRotationStatus(context.Context, *kms.GetKeyRotationStatusInput, ...func(*kms.Options)) (*kms.GetKeyRotationStatusOutput, error)
	ListResourceTags(context.Context, *kms.ListResourceTagsInput, ...func(*kms.Options)) (*kms.ListResourceTagsOutput, error)
	ListKeyRotations(context.Context, *kms.ListKeyRotationsInput, ...func(*kms.Options)) (*kms.ListKeyRotationsOutput, error)
}

// accountLearner is implemented by clients that label their metrics with the
// account id once the inventory has read it from an ARN.
type accountLearner interface {
	LearnAccountID(string)
}

// Target is one (account, region) to audit.
type Target struct {
	Role   awsclient.Role
	Region string
	API    KMS
}

// Auditor reads the keys of one target and decides their verdicts.
type Auditor struct {
	Policy policy.Policy
	// TagLabels are tag keys whose values are exposed as labels; keys are
	// then read for every customer-managed key.
	TagLabels []string
	// Workers is the number of keys audited at once per target (the requests
	// in flight are bounded again by the client factory).
	Workers int
	// MaxStale is how long a key whose reads fail for a transient reason
	// (awsclient.Transient) keeps the verdict of its last successful read;
	// after that it is unknown. 0: it is unknown at once.
	MaxStale time.Duration
	// Now returns the time verdicts are decided at.
	Now func() time.Time
	// Resync is how often a refresh re-reads a key it already knows (see
	// always and byTurn); 0: at every refresh.
	Resync time.Duration
	// NoHistory: the rotation history (ListKeyRotations) is not read, for
	// a run that shows none of it and whose verdicts do not need it (the
	// audit command's table, the remediate command, without
	// Policy.MaxKeyMaterialAgeDays).
	NoHistory bool
}

// verdict decides a key's verdict from what was read: the one place a
// verdict is decided, for a refresh and for a change read back after
// remediation alike.
func (a *Auditor) verdict(in policy.Input) policy.Verdict {
	return policy.Decide(in, a.Policy, a.Now())
}

// listError marks a failure of a listing call: the target as a whole failed.
type listError struct {
	op  string
	err error
}

func (e *listError) Error() string { return e.op + ": " + e.err.Error() }
func (e *listError) Unwrap() error { return e.err }

// ReadErrors counts the keys of a target whose reads failed for a transient
// reason, by operation and error code. The keys are still in the result:
// stale, or unknown when they were never read or are too old to keep.
type ReadErrors map[ReadError]int

// ReadError is an operation and the error code it failed with.
type ReadError struct{ Op, Code string }

func (e ReadErrors) Error() string {
	parts := make([]string, 0, len(e))
	for k, n := range e {
		parts = append(parts, fmt.Sprintf("%s: %s (%d keys)", k.Op, k.Code, n))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// listing is what ListKeys and ListAliases returned for a target.
type listing struct {
	accountID string
	keys      *keyList
	aliases   map[string][]string
}

// Audit lists and audits every key of the target, with no earlier state.
// See auditListed for what the error means.
func (a *Auditor) Audit(ctx context.Context, t Target) (accountID string, keys []*model.Key, err error) {
	l, err := a.list(ctx, t)
	if err != nil {
		return "", nil, err
	}
	keys, _, _, err = a.auditListed(ctx, t, l, nil, a.Now())
	return l.accountID, keys, err
}

// list calls ListKeys and ListAliases and learns the target's account id.
func (a *Auditor) list(ctx context.Context, t Target) (*listing, error) {
	listed, accountID, err := listKeys(ctx, t.API)
	if err != nil {
		return nil, &listError{"ListKeys", err}
	}
	aliases, aliasAccount, err := listAliases(ctx, t.API, nil)
	if err != nil {
		return nil, &listError{"ListAliases", err}
	}
	if accountID == "" {
		accountID = aliasAccount
	}
	if accountID == "" {
		accountID = t.Role.AccountID()
	}
	if l, ok := t.API.(accountLearner); ok {
		l.LearnAccountID(accountID)
	}
	return &listing{accountID: accountID, keys: listed, aliases: aliases}, nil
}

// auditListed decides every listed key's state: it reads the keys that are
// due (see always and byTurn) and keeps the others as last published (last: the target's
// last state, nil for none), aliases taken from the listing. A key read the
// same as then is kept as the same *model.Key, and a key whose reads fail for
// a transient reason keeps its last good verdict, marked stale, for up to
// MaxStale after its last successful read. The keys returned are sorted by
// id, with when each was last read successfully (model.TargetState.ReadAt);
// a key deleted since it was listed is left out. attempt is when this
// refresh started, by the auditor's clock. changed counts the keys a resync
// found changed (with events on, each is a change whose event did not come).
// The error is ReadErrors when reads failed for transient reasons (the
// refresh of the target then did not succeed), or the context's error.
func (a *Auditor) auditListed(ctx context.Context, t Target, l *listing, last *model.TargetState, attempt time.Time) (keys []*model.Key, readAt []int64, changed int, err error) {
	var prev []*model.Key
	var prevAt []int64
	var prevTick time.Time
	if last != nil {
		prev, prevAt, prevTick = last.Keys, last.ReadAt, last.LastAttempt
	}
	type result struct {
		k  *model.Key
		at int64
	}
	n := l.keys.len()
	results := make([]result, n)
	var toRead []int
	resync := make([]bool, n) // read by its turn in the resync only: a change found is news
	// prevIdx[i] is the index in prev of the i-th listed key; -1: new.
	prevIdx := make([]int, n)
	var changes atomic.Int64
	for i := range n {
		j := findKey(prev, l.keys.id(i))
		prevIdx[i] = j
		if j < 0 {
			toRead = append(toRead, i)
			continue
		}
		p := prev[j]
		if always := a.always(p, prevTick, attempt); always || a.byTurn(p, prevTick, attempt) {
			toRead = append(toRead, i)
			resync[i] = !always
			continue
		}
		if aliases := l.aliases[p.ID]; !slices.Equal(aliases, p.Aliases) {
			k := *p
			k.Aliases = detached(aliases)
			p = k.Kept()
		}
		results[i] = result{p, readAtOf(prevAt, j)}
	}

	errs := ReadErrors{}
	var errsMu sync.Mutex
	work := make(chan int)
	var wg sync.WaitGroup
	for range max(1, min(a.Workers, len(toRead))) {
		wg.Go(func() {
			for i := range work {
				id := l.keys.id(i)
				k := model.Key{AccountID: l.accountID, Region: t.Region, ID: id, ARN: l.keys.arn(i), Aliases: l.aliases[id]}
				j := prevIdx[i]
				var p *model.Key
				var pAt int64
				if j >= 0 {
					p, pAt = prev[j], readAtOf(prevAt, j)
				}
				found, failed := a.auditKey(ctx, t.API, &k, p, false)
				switch {
				case !found:
				case failed.Code != "":
					results[i] = result{a.carry(k, p, pAt, failed.Code), pAt}
					errsMu.Lock()
					errs[failed]++
					errsMu.Unlock()
				case p != nil && k.Same(p):
					results[i] = result{p, attempt.UnixNano()}
				default:
					results[i] = result{compact(&k, p), attempt.UnixNano()}
					if resync[i] {
						changes.Add(1)
					}
				}
			}
		})
	}
	for _, i := range toRead {
		work <- i
	}
	close(work)
	wg.Wait()

	kept := results[:0]
	for _, r := range results {
		if r.k != nil {
			kept = append(kept, r)
		}
	}
	slices.SortFunc(kept, func(a, b result) int { return strings.Compare(a.k.ID, b.k.ID) })
	// A key listed twice (pages shifting while keys are created) is kept once.
	kept = slices.CompactFunc(kept, func(a, b result) bool { return a.k.ID == b.k.ID })
	keys, readAt = make([]*model.Key, len(kept)), make([]int64, len(kept))
	for i, r := range kept {
		keys[i], readAt[i] = r.k, r.at
	}
	changed = int(changes.Load())
	if err := ctx.Err(); err != nil {
		return keys, readAt, changed, err
	}
	if len(errs) > 0 {
		return keys, readAt, changed, errs
	}
	return keys, readAt, changed, nil
}

// A refresh starting at now re-reads a key known from the refresh that
// started at prevTick when it always does (see always) or its turn in the
// resync came (see byTurn).

// always tells whether a key is re-read whatever its turn: while its last
// read failed or its verdict is unknown (an access denied fixed in IAM makes
// no KMS event), once its exemption has ended or its compliant material has
// grown too old (a date passing makes no event either), once its next
// rotation date has passed (its rotation is due to show), and every key with
// Resync 0 or a refresh Resync or more after the last.
func (a *Auditor) always(k *model.Key, prevTick, now time.Time) bool {
	return k.ReadError != "" || k.Verdict.Get().Status == policy.Unknown || a.Resync <= 0 || prevTick.IsZero() ||
		now.Sub(prevTick) >= a.Resync || exemptionEnded(k, now) || a.materialAged(k, now) || rotationPassed(k, now)
}

// materialAged tells whether k shows a verdict that rests on its key
// material being young enough, and the material has grown too old by now.
func (a *Auditor) materialAged(k *model.Key, now time.Time) bool {
	if k.Verdict.Get().Status != policy.Compliant || k.History == nil {
		return false
	}
	deadline := policy.MaterialDeadline(k.History, k.CreationDate, a.Policy)
	return !deadline.IsZero() && !now.Before(deadline)
}

// rotationPassed tells whether k's next rotation date, as last read, has
// passed since its rotation history was read: AWS should have rotated it.
func rotationPassed(k *model.Key, now time.Time) bool {
	r, h := k.Rotation, k.History
	if r == nil || h == nil || !r.Enabled || r.NextRotation.IsZero() {
		return false
	}
	return !now.Before(r.NextRotation) && h.ReadAt < r.NextRotation.UnixNano()
}

// historyDue tells whether a key read now (material: a hash of its
// CurrentKeyMaterialId as DescribeKey just said, 0 where not reported)
// needs its rotation history read, rather than the one of prev (the key as
// last published, nil: first sight): where it can have changed. On first
// sight, when an event said the key rotated, when its current key material
// is another than when the history was read, when its next rotation date
// passed since, and after a failed read while the verdict needs it.
func (a *Auditor) historyDue(prev *model.Key, material uint64, rotated bool, now time.Time) bool {
	if prev == nil || prev.History == nil || rotated {
		return true
	}
	h := prev.History
	return (h.Error != "" && a.Policy.MaxKeyMaterialAgeDays > 0) ||
		(material != 0 && material != h.Material) || rotationPassed(prev, now)
}

// byTurn tells whether a key's turn in the resync came between the
// refreshes: every key is re-read at least every Resync, at an instant of
// its own (a hash of its id places it in the interval), so that the reads of
// a large inventory are spread evenly over the interval rather than made all
// at once.
func (a *Auditor) byTurn(k *model.Key, prevTick, now time.Time) bool {
	r := a.Resync.Nanoseconds()
	if r <= 0 {
		return false
	}
	h := fnv.New64a()
	_, _ = h.Write([]byte(k.ID))
	phase := int64(h.Sum64() % uint64(r))
	// Due when an instant phase + n*Resync lies in (prevTick, now].
	return floorDiv(now.UnixNano()-phase, r) > floorDiv(prevTick.UnixNano()-phase, r)
}

// exemptionEnded tells whether k shows an exemption that has ended by now:
// its verdict is due again.
func exemptionEnded(k *model.Key, now time.Time) bool {
	v := k.Verdict.Get()
	return v.Status == policy.Exempt && !v.ExemptionExpiry.IsZero() && !now.Before(v.ExemptionExpiry)
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

// readAtOf returns at[i], or 0 where a snapshot has no read times.
func readAtOf(at []int64, i int) int64 {
	if i < len(at) {
		return at[i]
	}
	return 0
}

// findKey returns the index of the key with this id in keys sorted by id, or -1.
func findKey(keys []*model.Key, id string) int {
	i, ok := slices.BinarySearchFunc(keys, id, func(k *model.Key, id string) int { return strings.Compare(k.ID, id) })
	if !ok {
		return -1
	}
	return i
}

// carry decides what to publish for a key whose read failed with a transient
// error code: its last good state (prev, last read successfully at readAt,
// Unix nanoseconds, 0: never), marked stale, while that is younger than
// MaxStale; otherwise the key as now read, unknown with the code. Listing is
// fresh evidence, so the aliases are today's.
func (a *Auditor) carry(now model.Key, prev *model.Key, readAt int64, code string) *model.Key {
	code = intern(code) // error codes take few values; the response's text is not kept
	if prev == nil || readAt == 0 || a.Now().Sub(time.Unix(0, readAt)) > a.MaxStale {
		now.Rotation, now.Tags, now.TagValues = nil, nil, nil
		now.Verdict = model.VerdictOf(policy.Verdict{Status: policy.Unknown, Reason: code})
		now.ReadError, now.Stale = code, false
		return compact(&now, prev)
	}
	k := *prev
	if !slices.Equal(k.Aliases, now.Aliases) {
		k.Aliases = detached(now.Aliases)
	}
	k.ReadError, k.Stale = code, true
	if k.Same(prev) {
		return prev
	}
	return k.Kept()
}

// Age marks the keys of a target that could not be listed (last, as last
// published): each keeps its last good state, stale with the listing's error
// code, while that is younger than MaxStale; then it is unknown with that code.
func (a *Auditor) Age(last *model.TargetState, code string) ([]*model.Key, []int64) {
	if last == nil {
		return nil, nil
	}
	out := make([]*model.Key, len(last.Keys))
	at := make([]int64, len(last.Keys))
	for i, p := range last.Keys {
		at[i] = readAtOf(last.ReadAt, i)
		out[i] = a.carry(*p, p, at[i], code)
	}
	return out, at
}

// compact returns a copy of k ready to be kept for long (model.Key.Kept):
// its strings share the memory of prev's (the same key as last published,
// or nil) where equal, its ARN is detached from the response or listing it
// was read from and its id is part of the ARN (a copy of its own where the
// ARN does not end in it), its other strings are copies, and the strings
// of its multi-Region fields are interned (its metadata is, as read:
// model.Meta).
func compact(k *model.Key, prev *model.Key) *model.Key {
	if prev == nil {
		prev = &model.Key{} // nothing to share
	}
	// Each string is prev's where equal, else a copy: the response's are
	// substrings of the SDK's string arenas (up to 4 KB each, of a whole
	// page), which a kept substring would keep whole.
	switch {
	case k.ARN != "" && k.ARN == prev.ARN:
		k.ARN, k.ID = prev.ARN, prev.ID
	case k.ARN != "" && strings.HasSuffix(k.ARN, "/"+k.ID):
		k.ARN = strings.Clone(k.ARN)
		k.ID = k.ARN[len(k.ARN)-len(k.ID):]
	default:
		k.ARN, k.ID = sharedOrCopy(k.ARN, prev.ARN), sharedOrCopy(k.ID, prev.ID)
	}
	k.Aliases = sharedOrDetached(k.Aliases, prev.Aliases)
	k.TagValues = sharedOrDetached(k.TagValues, prev.TagValues)
	switch {
	case k.Tags != nil && prev.Tags != nil && maps.Equal(k.Tags, prev.Tags):
		k.Tags = prev.Tags
	case k.Tags != nil:
		tags := make(map[string]string, len(k.Tags))
		for name, v := range k.Tags {
			if i := slices.Index(k.TagValues, v); i >= 0 {
				tags[intern(name)] = k.TagValues[i] // one copy for the label and the tag
			} else {
				tags[intern(name)] = strings.Clone(v)
			}
		}
		k.Tags = tags
	}
	if mr := k.MultiRegion; mr != nil {
		if prev.MultiRegion != nil && *prev.MultiRegion == *mr {
			k.MultiRegion = prev.MultiRegion
		} else {
			mr.Type, mr.PrimaryRegion, mr.PrimaryARN = intern(mr.Type), intern(mr.PrimaryRegion), strings.Clone(mr.PrimaryARN)
		}
	}
	return k.Kept()
}

// sharedOrCopy returns prev where s equals it, else a copy of s.
func sharedOrCopy(s, prev string) string {
	if s == prev {
		return prev
	}
	return strings.Clone(s)
}

// sharedOrDetached returns prev where s equals it, else a copy of s whose
// strings are copies too (nil or empty as s is).
func sharedOrDetached(s, prev []string) []string {
	if slices.Equal(s, prev) && prev != nil {
		return prev
	}
	return detached(s)
}

// detached returns a copy of s whose strings are copies too; nil for none.
func detached(s []string) []string {
	if len(s) == 0 {
		return s
	}
	out := make([]string, len(s))
	for i, v := range s {
		out[i] = strings.Clone(v)
	}
	return out
}

// interned holds the strings of keys that take few values (multi-Region
// types and regions, rotation types, error codes, tag names): each is kept
// once, however many keys carry it. Bounded, so that unexpected values
// cannot grow it without end.
var interned = struct {
	sync.RWMutex
	m map[string]string
}{m: map[string]string{}}

const maxInterned = 1024

func intern(s string) string {
	if s == "" {
		return ""
	}
	interned.RLock()
	v, ok := interned.m[s]
	interned.RUnlock()
	if ok {
		return v
	}
	interned.Lock()
	defer interned.Unlock()
	if v, ok := interned.m[s]; ok {
		return v
	}
	s = strings.Clone(s)
	if len(interned.m) < maxInterned {
		interned.m[s] = s
	}
	return s
}

// keyList is a ListKeys listing, held through a whole refresh: the key ids
// back to back in one string, and each key's ARN as a prefix common to the
// listing's ("arn:aws:kms:REGION:ACCOUNT:key/") and its id. Without a
// pointer per key, a listing of a million keys costs the garbage collector
// nothing to mark while the keys are read, and it holds none of the SDK's
// response memory (as strings, the ids and ARNs were two pointers and, on
// first sight, about 120 bytes a key with the SDK's string arenas).
type keyList struct {
	ids  string
	ends []uint32 // the i-th id is ids[ends[i-1]:ends[i]]
	// arnPrefix+id is a key's ARN, but for the keys in odd, whose ARN was
	// listed otherwise (or not at all): odd holds it as listed.
	arnPrefix string
	odd       map[int]string
}

func (l *keyList) len() int { return len(l.ends) }

// id is the i-th listed key id, a substring of the listing: not to be kept
// beyond the refresh (compact copies what a key keeps).
func (l *keyList) id(i int) string {
	start := uint32(0)
	if i > 0 {
		start = l.ends[i-1]
	}
	return l.ids[start:l.ends[i]]
}

// arn is the i-th listed key's ARN: a new string, or the listing's copy
// of an odd one.
func (l *keyList) arn(i int) string {
	if a, ok := l.odd[i]; ok {
		return a
	}
	return l.arnPrefix + l.id(i)
}

func listKeys(ctx context.Context, api KMS) (*keyList, string, error) {
	var ids strings.Builder
	l := &keyList{}
	account := ""
	p := kms.NewListKeysPaginator(api, &kms.ListKeysInput{Limit: aws.Int32(1000)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, "", err
		}
		for _, k := range page.Keys {
			id, keyARN := aws.ToString(k.KeyId), aws.ToString(k.KeyArn)
			if l.arnPrefix == "" && len(keyARN) > len(id) && strings.HasSuffix(keyARN, "/"+id) {
				l.arnPrefix = strings.Clone(keyARN[:len(keyARN)-len(id)])
			}
			if len(keyARN) != len(l.arnPrefix)+len(id) || !strings.HasPrefix(keyARN, l.arnPrefix) || !strings.HasSuffix(keyARN, id) {
				if l.odd == nil {
					l.odd = map[int]string{}
				}
				l.odd[len(l.ends)] = strings.Clone(keyARN)
			}
			ids.WriteString(id)
			if ids.Len() > math.MaxUint32 {
				return nil, "", fmt.Errorf("ListKeys listed more than %d bytes of key ids", uint64(math.MaxUint32))
			}
			l.ends = append(l.ends, uint32(ids.Len()))
			if account == "" {
				account = accountOf(keyARN)
			}
		}
	}
	// Copies of their exact size: the builder and the appends leave up to
	// as much room again, which the refresh would hold.
	l.ids, l.ends = strings.Clone(ids.String()), slices.Clone(l.ends)
	return l, account, nil
}

// listAliases returns the sorted alias names per target key id: of every
// key, or of the key keyID names.
func listAliases(ctx context.Context, api KMS, keyID *string) (map[string][]string, string, error) {
	out := map[string][]string{}
	account := ""
	p := kms.NewListAliasesPaginator(api, &kms.ListAliasesInput{KeyId: keyID, Limit: aws.Int32(100)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, "", err
		}
		for _, al := range page.Aliases {
			if account == "" {
				account = accountOf(aws.ToString(al.AliasArn))
			}
			// Copies, held through the refresh instead of the pages' string
			// arenas (about 200 bytes an alias).
			// (A map assignment stores the key it is given, so the id is
			// copied at every one, not only the first.)
			if id := aws.ToString(al.TargetKeyId); id != "" {
				out[strings.Clone(id)] = append(out[id], strings.Clone(aws.ToString(al.AliasName)))
			}
		}
	}
	for _, names := range out {
		sort.Strings(names)
	}
	return out, account, nil
}

func accountOf(s string) string {
	a, err := arn.Parse(s)
	if err != nil {
		return ""
	}
	return a.AccountID
}

// auditKey fills in one key; prev is the key as last published (nil: not
// known), whose rotation history it keeps unless a new one is due (see
// historyDue; rotated: an event said the key rotated). It returns
// found=false when the key no longer exists (deleted between ListKeys and a
// later call), and the operation and code of a transient failure, which
// leaves the verdict undecided (the caller decides what to publish, see
// carry). Any other error is AWS's answer about the key: the verdict is
// unknown with that code where the verdict needs what failed.
func (a *Auditor) auditKey(ctx context.Context, api KMS, k *model.Key, prev *model.Key, rotated bool) (found bool, failed ReadError) {
	in := policy.Input{}
	// check reports whether a call succeeded; on failure it records why.
	// stop records why a call failed and tells whether reading the key ends
	// here: it is gone, or the failure says nothing about it. AWS's other
	// answers (AccessDenied, ...) go into the verdict's input as code.
	stop := func(op string, err error, code *string) bool {
		switch {
		case isNotFound(err):
			found = false
		case awsclient.Transient(err):
			failed = ReadError{op, awsclient.ErrorCode(err)}
		default:
			*code = awsclient.ErrorCode(err)
			return false
		}
		return true
	}
	found = true
	defer func() {
		if found && failed.Code == "" {
			k.Verdict = model.VerdictOf(a.verdict(in))
		}
	}()

	d, err := api.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(k.ID)})
	if err != nil {
		stop("DescribeKey", err, &in.DescribeError)
		return found, failed
	}
	setMetadata(k, d.KeyMetadata)
	in.Meta = k.Meta.Get()

	if policy.NeedsRotationStatus(in.Meta) {
		r, err := api.GetKeyRotationStatus(ctx, &kms.GetKeyRotationStatusInput{KeyId: aws.String(k.ID)})
		switch {
		case err == nil:
			rot := awsclient.Rotation(r)
			k.Rotation, in.Rotation = &rot, &rot
		case stop("GetKeyRotationStatus", err, &in.RotationError):
			return found, failed
		}
	}

	if policy.NeedsHistory(in.Meta) && !a.NoHistory {
		now := a.Now()
		materialID := aws.ToString(d.KeyMetadata.CurrentKeyMaterialId)
		if prev != nil {
			k.History = prev.History
		}
		if a.historyDue(prev, materialHash(materialID), rotated, now) {
			h, err := readHistory(ctx, api, k.ID, materialID)
			switch {
			case err == nil:
			case isNotFound(err):
				found = false
				return found, failed
			case awsclient.Transient(err) && a.Policy.MaxKeyMaterialAgeDays > 0:
				// The verdict needs the history: the key's last good state
				// stands, stale, as for its other reads.
				stop("ListKeyRotations", err, nil)
				return found, failed
			case awsclient.Transient(err):
				// Evidence only: the key keeps the history it had (none on
				// first sight), due again at its next read.
				h = nil
			default:
				// Kept, so that an IAM policy without kms:ListKeyRotations
				// costs one failed call per key, not one per read.
				h = &policy.History{Error: awsclient.ErrorCode(err), Material: materialHash(materialID)}
			}
			if h != nil {
				h.ReadAt = now.UnixNano()
				k.History = h
			}
		}
	}
	kin := k.Input()
	in.Created, in.History, in.HistoryError = kin.Created, kin.History, kin.HistoryError

	needTags := policy.NeedsExemptionTags(in, a.Policy, a.Now())
	if needTags || (len(a.TagLabels) > 0 && in.Meta.KeyManager == policy.ManagerCustomer) {
		tags, err := listTags(ctx, api, k.ID)
		switch {
		case err == nil:
			in.Tags = tags
			k.Tags = tags
			k.TagValues = make([]string, len(a.TagLabels))
			for i, l := range a.TagLabels {
				k.TagValues[i] = tags[l]
			}
		case stop("ListResourceTags", err, &in.TagsError):
			return found, failed
		}
	}
	return found, failed
}

func setMetadata(k *model.Key, m *types.KeyMetadata) {
	if m == nil {
		return
	}
	meta := policy.Meta{
		KeyManager:       string(m.KeyManager),
		KeySpec:          string(m.KeySpec),
		KeyUsage:         string(m.KeyUsage),
		KeyState:         string(m.KeyState),
		Origin:           string(m.Origin),
		CustomKeyStoreID: aws.ToString(m.CustomKeyStoreId),
	}
	if meta.Origin == "" {
		meta.Origin = policy.OriginAWSKMS
	}
	if meta.KeySpec == "" {
		meta.KeySpec = string(m.CustomerMasterKeySpec) //nolint:staticcheck // older responses carry only this field
	}
	// Interned: one copy, detached from the response, for all keys alike.
	k.Meta = model.MetaOf(meta)
	if k.ARN == "" { // a key read before it was listed (see Refresher.Mark)
		k.ARN = aws.ToString(m.Arn)
	}
	k.CreationDate = aws.ToTime(m.CreationDate)
	k.DeletionDate = nil
	if d := aws.ToTime(m.DeletionDate); !d.IsZero() {
		k.DeletionDate = &d
	}
	if mrc := m.MultiRegionConfiguration; aws.ToBool(m.MultiRegion) && mrc != nil {
		k.MultiRegion = &model.MultiRegion{Type: string(mrc.MultiRegionKeyType)}
		if mrc.PrimaryKey != nil {
			k.MultiRegion.PrimaryARN = aws.ToString(mrc.PrimaryKey.Arn)
			k.MultiRegion.PrimaryRegion = aws.ToString(mrc.PrimaryKey.Region)
		}
	}
}

// materialHash is the hash of a CurrentKeyMaterialId kept in
// policy.History.Material; 0 for none.
func materialHash(id string) uint64 {
	if id == "" {
		return 0
	}
	h := fnv.New64a()
	_, _ = h.Write([]byte(id))
	return max(1, h.Sum64())
}

// maxHistoryPages bounds the pages of one key's ListKeyRotations (1,000
// entries a page): a key has at most 25 on-demand rotations and one
// automatic rotation every 90 days or more, so more pages are an endpoint
// gone wrong, not a history.
const maxHistoryPages = 10

// errHistoryTooLong is the error of a ListKeyRotations answer longer than
// maxHistoryPages.
var errHistoryTooLong = errors.New("ListKeyRotations: more pages than a key's history can have")

// readHistory reads a key's rotation history: every rotation that completed
// (the entries with a RotationDate), counted by type, and the last.
// materialID is the key's CurrentKeyMaterialId as DescribeKey just said:
// the history records it (as policy.History.Material) only when the
// listing's CURRENT material is that one, so that a listing that does not
// show a rotation yet (ListKeyRotations is eventually consistent, and a
// rotation's event can come first) is read again at the key's next read.
// Its own quota is far below the other calls' (awsclient.Options.OperationRates).
func readHistory(ctx context.Context, api KMS, keyID, materialID string) (*policy.History, error) {
	h := &policy.History{}
	current := ""
	p := kms.NewListKeyRotationsPaginator(api, &kms.ListKeyRotationsInput{KeyId: aws.String(keyID), Limit: aws.Int32(1000),
		IncludeKeyMaterial: types.IncludeKeyMaterialAllKeyMaterial}, func(o *kms.ListKeyRotationsPaginatorOptions) { o.StopOnDuplicateToken = true })
	for pages := 0; p.HasMorePages(); pages++ {
		if pages == maxHistoryPages {
			return nil, errHistoryTooLong
		}
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, err
		}
		for _, r := range page.Rotations {
			if r.KeyMaterialState == types.KeyMaterialStateCurrent {
				current = aws.ToString(r.KeyMaterialId)
			}
			at := aws.ToTime(r.RotationDate)
			if at.IsZero() { // the first material, or imported material pending rotation
				continue
			}
			switch r.RotationType {
			case types.RotationTypeOnDemand:
				h.OnDemand++
			case types.RotationTypeAutomatic:
				h.Automatic++
			default: // a type this version does not know: not counted as either
				continue
			}
			if at.After(h.LastRotation) {
				h.LastRotation, h.LastType = at, intern(string(r.RotationType))
			}
		}
	}
	if materialID != "" && current == materialID {
		h.Material = materialHash(materialID)
	}
	return h, nil
}

func listTags(ctx context.Context, api KMS, keyID string) (map[string]string, error) {
	tags := map[string]string{}
	p := kms.NewListResourceTagsPaginator(api, &kms.ListResourceTagsInput{KeyId: aws.String(keyID), Limit: aws.Int32(50)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, err
		}
		for _, t := range page.Tags {
			tags[aws.ToString(t.TagKey)] = aws.ToString(t.TagValue)
		}
	}
	return tags, nil
}

func isNotFound(err error) bool {
	var nf *types.NotFoundException
	return errors.As(err, &nf)
}

// describeTargetError gives a short text for a failed target, without
// request ids or other noise.
func describeTargetError(err error) string {
	var le *listError
	if errors.As(err, &le) {
		return fmt.Sprintf("%s: %s", le.op, awsclient.ErrorCode(le.err))
	}
	var re ReadErrors
	if errors.As(err, &re) {
		return re.Error()
	}
	return awsclient.ErrorCode(err)
}
