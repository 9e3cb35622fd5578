package main

import (
	"encoding/json"
	"os"
	"slices"
	"testing"

	"github.com/kms-exporter/kms_exporter/awsclient"
)

// TestReadOnlyPolicyMatchesCalls keeps the shipped IAM policy to exactly the
// calls the exporter makes: nothing missing, nothing more (least privilege).
func TestReadOnlyPolicyMatchesCalls(t *testing.T) {
	raw, err := os.ReadFile("deploy/iam/kms-exporter-readonly.json")
	if err != nil {
		t.Fatal(err)
	}
	var policy struct {
		Version   string
		Statement []struct {
			Effect   string
			Action   []string
			Resource string
		}
	}
	if err := json.Unmarshal(raw, &policy); err != nil {
		t.Fatalf("policy is not valid JSON: %v", err)
	}
	if policy.Version != "2012-10-17" {
		t.Errorf("Version %q", policy.Version)
	}
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
