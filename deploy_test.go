package main

import (
	"encoding/json"
	"os"
	"slices"
	"testing"

	"github.com/kms-exporter/kms_exporter/awsclient"
)

type iamPolicy struct {
	Version   string
	Statement []struct {
		Effect    string
		Action    []string
		Resource  string
		Condition map[string]map[string]string
	}
}

func readPolicy(t *testing.T, path string) iamPolicy {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var p iamPolicy
	if err := json.Unmarshal(raw, &p); err != nil {
		t.Fatalf("%s is not a valid policy: %v", path, err)
	}
	if p.Version != "2012-10-17" {
		t.Errorf("%s: Version %q", path, p.Version)
	}
	return p
}

// TestRemediationPolicy: the remediation addition allows EnableKeyRotation
// only, with the period bounded by the default policy.
func TestRemediationPolicy(t *testing.T) {
	p := readPolicy(t, "deploy/iam/kms-exporter-remediation.json")
	if len(p.Statement) != 1 {
		t.Fatalf("%d statements", len(p.Statement))
	}
	s := p.Statement[0]
	if s.Effect != "Allow" || !slices.Equal(s.Action, []string{"kms:EnableKeyRotation"}) ||
		s.Condition["NumericLessThanEquals"]["kms:RotationPeriodInDays"] != "365" {
		t.Errorf("statement %+v", s)
	}
}

// TestReadOnlyPolicyMatchesCalls keeps the shipped IAM policy to exactly the
// calls the exporter makes: nothing missing, nothing more (least privilege).
func TestReadOnlyPolicyMatchesCalls(t *testing.T) {
	policy := readPolicy(t, "deploy/iam/kms-exporter-readonly.json")
	var got []string
	for _, s := range policy.Statement {
		if s.Effect != "Allow" {
			t.Errorf("unexpected effect %q", s.Effect)
		}
		got = append(got, s.Action...)
	}
	want := []string{"account:ListRegions"}
	for _, op := range awsclient.Operations {
		want = append(want, "kms:"+op)
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("policy actions %v, want exactly %v", got, want)
	}
}
