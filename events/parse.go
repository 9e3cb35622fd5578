package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws/arn"

	"github.com/kms-exporter/kms_exporter/awsclient"
	"github.com/kms-exporter/kms_exporter/model"
)

// KeyRef names a key an event is about (the inventory's model.KeyRef): its
// KeyID is a key id (a UUID, or mrk- and 32 hex digits), never an ARN or alias.
type KeyRef = model.KeyRef

// The detail-types of the events the consumer reads.
const (
	DetailTypeAPICall            = "AWS API Call via CloudTrail"
	DetailTypeRotation           = "KMS CMK Rotation"
	DetailTypeDeletion           = "KMS CMK Deletion"
	DetailTypeMaterialExpiration = "KMS Imported Key Material Expiration"
)

// ServiceEventTypes are the detail-types of the events KMS itself sends to
// EventBridge (source aws.kms).
var ServiceEventTypes = []string{DetailTypeRotation, DetailTypeDeletion, DetailTypeMaterialExpiration}

// APICallNames are the CloudTrail event names of the KMS calls that can
// change what the exporter reports of a key: its rotation, state, tags,
// aliases, multi-Region setup, key material or policy.
var APICallNames = []string{
	"EnableKeyRotation", "DisableKeyRotation", "RotateKeyOnDemand", "CreateKey",
	"ScheduleKeyDeletion", "CancelKeyDeletion", "EnableKey", "DisableKey",
	"TagResource", "UntagResource", "ReplicateKey", "UpdatePrimaryRegion",
	"ImportKeyMaterial", "DeleteImportedKeyMaterial", "PutKeyPolicy",
	"CreateAlias", "UpdateAlias", "DeleteAlias",
}

// Types are the values of the type label of events received: the CloudTrail
// event names, the service events' detail-types, and TypeOther for the rest.
var Types = slices.Concat(APICallNames, ServiceEventTypes, []string{TypeOther})

// TypeOther is the type of an event the consumer does not act on: another
// source, detail-type or event name. Those are counted under one value so
// that what arrives on the queue cannot grow the label set.
const TypeOther = "other"

// Reasons an event marks no key.
const (
	// ReasonUnrelated: another source, detail-type or event name.
	ReasonUnrelated = "unrelated"
	// ReasonAliasOnly: the event names an alias only (DeleteAlias, or a
	// call made with an alias name or alias ARN), which cannot be resolved
	// to a key from the event.
	ReasonAliasOnly = "alias_only"
	// ReasonNoKey: a KMS event that names no key at all, such as a CreateKey
	// that failed.
	ReasonNoKey = "no_key"
	// ReasonNotAudited: every key it names is in an account or region the
	// exporter does not audit.
	ReasonNotAudited = "not_audited"
)

// IgnoreReasons are the values of the reason label of events ignored.
var IgnoreReasons = []string{ReasonUnrelated, ReasonAliasOnly, ReasonNoKey, ReasonNotAudited}

// Event is what an SQS message says, as far as the exporter cares.
type Event struct {
	// ID is the EventBridge event id, for logs.
	ID string
	// Type is the event name of a CloudTrail record, the detail-type of a
	// service event, or TypeOther.
	Type string
	// Time is when it happened: the CloudTrail eventTime, else the
	// envelope's time; zero when neither could be read.
	Time time.Time
	// Refs are the keys to read again, without repeats.
	Refs []KeyRef
	// Rotated: the event says the key material rotated (a KMS CMK
	// Rotation event, a RotateKeyOnDemand call): the keys' rotation
	// history is read again too (see RotationSink).
	Rotated bool
	// Ignored is the reason Refs is empty.
	Ignored string
}

// ErrMalformed wraps every reason a message is not an EventBridge event the
// consumer can read.
var ErrMalformed = errors.New("malformed event")

