package inventory

import (
	"context"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

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
			Verdict: model.VerdictOf(policy.Verdict{Status: policy.Exempt, Reason: policy.ReasonExemptionTag, ExemptionReason: cut("vendor appliance")})}
	}

	k := compact(read(), nil)
	var kept []string
	kept = append(kept, k.ID, k.ARN, k.Verdict.Get().ExemptionReason)
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
		unsafe.StringData(again.Verdict.Get().ExemptionReason) != unsafe.StringData(k.Verdict.Get().ExemptionReason) {
		t.Errorf("a key read as it was does not share its previous copy's strings")
	}
}

// sameMap reports whether a and b are the same map (not only equal).
func sameMap(a, b map[string]string) bool {
	return *(*unsafe.Pointer)(unsafe.Pointer(&a)) == *(*unsafe.Pointer)(unsafe.Pointer(&b))
}

// paged answers ListKeys and ListAliases with pages; nothing else is called.
type paged struct {
	KMS
	keys    [][]types.KeyListEntry
	aliases [][]types.AliasListEntry
}

func (p *paged) ListKeys(_ context.Context, in *kms.ListKeysInput, _ ...func(*kms.Options)) (*kms.ListKeysOutput, error) {
	keys, next := page(p.keys, in.Marker)
	return &kms.ListKeysOutput{Keys: keys, Truncated: next != nil, NextMarker: next}, nil
}

// page returns the page a marker names (nil: the first) and the next one's
// marker, nil after the last.
func page[T any](pages [][]T, marker *string) ([]T, *string) {
	i := 0
	if marker != nil {
		i, _ = strconv.Atoi(*marker)
	}
	if i+1 < len(pages) {
		return pages[i], aws.String(strconv.Itoa(i + 1))
	}
	return pages[i], nil
}

// The listing gives back every key's id and ARN as listed, over pages,
// those not of the listing's common form too (another partition or
// region, an ARN not ending in the id, none at all), and holds none of the
// responses' memory.
func TestListKeysKeepsEveryKeyAsListed(t *testing.T) {
	const prefix = "arn:aws:kms:eu-west-1:111122223333:key/"
	arena := strings.Repeat("x", 64)
	cut := func(s string) *string {
		i := len(arena)
		arena += s
		return aws.String(arena[i:])
	}
	want := [][2]string{
		{"1234abcd-12ab-34cd-56ef-1234567890ab", prefix + "1234abcd-12ab-34cd-56ef-1234567890ab"},
		{"mrk-1234abcd12ab34cd56ef1234567890ab", prefix + "mrk-1234abcd12ab34cd56ef1234567890ab"},
		{"k-other-region", "arn:aws:kms:us-east-1:111122223333:key/k-other-region"},
		{"k-cn", "arn:aws-cn:kms:cn-north-1:111122223333:key/k-cn"},
		{"k-odd", prefix + "k-different"},
		{"k-no-arn", ""},
		{"k-last", prefix + "k-last"},
	}
	var pages [][]types.KeyListEntry
	for i, k := range want {
		if i%3 == 0 {
			pages = append(pages, nil)
		}
		e := types.KeyListEntry{KeyId: cut(k[0])}
		if k[1] != "" {
			e.KeyArn = cut(k[1])
		}
		pages[len(pages)-1] = append(pages[len(pages)-1], e)
	}
	l, account, err := listKeys(t.Context(), &paged{keys: pages})
	if err != nil {
		t.Fatal(err)
	}
	if account != "111122223333" {
		t.Errorf("account %q, want 111122223333", account)
	}
	if l.len() != len(want) {
		t.Fatalf("%d keys listed, want %d", l.len(), len(want))
	}
	for i, k := range want {
		if id, arn := l.id(i), l.arn(i); id != k[0] || arn != k[1] {
			t.Errorf("key %d: id %q, ARN %q; want %q, %q", i, id, arn, k[0], k[1])
		}
		if within(l.id(i), arena) || within(l.arn(i), arena) {
			t.Errorf("key %d: the listing holds the response's memory", i)
		}
	}
}

// A kept key shows what the key showed, its rotation status and history
// copies of their own: the read they came from can change or go.
func TestKeptKeyHoldsCopies(t *testing.T) {
	k := &model.Key{ID: "k1", Rotation: &policy.Rotation{Enabled: true, PeriodDays: 90},
		History: &policy.History{Automatic: 3, LastType: policy.RotationAutomatic}}
	kept := k.Kept()
	if !kept.Same(k) {
		t.Fatalf("kept %+v, want the same as %+v", kept, k)
	}
	k.Rotation.PeriodDays, k.History.Automatic = 365, 4
	if kept.Rotation.PeriodDays != 90 || kept.History.Automatic != 3 {
		t.Errorf("the kept key changed with the read: period %d, %d automatic rotations", kept.Rotation.PeriodDays, kept.History.Automatic)
	}
	if none := (&model.Key{ID: "k2"}).Kept(); none.Rotation != nil || none.History != nil {
		t.Errorf("a key whose rotation was not read kept %+v, %+v", none.Rotation, none.History)
	}
}

func (p *paged) ListAliases(_ context.Context, in *kms.ListAliasesInput, _ ...func(*kms.Options)) (*kms.ListAliasesOutput, error) {
	aliases, next := page(p.aliases, in.Marker)
	return &kms.ListAliasesOutput{Aliases: aliases, Truncated: next != nil, NextMarker: next}, nil
}

// The alias listing, held through a refresh, holds none of the pages'
// memory: not for a key named on several pages either.
func TestListAliasesHoldsCopies(t *testing.T) {
	arena := strings.Repeat("x", 64) + "k1" + "alias/a" + "k1" + "alias/b" + "k2" + "alias/c"
	cut := func(s string, from int) *string {
		i := strings.Index(arena[from:], s) + from
		return aws.String(arena[i : i+len(s)])
	}
	api := &paged{aliases: [][]types.AliasListEntry{
		{{TargetKeyId: cut("k1", 0), AliasName: cut("alias/a", 0)}},
		{{TargetKeyId: cut("k1", 70), AliasName: cut("alias/b", 0)}, {TargetKeyId: cut("k2", 0), AliasName: cut("alias/c", 0)}},
	}}
	got, _, err := listAliases(t.Context(), api, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string][]string{"k1": {"alias/a", "alias/b"}, "k2": {"alias/c"}}; !maps.EqualFunc(got, want, slices.Equal) {
		t.Fatalf("aliases %v, want %v", got, want)
	}
	for id, names := range got {
		if within(id, arena) {
			t.Errorf("key id %q is the page's memory", id)
		}
		for _, n := range names {
			if within(n, arena) {
				t.Errorf("alias %q of %s is the page's memory", n, id)
			}
		}
	}
}
