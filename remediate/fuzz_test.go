package remediate

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/kms-exporter/kms_exporter/awsclient"
)

// fold maps a name to a form in which two names are equal exactly when
// encoding/json matches them case-insensitively (bytes.EqualFold): each rune
// becomes the smallest of its simple case-folding orbit, then ASCII letters
// lower case. So "K" and the Kelvin sign meet, but the dotless "ı" stays
// apart from "i" (strings.ToLower(strings.ToUpper(s)) joins those two).
func fold(s string) string {
	var b strings.Builder
	for _, r := range s {
		least := r
		for next := unicode.SimpleFold(r); next != r; next = unicode.SimpleFold(next) {
			least = min(least, next)
		}
		if least < utf8.RuneSelf {
			least = unicode.ToLower(least)
		}
		b.WriteRune(least)
	}
	return b.String()
}

// ambiguousKeys tells whether some object of a JSON text has two keys that
// encoding/json could match to one field (equal after case folding). For such
// texts a struct and a map decode differently by design (the struct sees
// every occurrence, the map the last): the reference comparisons skip them.
func ambiguousKeys(body []byte) bool {
	type frame struct {
		object, expectKey bool
		keys              map[string]bool
	}
	var stack []*frame
	valueDone := func() {
		if n := len(stack); n > 0 && stack[n-1].object {
			stack[n-1].expectKey = true
		}
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	for {
		tok, err := dec.Token()
		if err != nil {
			return false
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &frame{object: true, expectKey: true, keys: map[string]bool{}})
			continue
		case json.Delim('['):
			stack = append(stack, &frame{})
			continue
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
			valueDone()
			continue
		}
		if n := len(stack); n > 0 && stack[n-1].object && stack[n-1].expectKey {
			k := fold(tok.(string))
			if stack[n-1].keys[k] {
				return true
			}
			stack[n-1].keys[k], stack[n-1].expectKey = true, false
			continue
		}
		valueDone()
	}
}

// into decodes a JSON value into v; null leaves it as it is.
func into(raw json.RawMessage, v any) bool { return json.Unmarshal(raw, v) == nil }

// referenceRequest decides with a map, field by field, whether a body is a
// valid single-key request: one JSON object, known fields of the right
// types, key_id, and region unless key_id is an ARN.
func referenceRequest(body []byte) bool {
	var m map[string]json.RawMessage
	if json.Unmarshal(body, &m) != nil || m == nil {
		return false
	}
	var keyID, region string
	var s string
	var b bool
	var n *int
	for k, v := range m {
		ok := false
		switch fold(k) {
		case "account_id", "region", "key_id":
			s = ""
			ok = into(v, &s)
			if fold(k) == "key_id" {
				keyID = s
			} else if fold(k) == "region" {
				region = s
			}
		case "dry_run":
			ok = into(v, &b)
		case "rotation_period_days":
			ok = into(v, &n)
		}
		if !ok {
			return false
		}
	}
	return keyID != "" && (region != "" || strings.HasPrefix(keyID, "arn:"))
}