// Bounds on what one event may name. A KMS event names at most three keys
// (UpdateAlias: the alias's old and new key; ReplicateKey and
// UpdatePrimaryRegion: one key in two regions), in at most a handful of
// places each; a message naming more is not a KMS event, and is malformed
// rather than turned into that many reads.
const (
	// MaxKeysPerEvent is the most keys (account, region, key id) one event
	// may name.
	MaxKeysPerEvent = 16
	// maxCandidates is the most non-empty key ids, key ARNs and aliases one
	// event may hold in the places Parse reads, repeats included.
	maxCandidates = 64
)

// clip shortens a value quoted in an error: a message can hold anything.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

// envelope is an EventBridge event.
type envelope struct {
	Version    string          `json:"version"`
	ID         string          `json:"id"`
	DetailType string          `json:"detail-type"`
	Source     string          `json:"source"`
	Account    string          `json:"account"`
	Time       string          `json:"time"`
	Region     string          `json:"region"`
	Resources  []string        `json:"resources"`
	Detail     json.RawMessage `json:"detail"`
}

// trail is the part of a CloudTrail record the consumer reads.
type trail struct {
	EventTime          string `json:"eventTime"`
	EventSource        string `json:"eventSource"`
	EventName          string `json:"eventName"`
	AWSRegion          string `json:"awsRegion"`
	RecipientAccountID string `json:"recipientAccountId"`
	// ErrorCode is set for a call that failed.
	ErrorCode         string `json:"errorCode"`
	RequestParameters *struct {
		KeyID         string `json:"keyId"`
		TargetKeyID   string `json:"targetKeyId"`
		AliasName     string `json:"aliasName"`
		ReplicaRegion string `json:"replicaRegion"`
		PrimaryRegion string `json:"primaryRegion"`
	} `json:"requestParameters"`
	ResponseElements *struct {
		KeyID       string `json:"keyId"`
		KeyMetadata *struct {
			KeyID string `json:"keyId"`
			ARN   string `json:"arn"`
		} `json:"keyMetadata"`
	} `json:"responseElements"`
	Resources []struct {
		AccountID string `json:"accountId"`
		Type      string `json:"type"`
		ARN       string `json:"ARN"`
	} `json:"resources"`
}

// serviceDetail is the detail of a KMS service event.
type serviceDetail struct {
	KeyID string `json:"key-id"`
}

// Parse reads an SQS message body holding an EventBridge event. It returns
// an error wrapping ErrMalformed for anything that is not one (or a KMS event
// whose fields have the wrong shape); an event that marks nothing has
// Ignored set. Parse trusts nothing in the event beyond which key it names:
// a failed call (errorCode) marks its key too, as the verdict only ever
// comes from reading KMS again.
func Parse(body []byte) (Event, error) {
	var env envelope
	if err := strictUnmarshal(body, &env); err != nil {
		return Event{}, malformed("not an EventBridge event: %v", err)
	}
	if env.DetailType == "" || env.Source == "" {
		return Event{}, malformed("no detail-type or source")
	}
	if !isObject(env.Detail) {
		return Event{}, malformed("detail is not a JSON object")
	}
	ev := Event{ID: env.ID, Type: TypeOther, Time: parseTime(env.Time)}
	if env.Source != "aws.kms" {
		ev.Ignored = ReasonUnrelated
		return ev, nil
	}
	fallback := origin{account: env.Account, region: env.Region}
	var ids []string
	switch {
	case env.DetailType == DetailTypeAPICall:
		var t trail
		if err := strictUnmarshal(env.Detail, &t); err != nil {
			return Event{}, malformed("CloudTrail record: %v", err)
		}
		if t.EventSource != "kms.amazonaws.com" || !slices.Contains(APICallNames, t.EventName) {
			ev.Ignored = ReasonUnrelated
			return ev, nil
		}
		// A RotateKeyOnDemand that failed rotated nothing: its key is read
		// again (as for any failed call) but not its history.
		ev.Type, ev.Rotated = t.EventName, t.EventName == "RotateKeyOnDemand" && t.ErrorCode == ""
		if tm := parseTime(t.EventTime); !tm.IsZero() {
			ev.Time = tm
		}
		fallback = origin{account: firstNonEmpty(t.RecipientAccountID, env.Account), region: firstNonEmpty(t.AWSRegion, env.Region)}
		ids = trailKeys(env.Resources, &t)
		refs, aliasOnly, err := resolve(ids, fallback)
		if err != nil {
			return Event{}, err
		}
		if t.RequestParameters != nil {
			refs = alsoIn(refs, t.EventName, t.RequestParameters.ReplicaRegion, t.RequestParameters.PrimaryRegion)
		}
		return finish(ev, refs, aliasOnly || (t.RequestParameters != nil && t.RequestParameters.AliasName != ""))
	case slices.Contains(ServiceEventTypes, env.DetailType):
		var d serviceDetail
		if err := strictUnmarshal(env.Detail, &d); err != nil {
			return Event{}, malformed("%s detail: %v", env.DetailType, err)
		}
		ev.Type, ev.Rotated = env.DetailType, env.DetailType == DetailTypeRotation
		ids = append(slices.Clone(env.Resources), d.KeyID)
		refs, aliasOnly, err := resolve(ids, fallback)
		if err != nil {
			return Event{}, err
		}
		return finish(ev, refs, aliasOnly)
	}
	ev.Ignored = ReasonUnrelated
	return ev, nil
}

