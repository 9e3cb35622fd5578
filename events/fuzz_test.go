package events

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/kms-exporter/kms_exporter/awsclient"
)

// FuzzParse: any message body is malformed, or yields at most
// MaxKeysPerEvent refs each naming a 12-digit account, a region and a key id
// (never an ARN or alias), without repeats, a type from Types and a reason from IgnoreReasons exactly when
// there is no ref; and the same body always parses the same way.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*.json"))
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"detail-type":"KMS CMK Deletion","source":"aws.kms","account":"111122223333","region":"eu-west-1","detail":{"key-id":"alias/x"}}`))
	f.Add([]byte(`{"detail-type":"KMS CMK Deletion","source":"aws.kms","account":"111122223333","region":"eu-west-1","resources":` +
		keyARNs(MaxKeysPerEvent+1, MaxKeysPerEvent+1) + `,"detail":{}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		ev, err := Parse(body)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		again, err := Parse(body)
		if err != nil || !reflect.DeepEqual(ev, again) {
			t.Fatalf("not deterministic: %+v then %+v, %v", ev, again, err)
		}
		if !slices.Contains(Types, ev.Type) {
			t.Fatalf("type %q not in Types", ev.Type)
		}
		if (len(ev.Refs) == 0) != (ev.Ignored != "") || (ev.Ignored != "" && !slices.Contains(IgnoreReasons, ev.Ignored)) {
			t.Fatalf("refs %v with ignored %q", ev.Refs, ev.Ignored)
		}
		if len(ev.Refs) > MaxKeysPerEvent {
			t.Fatalf("%d refs, more than %d", len(ev.Refs), MaxKeysPerEvent)
		}
		for i, r := range ev.Refs {
			if !awsclient.ValidAccountID(r.AccountID) || !awsclient.ValidRegion(r.Region) || !ValidKeyID(r.KeyID) ||
				strings.ContainsAny(r.KeyID, ":/") || slices.Contains(ev.Refs[:i], r) {
				t.Fatalf("ref %d %+v of %v", i, r, ev.Refs)
			}
		}
	})
}
