package inventory

import (
	"maps"
	"slices"
	"strings"
	"testing"
	"unsafe"

	"github.com/kms-exporter/kms_exporter/model"
	"github.com/kms-exporter/kms_exporter/policy"
)

// within reports whether s's bytes lie inside arena's.
func within(s, arena string) bool {
	if len(s) == 0 {
		return false
	}
	p, a := uintptr(unsafe.Pointer(unsafe.StringData(s))), uintptr(unsafe.Pointer(unsafe.StringData(arena)))
	return p >= a && p < a+uintptr(len(arena))
}

// A key kept in a snapshot holds no string of the response it was read
// from (the SDK cuts a page's strings from one arena: one string kept keeps
// the page), and a key read as it was shares its previous copy's.
func TestCompactDetachesFromResponses(t *testing.T) {
	const id = "1234abcd-12ab-34cd-56ef-1234567890ab"
	arena := strings.Repeat("x", 64) + "arn:aws:kms:eu-west-1:111122223333:key/" + id + "alias/app" + "team" + "payments" + "owner" + "vendor appliance"
	cut := func(s string) string { i := strings.Index(arena, s); return arena[i : i+len(s)] }
	read := func() *model.Key {
		return &model.Key{ID: cut(id), ARN: cut("arn:aws:kms:eu-west-1:111122223333:key/" + id), Aliases: []string{cut("alias/app")},
			Tags: map[string]string{cut("team"): cut("payments")}, TagValues: []string{cut("payments")},
			Verdict: policy.Verdict{Status: policy.Exempt, Reason: policy.ReasonExemptionTag, ExemptionReason: cut("vendor appliance")}}
	}

	k := compact(read(), nil)
	var kept []string
	kept = append(kept, k.ID, k.ARN, k.Verdict.ExemptionReason)
	kept = append(kept, k.Aliases...)
	kept = append(kept, k.TagValues...)
	for name, v := range k.Tags {
		kept = append(kept, name, v)
	}
	for _, s := range kept {
		if within(s, arena) {
			t.Errorf("the kept key holds %q of the response", s)
		}
	}
	if k.ARN != "arn:aws:kms:eu-west-1:111122223333:key/"+id || k.ID != id || !slices.Equal(k.Aliases, []string{"alias/app"}) ||
		!maps.Equal(k.Tags, map[string]string{"team": "payments"}) || !slices.Equal(k.TagValues, []string{"payments"}) {
		t.Errorf("compact changed the key: %+v", k)
	}

	if unsafe.StringData(k.Tags["team"]) != unsafe.StringData(k.TagValues[0]) {
		t.Error("a tag's value and its label's are two copies")
	}

	again := compact(read(), k)
	if unsafe.StringData(again.ARN) != unsafe.StringData(k.ARN) || &again.Aliases[0] != &k.Aliases[0] ||
		&again.TagValues[0] != &k.TagValues[0] || !sameMap(again.Tags, k.Tags) ||
		unsafe.StringData(again.Verdict.ExemptionReason) != unsafe.StringData(k.Verdict.ExemptionReason) {
		t.Errorf("a key read as it was does not share its previous copy's strings")
	}
}

// sameMap reports whether a and b are the same map (not only equal).
func sameMap(a, b map[string]string) bool {
	return *(*unsafe.Pointer)(unsafe.Pointer(&a)) == *(*unsafe.Pointer)(unsafe.Pointer(&b))
}