// trailKeys lists, in order, every place a CloudTrail record of a KMS call
// names a key: the key ARNs of the envelope's and the record's resources,
// CreateKey's keyMetadata, responseElements.keyId (the key ARN since December
// 2022), requestParameters.keyId and targetKeyId (CreateAlias, UpdateAlias).
func trailKeys(envResources []string, t *trail) []string {
	var ids []string
	for _, r := range envResources {
		if isKeyARN(r) {
			ids = append(ids, r)
		}
	}
	for _, r := range t.Resources {
		if r.Type == "AWS::KMS::Key" || isKeyARN(r.ARN) {
			ids = append(ids, r.ARN)
		}
	}
	if re := t.ResponseElements; re != nil {
		if m := re.KeyMetadata; m != nil {
			ids = append(ids, m.ARN, m.KeyID)
		}
		ids = append(ids, re.KeyID)
	}
	if rp := t.RequestParameters; rp != nil {
		ids = append(ids, rp.KeyID, rp.TargetKeyID)
	}
	return ids
}

// origin is where a bare key id is: the account and region of the event.
type origin struct{ account, region string }

var keyIDPattern = regexp.MustCompile(`^(mrk-)?[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$`)

// ValidKeyID tells whether s is shaped like a KMS key id: a UUID, or mrk-
// and 32 hex digits for a multi-Region key.
func ValidKeyID(s string) bool { return keyIDPattern.MatchString(s) }

func isKeyARN(s string) bool {
	a, err := arn.Parse(s)
	return err == nil && a.Service == "kms" && strings.HasPrefix(a.Resource, "key/")
}

func isAlias(s string) bool {
	if strings.HasPrefix(s, "alias/") {
		return true
	}
	a, err := arn.Parse(s)
	return err == nil && a.Service == "kms" && strings.HasPrefix(a.Resource, "alias/")
}