// FuzzParseRequest: ParseRequest agrees with a reference decoder on which
// bodies are valid requests; an accepted request has key_id and (region or
// ARN), survives a round trip through JSON unchanged, and normalises to valid
// names or is refused.
func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{
		`{"region":"eu-west-1","key_id":"1234abcd-12ab-34cd-56ef-1234567890ab"}`,
		`{"key_id":"arn:aws:kms:eu-west-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab","dry_run":true}`,
		`{"region":"eu-west-1","key_id":"x","rotation_period_days":-1}`,
		`{"account_id":"1","region":"","key_id":"arn:aws:s3:::b"}`,
		`{"REGION":"eu-west-1","Key_Id":"k","rotation_period_days":null}`,
		`{"region":"eu-west-1","key_id":"k"} }`, `{"region":"eu-west-1","key_id":"k"}{}`,
		`{"region":"eu-west-1","key_id":"k","region":null}`, `{"region":"eu-west-1","key_id":"k","force":true}`,
		`[]`, `null`, `"x"`, `{"a":1}{"b":2}`, ``, ` {"region":"r","key_id":"k","rotation_period_days":1e2}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := ParseRequest(body)
		if !ambiguousKeys(body) {
			if want := referenceRequest(body); (err == nil) != want {
				t.Fatalf("ParseRequest(%q): error %v, the reference decoder accepts: %v", body, err, want)
			}
		}
		if err != nil {
			return
		}
		if req.KeyID == "" || (req.Region == "" && !strings.HasPrefix(req.KeyID, "arn:")) {
			t.Fatalf("accepted without key_id, or without region for a key id: %+v", req)
		}
		again, err := json.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		if back, err := ParseRequest(again); err != nil || !reflect.DeepEqual(back, req) {
			t.Fatalf("round trip of %+v through %s: %+v, %v", req, again, back, err)
		}
		if _, err := normalise(&req); err == nil {
			if !keyIDPattern.MatchString(req.KeyID) || (req.AccountID != "" && !awsclient.ValidAccountID(req.AccountID)) {
				t.Fatalf("normalised to an invalid request: %+v", req)
			}
		}
	})
}

type refAlert struct {
	status, fingerprint string
	labels              map[string]string
}

// referenceAlerts decides with maps whether a body is a webhook payload of
// version 4 this package can read, and returns its alerts.
func referenceAlerts(body []byte) ([]refAlert, bool) {
	var m map[string]json.RawMessage
	if json.Unmarshal(body, &m) != nil || m == nil {
		return nil, false
	}
	var version string
	var raw []json.RawMessage
	for k, v := range m {
		switch fold(k) {
		case "version":
			if !into(v, &version) {
				return nil, false
			}
		case "alerts":
			if !into(v, &raw) {
				return nil, false
			}
		}
	}
	if version != "4" {
		return nil, false
	}
	alerts := make([]refAlert, len(raw))
	for i, r := range raw {
		var fields map[string]json.RawMessage
		if !into(r, &fields) {
			return nil, false
		}
		for k, v := range fields {
			ok := true
			switch fold(k) {
			case "status":
				ok = into(v, &alerts[i].status)
			case "fingerprint":
				ok = into(v, &alerts[i].fingerprint)
			case "labels":
				var labels map[string]*string
				ok = into(v, &labels)
				for name, value := range labels {
					if alerts[i].labels == nil {
						alerts[i].labels = map[string]string{}
					}
					if value != nil {
						alerts[i].labels[name] = *value
					} else {
						alerts[i].labels[name] = ""
					}
				}
			}
			if !ok {
				return nil, false
			}
		}
	}
	return alerts, true
}

// FuzzParseAlertmanager: ParseAlertmanager accepts only valid JSON of
// version 4, and agrees with a reference decoder on which payloads are
// readable and on each alert's status, fingerprint and labels.
func FuzzParseAlertmanager(f *testing.F) {
	for _, s := range []string{
		`{"version":"4","status":"firing","alerts":[{"status":"firing","labels":{"region":"eu-west-1","key_id":"k"}}]}`,
		`{"version":"4","alerts":null}`, `{"version":4}`, `{}`, `[`, `null`,
		`{"version":"4","alerts":[null,{"labels":null,"fingerprint":"f"},{"labels":{"a":null}}]}`,
		`{"Version":"4","ALERTS":[{"Status":"firing"}],"extra":{"x":[1,2]}}`,
		`{"version":"4","alerts":[1]}`, `{"version":"4","alerts":[{"labels":{"a":1}}]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		p, err := ParseAlertmanager(body)
		if err == nil && (p.Version != "4" || !json.Valid(body)) {
			t.Fatalf("accepted version %q of %q", p.Version, body)
		}
		if ambiguousKeys(body) {
			return
		}
		want, ok := referenceAlerts(body)
		if (err == nil) != ok {
			t.Fatalf("ParseAlertmanager(%q): error %v, the reference decoder accepts: %v", body, err, ok)
		}
		if err != nil {
			return
		}
		if len(p.Alerts) != len(want) {
			t.Fatalf("%d alerts, the reference decoder reads %d", len(p.Alerts), len(want))
		}
		for i, a := range p.Alerts {
			if a.Status != want[i].status || a.Fingerprint != want[i].fingerprint || len(a.Labels) != len(want[i].labels) {
				t.Fatalf("alert %d: %+v, the reference decoder reads %+v", i, a, want[i])
			}
			for k, v := range want[i].labels {
				if a.Labels[k] != v {
					t.Fatalf("alert %d label %s: %q, the reference decoder reads %q", i, k, a.Labels[k], v)
				}
			}
		}
	})
}
