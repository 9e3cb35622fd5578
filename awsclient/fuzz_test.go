package awsclient

import (
	"strings"
	"testing"
)

// FuzzParseRole: any --aws.assume-role value is refused or yields an IAM role
// ARN whose account is 12 digits; never a panic.
func FuzzParseRole(f *testing.F) {
	for _, s := range []string{"arn:aws:iam::123456789012:role/audit", "arn:aws:iam::123456789012:role/a,external-id=x",
		"arn:aws:iam::123:role/x", "arn:aws:s3:::b", ",", "arn:::::", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRole(s)
		if err != nil {
			return
		}
		if len(r.AccountID()) != 12 || !strings.Contains(r.ARN, ":role/") {
			t.Fatalf("%q accepted as %+v", s, r)
		}
	})
}

// FuzzParseRegions: any --aws.region values are refused or yield valid,
// distinct region names (or discovery alone).
func FuzzParseRegions(f *testing.F) {
	for _, s := range []string{"eu-west-1", "eu-west-1,us-east-1", "all", "all,eu-west-1", " ", "us-gov-west-1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		regions, discover, err := ParseRegions([]string{s})
		if err != nil {
			return
		}
		if discover && len(regions) > 0 {
			t.Fatalf("%q: discovery with regions", s)
		}
		seen := map[string]bool{}
		for _, r := range regions {
			if !ValidRegion(r) || seen[r] {
				t.Fatalf("%q: region %q invalid or repeated", s, r)
			}
			seen[r] = true
		}
	})
}