// resolve turns key ids and key ARNs into refs, skipping empty values and
// repeats. A key ARN says where the key is; a bare id is in the event's
// account and region, unless an ARN of the event already named it. aliasOnly
// tells that a value was an alias name or alias ARN. More than maxCandidates
// non-empty values, a value that is neither a key nor an alias, or a ref
// without a valid account or region makes the event malformed.
func resolve(ids []string, o origin) (refs []KeyRef, aliasOnly bool, err error) {
	candidates := 0
	for _, id := range ids {
		if id != "" {
			candidates++
		}
	}
	if candidates > maxCandidates {
		return nil, false, malformed("%d key ids, key ARNs or aliases, more than the %d a KMS event may hold", candidates, maxCandidates)
	}
	var bare []string
	seen := make(map[KeyRef]bool)
	seenID := make(map[string]bool)
	add := func(ref KeyRef) error {
		if err := check(ref); err != nil {
			return err
		}
		if !seen[ref] {
			seen[ref] = true
			seenID[ref.KeyID] = true
			refs = append(refs, ref)
		}
		return nil
	}
	for _, id := range ids {
		switch {
		case id == "":
		case isAlias(id):
			aliasOnly = true
		case strings.HasPrefix(id, "arn:"):
			a, perr := arn.Parse(id)
			if perr != nil || a.Service != "kms" || !strings.HasPrefix(a.Resource, "key/") {
				return nil, false, malformed("%q is not a KMS key ARN", clip(id))
			}
			if err := add(KeyRef{AccountID: a.AccountID, Region: a.Region, KeyID: strings.TrimPrefix(a.Resource, "key/")}); err != nil {
				return nil, false, err
			}
		default:
			bare = append(bare, id)
		}
	}
	for _, id := range bare {
		if seenID[id] {
			continue
		}
		if err := add(KeyRef{AccountID: o.account, Region: o.region, KeyID: id}); err != nil {
			return nil, false, err
		}
	}
	return refs, aliasOnly, nil
}

func check(ref KeyRef) error {
	switch {
	case !ValidKeyID(ref.KeyID):
		return malformed("%q is not a KMS key id", clip(ref.KeyID))
	case !awsclient.ValidAccountID(ref.AccountID):
		return malformed("%q is not an account id", clip(ref.AccountID))
	case !awsclient.ValidRegion(ref.Region):
		return malformed("%q is not a region", clip(ref.Region))
	}
	return nil
}

// alsoIn adds the other region of a multi-Region call: the replica's region
// of ReplicateKey, the new primary's region of UpdatePrimaryRegion (the
// key's id is the same in every region of a multi-Region key).
func alsoIn(refs []KeyRef, eventName, replicaRegion, primaryRegion string) []KeyRef {
	region := ""
	switch eventName {
	case "ReplicateKey":
		region = replicaRegion
	case "UpdatePrimaryRegion":
		region = primaryRegion
	}
	if !awsclient.ValidRegion(region) {
		return refs
	}
	for _, r := range slices.Clone(refs) {
		r.Region = region
		if !slices.Contains(refs, r) {
			refs = append(refs, r)
		}
	}
	return refs
}

// finish sets the event's refs, or why it has none; more than
// MaxKeysPerEvent refs make it malformed.
func finish(ev Event, refs []KeyRef, aliasOnly bool) (Event, error) {
	if len(refs) > MaxKeysPerEvent {
		return Event{}, malformed("names %d keys, more than the %d a KMS event may name", len(refs), MaxKeysPerEvent)
	}
	ev.Refs = refs
	switch {
	case len(refs) > 0:
	case aliasOnly:
		ev.Ignored = ReasonAliasOnly
	default:
		ev.Ignored = ReasonNoKey
	}
	return ev, nil
}

// strictUnmarshal decodes one JSON value; wrong types are errors, unknown
// fields are not.
func strictUnmarshal(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("data after the JSON value")
	}
	return nil
}

func isObject(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) > 0 && raw[0] == '{'
}

func parseTime(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}
	}
	return t
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// EventPattern returns the pattern of the EventBridge rule that sends the
// events the consumer acts on to its queue: the KMS service events, and the
// CloudTrail records of the calls in APICallNames (not the far more numerous
// Encrypt, Decrypt, GenerateDataKey, ...).
func EventPattern() string {
	pattern := map[string]any{
		"source": []string{"aws.kms"},
		"$or": []any{
			map[string]any{"detail-type": ServiceEventTypes},
			map[string]any{
				"detail-type": []string{DetailTypeAPICall},
				"detail": map[string]any{
					"eventSource": []string{"kms.amazonaws.com"},
					"eventName":   APICallNames,
				},
			},
		},
	}
	b, err := json.Marshal(pattern)
	if err != nil {
		panic(err)
	}
	return string(b)
}
