package events

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const (
	account = "111122223333"
	region  = "eu-west-1"
	key1    = "1234abcd-12ab-34cd-56ef-1234567890ab"
	key2    = "0987dcba-09fe-87dc-65ba-ab0987654321"
	mrk     = "mrk-1234abcd12ab34cd56ef1234567890ab"
)

func ref(id string) KeyRef { return KeyRef{AccountID: account, Region: region, KeyID: id} }

func fixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fixtureCases says what each file of testdata must yield: the keys to read
// again, the type it is counted under, its time, or why it is ignored.
type fixtureCase struct {
	file    string
	typ     string
	time    string
	refs    []KeyRef
	ignored string
}

var fixtureCases = []fixtureCase{
	{"cloudtrail-enable-key-rotation.json", "EnableKeyRotation", "2024-06-12T09:14:03Z", []KeyRef{ref(key1)}, ""},
	{"cloudtrail-disable-key-rotation.json", "DisableKeyRotation", "2024-06-12T09:20:41Z", []KeyRef{ref(key1)}, ""},
	// A call that failed is still a reason to read the key: the event proves nothing.
	{"cloudtrail-disable-key-rotation-denied.json", "DisableKeyRotation", "2024-06-12T09:21:07Z", []KeyRef{ref(key1)}, ""},
	{"cloudtrail-rotate-key-on-demand.json", "RotateKeyOnDemand", "2024-06-12T10:02:55Z", []KeyRef{ref(key1)}, ""},
	{"cloudtrail-create-key.json", "CreateKey", "2024-06-12T08:30:12Z", []KeyRef{ref(key2)}, ""},
	{"cloudtrail-create-key-failed.json", "CreateKey", "2024-06-12T08:31:40Z", nil, ReasonNoKey},
	{"cloudtrail-schedule-key-deletion.json", "ScheduleKeyDeletion", "2024-06-12T11:45:00Z", []KeyRef{ref(key1)}, ""},
	{"cloudtrail-cancel-key-deletion.json", "CancelKeyDeletion", "2024-06-12T11:50:00Z", []KeyRef{ref(key1)}, ""},
	{"cloudtrail-enable-key.json", "EnableKey", "2024-06-12T12:10:00Z", []KeyRef{ref(key1)}, ""},
	{"cloudtrail-disable-key.json", "DisableKey", "2024-06-12T12:15:00Z", []KeyRef{ref(key1)}, ""},
	{"cloudtrail-tag-resource.json", "TagResource", "2024-06-12T12:05:31Z", []KeyRef{ref(key1)}, ""},
	{"cloudtrail-untag-resource.json", "UntagResource", "2024-06-12T12:20:00Z", []KeyRef{ref(key1)}, ""},
	{"cloudtrail-import-key-material.json", "ImportKeyMaterial", "2024-06-12T12:25:00Z", []KeyRef{ref(key1)}, ""},
	{"cloudtrail-delete-imported-key-material.json", "DeleteImportedKeyMaterial", "2024-06-12T12:30:00Z", []KeyRef{ref(key1)}, ""},
	{"cloudtrail-put-key-policy.json", "PutKeyPolicy", "2024-06-12T12:35:00Z", []KeyRef{ref(key1)}, ""},
	{"cloudtrail-enable-key-rotation-alias.json", "EnableKeyRotation", "2024-06-12T12:40:18Z", nil, ReasonAliasOnly},
	{"cloudtrail-create-alias.json", "CreateAlias", "2024-06-12T08:32:10Z", []KeyRef{ref(key2)}, ""},
	// The alias leaves one key for another: both show it in kms_key_info.
	{"cloudtrail-update-alias.json", "UpdateAlias", "2024-06-12T13:00:00Z", []KeyRef{ref(key2), ref(key1)}, ""},
	{"cloudtrail-delete-alias.json", "DeleteAlias", "2024-06-12T13:30:00Z", []KeyRef{ref(key1)}, ""},
	{"cloudtrail-delete-alias-no-key.json", "DeleteAlias", "2024-06-12T13:31:00Z", nil, ReasonAliasOnly},
	{"cloudtrail-replicate-key.json", "ReplicateKey", "2024-06-12T14:00:00Z",
		[]KeyRef{ref(mrk), {AccountID: account, Region: "us-east-1", KeyID: mrk}}, ""},
	{"cloudtrail-update-primary-region.json", "UpdatePrimaryRegion", "2024-06-12T15:00:00Z",
		[]KeyRef{ref(mrk), {AccountID: account, Region: "us-east-1", KeyID: mrk}}, ""},
	{"cloudtrail-decrypt.json", TypeOther, "2024-06-12T09:14:03Z", nil, ReasonUnrelated},
	{"service-rotation.json", DetailTypeRotation, "2024-06-13T00:00:12Z", []KeyRef{ref(key1)}, ""},
	{"service-deletion.json", DetailTypeDeletion, "2024-07-12T00:03:41Z", []KeyRef{ref(key1)}, ""},
	{"service-material-expiration.json", DetailTypeMaterialExpiration, "2024-08-01T00:00:05Z", []KeyRef{ref(key1)}, ""},
	{"other-source.json", TypeOther, "2024-06-12T16:00:00Z", nil, ReasonUnrelated},
}

