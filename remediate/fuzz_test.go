package remediate

import (
	"testing"
)

// FuzzParseRequest: any body is either refused with an error or yields a
// request whose names normalise or are refused, never a panic.
func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{
		`{"region":"eu-west-1","key_id":"1234abcd-12ab-34cd-56ef-1234567890ab"}`,
		`{"key_id":"arn:aws:kms:eu-west-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab","dry_run":true}`,
		`{"region":"eu-west-1","key_id":"x","rotation_period_days":-1}`,
		`{"account_id":"1","region":"","key_id":"arn:aws:s3:::b"}`,
		`[]`, `null`, `{"a":1}{"b":2}`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := ParseRequest(body)
		if err != nil {
			return
		}
		if req.KeyID == "" {
			t.Fatal("accepted without key_id")
		}
		if err := normalise(&req); err == nil {
			if !keyIDPattern.MatchString(req.KeyID) || (req.AccountID != "" && !accountRegexp.MatchString(req.AccountID)) {
				t.Fatalf("normalised to an invalid request: %+v", req)
			}
		}
	})
}

// FuzzParseAlertmanager: any body is refused or parsed, never a panic.
func FuzzParseAlertmanager(f *testing.F) {
	for _, s := range []string{
		`{"version":"4","status":"firing","alerts":[{"status":"firing","labels":{"region":"eu-west-1","key_id":"k"}}]}`,
		`{"version":"4","alerts":null}`, `{"version":4}`, `{}`, `[`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		p, err := ParseAlertmanager(body)
		if err == nil && p.Version != "4" {
			t.Fatalf("accepted version %q", p.Version)
		}
	})
}