// TestParseFixtures: each documented shape yields what fixtureCases says.
func TestParseFixtures(t *testing.T) {
	for _, tc := range fixtureCases {
		t.Run(tc.file, func(t *testing.T) {
			ev, err := Parse(fixture(t, tc.file))
			if err != nil {
				t.Fatal(err)
			}
			want, _ := time.Parse(time.RFC3339, tc.time)
			if ev.Type != tc.typ || !ev.Time.Equal(want) || !slices.Equal(ev.Refs, tc.refs) || ev.Ignored != tc.ignored {
				t.Errorf("got type %q, time %s, refs %v, ignored %q\nwant type %q, time %s, refs %v, ignored %q",
					ev.Type, ev.Time, ev.Refs, ev.Ignored, tc.typ, want, tc.refs, tc.ignored)
			}
			if ev.ID == "" {
				t.Error("no event id")
			}
			// Only a rotation has the keys' rotation history read again.
			if rotated := tc.typ == "RotateKeyOnDemand" || tc.typ == DetailTypeRotation; ev.Rotated != rotated {
				t.Errorf("Rotated = %v for a %s event", ev.Rotated, tc.typ)
			}
		})
	}
}

// TestParseFailedRotation: a RotateKeyOnDemand that failed (errorCode)
// marks its key, but not as rotated.
func TestParseFailedRotation(t *testing.T) {
	body := `{"detail-type":"AWS API Call via CloudTrail","source":"aws.kms","account":"111122223333","region":"eu-west-1",
	 "detail":{"eventSource":"kms.amazonaws.com","eventName":"RotateKeyOnDemand","awsRegion":"eu-west-1","recipientAccountId":"111122223333",
	 "errorCode":"LimitExceededException","requestParameters":{"keyId":"` + key1 + `"}}}`
	ev, err := Parse([]byte(body))
	if err != nil || len(ev.Refs) != 1 || ev.Rotated {
		t.Errorf("failed RotateKeyOnDemand: refs %v, rotated %v, %v; want its key, not rotated", ev.Refs, ev.Rotated, err)
	}
	ok, err := Parse([]byte(strings.Replace(body, `"errorCode":"LimitExceededException",`, "", 1)))
	if err != nil || !ok.Rotated {
		t.Errorf("RotateKeyOnDemand: rotated %v, %v", ok.Rotated, err)
	}
}

// TestParseFixturesCovered: every fixture is in fixtureCases, and every
// event name and detail-type the consumer acts on has a fixture that yields
// a key under that type.
func TestParseFixturesCovered(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*.json"))
	var listed []string
	for _, tc := range fixtureCases {
		listed = append(listed, tc.file)
	}
	for _, f := range files {
		if !slices.Contains(listed, filepath.Base(f)) {
			t.Errorf("testdata/%s is not in fixtureCases", filepath.Base(f))
		}
	}
	for _, typ := range slices.Concat(APICallNames, ServiceEventTypes) {
		if !slices.ContainsFunc(fixtureCases, func(tc fixtureCase) bool { return tc.typ == typ && len(tc.refs) > 0 }) {
			t.Errorf("no fixture of %s naming a key", typ)
		}
	}
}

// TestParseWhere: the account and region of a key come from its ARN, else
// the CloudTrail record, else the envelope.
func TestParseWhere(t *testing.T) {
	for name, tc := range map[string]struct {
		body string
		want KeyRef
	}{
		"ARN of another account and region": {
			`{"detail-type":"AWS API Call via CloudTrail","source":"aws.kms","account":"111122223333","region":"eu-west-1",
			 "detail":{"eventSource":"kms.amazonaws.com","eventName":"EnableKey","awsRegion":"eu-west-1","recipientAccountId":"111122223333",
			 "requestParameters":{"keyId":"arn:aws:kms:us-west-2:444455556666:key/` + key1 + `"}}}`,
			KeyRef{AccountID: "444455556666", Region: "us-west-2", KeyID: key1}},
		"bare id: the record's account and region": {
			`{"detail-type":"AWS API Call via CloudTrail","source":"aws.kms","account":"999999999999","region":"eu-central-1",
			 "detail":{"eventSource":"kms.amazonaws.com","eventName":"EnableKey","awsRegion":"eu-west-1","recipientAccountId":"111122223333",
			 "requestParameters":{"keyId":"` + key1 + `"}}}`,
			ref(key1)},
		"bare id, no record account or region: the envelope's": {
			`{"detail-type":"AWS API Call via CloudTrail","source":"aws.kms","account":"111122223333","region":"eu-west-1",
			 "detail":{"eventSource":"kms.amazonaws.com","eventName":"DisableKey","requestParameters":{"keyId":"` + key1 + `"}}}`,
			ref(key1)},
		// moto's EventBridge leaves the account out of the envelope.
		"service event without envelope account": {
			`{"detail-type":"KMS CMK Rotation","source":"aws.kms","region":"eu-west-1",
			 "resources":["arn:aws:kms:eu-west-1:111122223333:key/` + key1 + `"],"detail":{"key-id":"` + key1 + `"}}`,
			ref(key1)},
		"service event without resources": {
			`{"detail-type":"KMS CMK Deletion","source":"aws.kms","account":"111122223333","region":"eu-west-1","detail":{"key-id":"` + key1 + `"}}`,
			ref(key1)},
	} {
		t.Run(name, func(t *testing.T) {
			ev, err := Parse([]byte(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			if len(ev.Refs) != 1 || ev.Refs[0] != tc.want {
				t.Errorf("refs %v, want [%v]", ev.Refs, tc.want)
			}
		})
	}
}

// TestParseMalformed: what is not an EventBridge event, or names a key in a
// shape no KMS event has, is malformed.
func TestParseMalformed(t *testing.T) {
	api := func(detail string) string {
		return `{"detail-type":"AWS API Call via CloudTrail","source":"aws.kms","account":"111122223333","region":"eu-west-1","detail":` + detail + `}`
	}
	for name, body := range map[string]string{
		"empty":                              ``,
		"not JSON":                           `hello`,
		"array":                              `[]`,
		"two values":                         `{"detail-type":"x","source":"y","detail":{}} {}`,
		"no detail-type":                     `{"source":"aws.kms","detail":{}}`,
		"no source":                          `{"detail-type":"KMS CMK Deletion","detail":{}}`,
		"no detail":                          `{"detail-type":"KMS CMK Deletion","source":"aws.kms"}`,
		"detail not an object":               `{"detail-type":"KMS CMK Deletion","source":"aws.kms","detail":"x"}`,
		"resources not a list":               `{"detail-type":"KMS CMK Deletion","source":"aws.kms","resources":"x","detail":{}}`,
		"key-id a number":                    `{"detail-type":"KMS CMK Deletion","source":"aws.kms","detail":{"key-id":7}}`,
		"key-id not an id":                   `{"detail-type":"KMS CMK Deletion","source":"aws.kms","account":"111122223333","region":"eu-west-1","detail":{"key-id":"../x"}}`,
		"no account":                         `{"detail-type":"KMS CMK Deletion","source":"aws.kms","region":"eu-west-1","detail":{"key-id":"` + key1 + `"}}`,
		"bad region":                         `{"detail-type":"KMS CMK Deletion","source":"aws.kms","account":"111122223333","region":"Europe","detail":{"key-id":"` + key1 + `"}}`,
		"ARN of another service":             api(`{"eventSource":"kms.amazonaws.com","eventName":"EnableKey","requestParameters":{"keyId":"arn:aws:s3:::bucket"}}`),
		"ARN without region":                 api(`{"eventSource":"kms.amazonaws.com","eventName":"EnableKey","requestParameters":{"keyId":"arn:aws:kms::111122223333:key/` + key1 + `"}}`),
		"requestParameters a list":           api(`{"eventSource":"kms.amazonaws.com","eventName":"EnableKey","requestParameters":[]}`),
		"resources of the record not a list": api(`{"eventSource":"kms.amazonaws.com","eventName":"EnableKey","resources":{}}`),
		// No KMS event names more than three keys: thousands would be thousands of reads.
		"17 keys in resources": `{"detail-type":"KMS CMK Deletion","source":"aws.kms","account":"111122223333","region":"eu-west-1",
			"resources":` + keyARNs(MaxKeysPerEvent+1, MaxKeysPerEvent+1) + `,"detail":{}}`,
		"5000 keys in resources": api(`{"eventSource":"kms.amazonaws.com","eventName":"EnableKey","resources":` + trailResources(5000) + `}`),
		"65 ARNs of one key": `{"detail-type":"KMS CMK Deletion","source":"aws.kms","account":"111122223333","region":"eu-west-1",
			"resources":` + keyARNs(maxCandidates+1, 1) + `,"detail":{}}`,
		// 9 keys, each also in the replica's region: 18.
		"ReplicateKey of 9 keys": api(`{"eventSource":"kms.amazonaws.com","eventName":"ReplicateKey",
			"requestParameters":{"replicaRegion":"us-east-1"},"resources":` + trailResources(9) + `}`),
	} {
		t.Run(name, func(t *testing.T) {
			ev, err := Parse([]byte(body))
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("got %+v, %v; want ErrMalformed", ev, err)
			}
		})
	}
}

// keyARNs is a JSON list of n key ARNs naming distinct keys in turn.
func keyARNs(n, distinct int) string {
	arns := make([]string, n)
	for i := range arns {
		arns[i] = fmt.Sprintf(`"arn:aws:kms:eu-west-1:111122223333:key/%08x-0000-4000-8000-000000000000"`, i%distinct)
	}
	return "[" + strings.Join(arns, ",") + "]"
}

// trailResources is the resources list of a CloudTrail record naming n keys.
func trailResources(n int) string {
	res := make([]string, n)
	for i := range res {
		res[i] = fmt.Sprintf(`{"accountId":"111122223333","type":"AWS::KMS::Key","ARN":"arn:aws:kms:eu-west-1:111122223333:key/%08x-0000-4000-8000-000000000000"}`, i)
	}
	return "[" + strings.Join(res, ",") + "]"
}

// TestParseBounds: up to MaxKeysPerEvent keys, and up to maxCandidates
// values naming them, are read; one more is malformed (TestParseMalformed).
func TestParseBounds(t *testing.T) {
	for name, tc := range map[string]struct {
		body string
		refs int
	}{
		"16 keys": {`{"detail-type":"KMS CMK Deletion","source":"aws.kms","account":"111122223333","region":"eu-west-1",
			"resources":` + keyARNs(MaxKeysPerEvent, MaxKeysPerEvent) + `,"detail":{}}`, MaxKeysPerEvent},
		"64 ARNs of one key": {`{"detail-type":"KMS CMK Deletion","source":"aws.kms","account":"111122223333","region":"eu-west-1",
			"resources":` + keyARNs(maxCandidates, 1) + `,"detail":{}}`, 1},
		"ReplicateKey of 8 keys": {`{"detail-type":"AWS API Call via CloudTrail","source":"aws.kms","account":"111122223333","region":"eu-west-1",
			"detail":{"eventSource":"kms.amazonaws.com","eventName":"ReplicateKey","requestParameters":{"replicaRegion":"us-east-1"},
			"resources":` + trailResources(8) + `}}`, 16},
	} {
		t.Run(name, func(t *testing.T) {
			ev, err := Parse([]byte(tc.body))
			if err != nil || len(ev.Refs) != tc.refs {
				t.Errorf("got %d refs, %v; want %d", len(ev.Refs), err, tc.refs)
			}
		})
	}
}

// TestParseUnrelated: events of other sources, detail-types or calls are
// ignored without reading their detail further.
func TestParseUnrelated(t *testing.T) {
	for name, body := range map[string]string{
		"other source":       `{"detail-type":"KMS CMK Deletion","source":"aws.s3","detail":{"key-id":7}}`,
		"other detail-type":  `{"detail-type":"KMS Something New","source":"aws.kms","detail":{}}`,
		"other event source": `{"detail-type":"AWS API Call via CloudTrail","source":"aws.kms","detail":{"eventSource":"s3.amazonaws.com","eventName":"EnableKey"}}`,
		"other KMS call":     `{"detail-type":"AWS API Call via CloudTrail","source":"aws.kms","detail":{"eventSource":"kms.amazonaws.com","eventName":"GenerateDataKey"}}`,
	} {
		t.Run(name, func(t *testing.T) {
			ev, err := Parse([]byte(body))
			if err != nil || ev.Ignored != ReasonUnrelated || ev.Type != TypeOther || len(ev.Refs) > 0 {
				t.Errorf("got %+v, %v; want ignored as unrelated", ev, err)
			}
		})
	}
}

// TestParseMalformedErrorShort: the error of a malformed message, which is
// logged, quotes at most a short piece of it.
func TestParseMalformedErrorShort(t *testing.T) {
	long := strings.Repeat("x", 10000)
	_, err := Parse([]byte(`{"detail-type":"KMS CMK Deletion","source":"aws.kms","account":"111122223333","region":"eu-west-1","detail":{"key-id":"` + long + `"}}`))
	if !errors.Is(err, ErrMalformed) || len(err.Error()) > 200 {
		t.Errorf("error of %d bytes: %.300v", len(err.Error()), err)
	}
}
