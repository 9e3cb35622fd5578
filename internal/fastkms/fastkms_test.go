package fastkms

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"math"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"

	"github.com/kms-exporter/kms_exporter/awsclient"
	"github.com/kms-exporter/kms_exporter/internal/harness"
	"github.com/kms-exporter/kms_exporter/inventory"
	"github.com/kms-exporter/kms_exporter/model"
	"github.com/kms-exporter/kms_exporter/policy"
)

const region = "eu-west-1"

func start(t *testing.T, n int) (*Server, *kms.Client) {
	t.Helper()
	s, err := Start(n, Options{Region: region})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	c := kms.New(kms.Options{Region: region, BaseEndpoint: aws.String(s.URL),
		Credentials: credentials.NewStaticCredentialsProvider("x", "x", "")})
	return s, c
}

// first returns the index of the first key of a class.
func first(c class) int {
	for i := 0; ; i++ {
		if classOf(i) == c {
			return i
		}
	}
}

var uuid = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestKeyIDs(t *testing.T) {
	const n = 100000
	h := New(n, Options{})
	seen := make(map[string]bool, n)
	for i := range n {
		id := KeyID(i)
		if !uuid.MatchString(id) {
			t.Fatalf("key %d: id %q is not shaped like a UUID", i, id)
		}
		if seen[id] {
			t.Fatalf("key %d: id %q given twice", i, id)
		}
		seen[id] = true
		if got, ok := h.index(id); !ok || got != i {
			t.Fatalf("id %q of key %d maps back to %d, %v", id, i, got, ok)
		}
		if got, ok := h.index(h.ARN(i)); !ok || got != i {
			t.Fatalf("ARN of key %d maps back to %d, %v", i, got, ok)
		}
	}
	for _, id := range []string{KeyID(n), KeyID(n + 1234567), "",
		strings.Replace(KeyID(7), KeyID(7)[:8], "00000000", 1), strings.ToUpper(KeyID(7)),
		"arn:aws:kms:us-east-1:111122223333:key/" + KeyID(7), "arn:aws:kms:eu-west-1:444455556666:key/" + KeyID(7)} {
		if i, ok := h.index(id); ok {
			t.Errorf("id %q is not of the inventory, yet maps to key %d", id, i)
		}
	}
}

func TestExpected(t *testing.T) {
	for _, n := range []int{0, 1, 99, 100, 101, 5000, 123457} {
		want := map[string]int{}
		for _, s := range policy.Statuses {
			want[string(s)] = 0
		}
		for i := range n {
			want[string(statusOf[classOf(i)])]++
		}
		if got := Expected(n); !maps.Equal(got, want) {
			t.Errorf("Expected(%d) = %v, counting key by key gives %v", n, got, want)
		}
	}
	got := Expected(1000000)
	want := map[string]int{"compliant": 800000, "noncompliant": 100000, "exempt": 10000, "not_applicable": 90000, "unknown": 0}
	if !maps.Equal(got, want) {
		t.Errorf("Expected(1000000) = %v, want %v (the mix of the package comment)", got, want)
	}
}

func TestListKeys(t *testing.T) {
	const n = 2500
	s, c := start(t, n)
	seen := map[string]bool{}
	pages := 0
	p := kms.NewListKeysPaginator(c, &kms.ListKeysInput{Limit: aws.Int32(1000)})
	for p.HasMorePages() {
		page, err := p.NextPage(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, k := range page.Keys {
			id := aws.ToString(k.KeyId)
			if seen[id] {
				t.Fatalf("key %s listed twice", id)
			}
			seen[id] = true
			if want := "arn:aws:kms:" + region + ":" + Account + ":key/" + id; aws.ToString(k.KeyArn) != want {
				t.Errorf("key %s: ARN %q, want %q", id, aws.ToString(k.KeyArn), want)
			}
		}
	}
	if len(seen) != n {
		t.Errorf("listed %d distinct keys, want %d", len(seen), n)
	}
	// Pages, not calls: the SDK now and then retries a page it failed to
	// read ("use of closed network connection", not root-caused), which the
	// fake counts as a call.
	if pages != 3 || s.Calls()["ListKeys"] < 3 {
		t.Errorf("%d pages (%d ListKeys calls) for %d keys at 1000 a page, want 3", pages, s.Calls()["ListKeys"], n)
	}
}

func TestListAliases(t *testing.T) {
	const n = 1001
	s, c := start(t, n)
	withTarget, without := 0, 0
	p := kms.NewListAliasesPaginator(c, &kms.ListAliasesInput{Limit: aws.Int32(100)})
	for p.HasMorePages() {
		page, err := p.NextPage(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range page.Aliases {
			name := aws.ToString(a.AliasName)
			if want := "arn:aws:kms:" + region + ":" + Account + ":" + name; aws.ToString(a.AliasArn) != want {
				t.Errorf("alias %s: ARN %q, want %q", name, aws.ToString(a.AliasArn), want)
			}
			if a.TargetKeyId == nil {
				without++
				if !strings.HasPrefix(name, "alias/aws/") {
					t.Errorf("alias %s has no target key", name)
				}
				continue
			}
			withTarget++
			i, ok := s.index(aws.ToString(a.TargetKeyId))
			if !ok || !hasAlias(i) || name != string(appendAliasName(nil, i)) {
				t.Errorf("alias %s names key %s (index %d, %v), which has no such alias", name, aws.ToString(a.TargetKeyId), i, ok)
			}
		}
	}
	want := 0
	for i := range n {
		if hasAlias(i) {
			want++
		}
	}
	if withTarget != want || without != len(predefined) {
		t.Errorf("listed %d aliases of keys and %d without target, want %d and %d", withTarget, without, want, len(predefined))
	}
	if want >= n/4 {
		t.Errorf("%d aliases for %d keys: AWS-managed keys should have none of the service aliases", want, n)
	}
	// Filtered by key.
	i := first(rotating) * 4
	for !hasAlias(i) {
		i += 4
	}
	out, err := c.ListAliases(context.Background(), &kms.ListAliasesInput{KeyId: aws.String(KeyID(i))})
	if err != nil || len(out.Aliases) != 1 || aws.ToString(out.Aliases[0].AliasName) != string(appendAliasName(nil, i)) {
		t.Errorf("aliases of key %d: %+v, %v", i, out, err)
	}
	out, err = c.ListAliases(context.Background(), &kms.ListAliasesInput{KeyId: aws.String(s.ARN(i + 1))})
	if err != nil || len(out.Aliases) != 0 || out.Truncated {
		t.Errorf("aliases of key %d, which has none: %+v, %v", i+1, out, err)
	}
	var nf *types.NotFoundException
	if _, err = c.ListAliases(context.Background(), &kms.ListAliasesInput{KeyId: aws.String(KeyID(n))}); !errors.As(err, &nf) {
		t.Errorf("aliases of a key not in the inventory: %v, want NotFoundException", err)
	}
}

func TestDescribeKey(t *testing.T) {
	s, c := start(t, 10000)
	ctx := context.Background()
	for _, tc := range []struct {
		class                      class
		spec, usage, state, origin string
		manager                    types.KeyManagerType
	}{
		{rotating, "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", "Enabled", "AWS_KMS", types.KeyManagerTypeCustomer},
		{rsaSign, "RSA_2048", "SIGN_VERIFY", "Enabled", "AWS_KMS", types.KeyManagerTypeCustomer},
		{eccK1Sign, "ECC_SECG_P256K1", "SIGN_VERIFY", "Enabled", "AWS_KMS", types.KeyManagerTypeCustomer},
		{disabledOff, "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", "Disabled", "AWS_KMS", types.KeyManagerTypeCustomer},
		{pendingDeletion, "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", "PendingDeletion", "AWS_KMS", types.KeyManagerTypeCustomer},
		{external, "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", "Enabled", "EXTERNAL", types.KeyManagerTypeCustomer},
		{awsManaged, "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", "Enabled", "AWS_KMS", types.KeyManagerTypeAws},
	} {
		i := first(tc.class)
		for _, ref := range []string{KeyID(i), s.ARN(i)} {
			out, err := c.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(ref)})
			if err != nil {
				t.Fatalf("DescribeKey %s: %v", ref, err)
			}
			m := out.KeyMetadata
			if aws.ToString(m.KeyId) != KeyID(i) || aws.ToString(m.Arn) != s.ARN(i) || aws.ToString(m.AWSAccountId) != Account {
				t.Errorf("key %d by %s: id %s, ARN %s, account %s", i, ref, aws.ToString(m.KeyId), aws.ToString(m.Arn), aws.ToString(m.AWSAccountId))
			}
			if string(m.KeySpec) != tc.spec || string(m.CustomerMasterKeySpec) != tc.spec || string(m.KeyUsage) != tc.usage || //nolint:staticcheck // AWS still returns it
				string(m.KeyState) != tc.state || string(m.Origin) != tc.origin || m.KeyManager != tc.manager {
				t.Errorf("key %d (class %d): spec %s, usage %s, state %s, origin %s, manager %s; want %+v",
					i, tc.class, m.KeySpec, m.KeyUsage, m.KeyState, m.Origin, m.KeyManager, tc)
			}
			if m.Enabled != (tc.state == "Enabled") || aws.ToBool(m.MultiRegion) {
				t.Errorf("key %d: Enabled %v, MultiRegion %v", i, m.Enabled, aws.ToBool(m.MultiRegion))
			}
			if created := aws.ToTime(m.CreationDate); created.Year() < 2019 || !created.Before(time.Now()) {
				t.Errorf("key %d: created %s", i, created)
			}
			if deletion := aws.ToTime(m.DeletionDate); (tc.state == "PendingDeletion") != deletion.After(time.Now()) {
				t.Errorf("key %d in state %s: deletion date %s", i, tc.state, deletion)
			}
			if (tc.usage == "ENCRYPT_DECRYPT") != (len(m.EncryptionAlgorithms) > 0) || (tc.usage == "SIGN_VERIFY") != (len(m.SigningAlgorithms) > 0) {
				t.Errorf("key %d for %s: encryption %v, signing %v", i, tc.usage, m.EncryptionAlgorithms, m.SigningAlgorithms)
			}
			// Symmetric keys report their current key material.
			if got, want := aws.ToString(m.CurrentKeyMaterialId), MaterialID(i, len(s.History(i))); (tc.spec == "SYMMETRIC_DEFAULT") != (got != "") ||
				(got != "" && (got != want || !hex64.MatchString(got))) {
				t.Errorf("key %d (%s): CurrentKeyMaterialId %q, want %q for symmetric keys only", i, tc.spec, got, want)
			}
		}
	}
	i := first(rotating)
	for !hasAlias(i) {
		i++
	}
	out, err := c.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(string(appendAliasName(nil, i)))})
	if err != nil || aws.ToString(out.KeyMetadata.KeyId) != KeyID(i) {
		t.Errorf("DescribeKey by alias of key %d: %+v, %v", i, out, err)
	}
	if got := s.Calls()["DescribeKey"]; got != 15 {
		t.Errorf("%d DescribeKey calls counted, want 15", got)
	}
}

var hex64 = regexp.MustCompile(`^[0-9a-f]{64}$`)

// listRotations reads every page of a key's rotations through the SDK.
func listRotations(t *testing.T, c *kms.Client, key string, include types.IncludeKeyMaterial, limit int32) []types.RotationsListEntry {
	t.Helper()
	var all []types.RotationsListEntry
	p := kms.NewListKeyRotationsPaginator(c, &kms.ListKeyRotationsInput{KeyId: aws.String(key), IncludeKeyMaterial: include, Limit: aws.Int32(limit)})
	for p.HasMorePages() {
		page, err := p.NextPage(context.Background())
		if err != nil {
			t.Fatalf("ListKeyRotations %s: %v", key, err)
		}
		if len(page.Rotations) > int(limit) {
			t.Fatalf("%d rotations on a page of %d", len(page.Rotations), limit)
		}
		all = append(all, page.Rotations...)
	}
	return all
}

// TestListKeyRotations: a key's rotations, oldest first, each with its
// date, type and material (the last CURRENT, the one DescribeKey reports),
// the same on every call and across pages; the automatic ones a period
// apart from the key's creation, the next rotation date a period after the
// last; with ALL_KEY_MATERIAL the first material too, without a date.
func TestListKeyRotations(t *testing.T) {
	const n = 10000
	s, c := start(t, n)
	// A rotating key with automatic and on-demand rotations.
	i := first(rotating)
	for ; i < n; i += 100 {
		if h := s.History(i); len(h) > 3 && onDemand(i, rotating) > 0 && s.automatic(i, rotating) > 1 {
			break
		}
	}
	if i >= n {
		t.Fatal("no rotating key with automatic and on-demand rotations")
	}
	id := KeyID(i)
	got := listRotations(t, c, id, "", 1000)
	paged := listRotations(t, c, s.ARN(i), "", 2)
	if len(got) != len(s.History(i)) || len(got) != s.automatic(i, rotating)+onDemand(i, rotating) {
		t.Fatalf("key %d: %d rotations listed, history of %d", i, len(got), len(s.History(i)))
	}
	created := s.creation(i)
	seen := map[string]bool{MaterialID(i, 0): true}
	var last time.Time
	automatic := 0
	for e, r := range got {
		at := aws.ToTime(r.RotationDate)
		mat := aws.ToString(r.KeyMaterialId)
		if aws.ToString(r.KeyId) != id || !hex64.MatchString(mat) || seen[mat] || at.Before(last) {
			t.Errorf("entry %d: key %s, material %s (seen %v), at %s after %s", e, aws.ToString(r.KeyId), mat, seen[mat], at, last)
		}
		seen[mat], last = true, at
		state := types.KeyMaterialStateNonCurrent
		if e == len(got)-1 {
			state = types.KeyMaterialStateCurrent
		}
		if r.KeyMaterialState != state {
			t.Errorf("entry %d of %d: %s", e, len(got), r.KeyMaterialState)
		}
		switch r.RotationType {
		case types.RotationTypeAutomatic:
			automatic++
			if want := created + float64(automatic)*365*86400; at.UnixMilli() != int64(math.Round(want*1000)) {
				t.Errorf("automatic rotation %d at %s, want %d periods after the creation", automatic, at, automatic)
			}
		case types.RotationTypeOnDemand:
			if at.Before(time.Unix(int64(created), 0)) || at.After(time.Now()) {
				t.Errorf("on-demand rotation at %s", at)
			}
		default:
			t.Errorf("entry %d: rotation type %q", e, r.RotationType)
		}
		if p := paged[e]; aws.ToString(p.KeyMaterialId) != mat || !aws.ToTime(p.RotationDate).Equal(at) || p.RotationType != r.RotationType {
			t.Errorf("entry %d read in pages of 2: %+v, in one: %+v", e, p, r)
		}
	}
	d, err := c.DescribeKey(context.Background(), &kms.DescribeKeyInput{KeyId: aws.String(id)})
	if err != nil {
		t.Fatal(err)
	}
	if cur := aws.ToString(d.KeyMetadata.CurrentKeyMaterialId); cur != aws.ToString(got[len(got)-1].KeyMaterialId) {
		t.Errorf("CurrentKeyMaterialId %s, the last material listed %s", cur, aws.ToString(got[len(got)-1].KeyMaterialId))
	}
	var lastAutomatic time.Time
	for _, r := range got {
		if r.RotationType == types.RotationTypeAutomatic {
			lastAutomatic = aws.ToTime(r.RotationDate)
		}
	}
	if _, _, next := rotationOf(t, c, id); !next.Equal(lastAutomatic.AddDate(0, 0, 365)) {
		t.Errorf("next rotation %s, want a period after the last automatic one (%s)", next, lastAutomatic.AddDate(0, 0, 365))
	}
	all := listRotations(t, c, id, types.IncludeKeyMaterialAllKeyMaterial, 3)
	if len(all) != len(got)+1 || all[0].RotationDate != nil || all[0].RotationType != "" || aws.ToString(all[0].KeyMaterialId) != MaterialID(i, 0) ||
		aws.ToString(all[1].KeyMaterialId) != aws.ToString(got[0].KeyMaterialId) {
		t.Errorf("ALL_KEY_MATERIAL: %d entries, first %+v; want the first material, then the %d rotations", len(all), all[0], len(got))
	}

	// A key of the same kind never rotated: a young one.
	for j := first(rotationOff); j < n; j += 100 {
		if onDemand(j, rotationOff) == 0 {
			if got := listRotations(t, c, KeyID(j), "", 100); len(got) != 0 {
				t.Errorf("key %d never rotated lists %d rotations", j, len(got))
			}
			if all := listRotations(t, c, KeyID(j), types.IncludeKeyMaterialAllKeyMaterial, 100); len(all) != 1 ||
				all[0].KeyMaterialState != types.KeyMaterialStateCurrent {
				t.Errorf("key %d never rotated, ALL_KEY_MATERIAL: %+v", j, all)
			}
			break
		}
	}
	// Imported material: its one material, imported.
	ext := listRotations(t, c, KeyID(first(external)), types.IncludeKeyMaterialAllKeyMaterial, 100)
	if len(ext) != 1 || ext[0].ImportState != types.ImportStateImported || ext[0].ExpirationModel != types.ExpirationModelTypeKeyMaterialDoesNotExpire {
		t.Errorf("EXTERNAL key: %+v", ext)
	}
}

func TestListKeyRotationsErrors(t *testing.T) {
	s, c := start(t, 1000)
	ctx := context.Background()
	id := KeyID(first(rotating))
	for _, tc := range []struct {
		name string
		in   kms.ListKeyRotationsInput
		want string
	}{
		{"unknown key", kms.ListKeyRotationsInput{KeyId: aws.String(KeyID(1000))}, "NotFoundException"},
		{"asymmetric", kms.ListKeyRotationsInput{KeyId: aws.String(KeyID(first(rsaSign)))}, "UnsupportedOperationException"},
		{"limit 0", kms.ListKeyRotationsInput{KeyId: &id, Limit: aws.Int32(0)}, "ValidationException"},
		{"limit 1001", kms.ListKeyRotationsInput{KeyId: &id, Limit: aws.Int32(1001)}, "ValidationException"},
		{"include other", kms.ListKeyRotationsInput{KeyId: &id, IncludeKeyMaterial: "X"}, "ValidationException"},
		{"bad marker", kms.ListKeyRotationsInput{KeyId: &id, Marker: aws.String("x")}, "InvalidMarkerException"},
	} {
		_, err := c.ListKeyRotations(ctx, &tc.in)
		var ae smithy.APIError
		if !errors.As(err, &ae) || ae.ErrorCode() != tc.want {
			t.Errorf("%s: %v, want %s", tc.name, err, tc.want)
		}
	}
	if got := s.Calls()["ListKeyRotations"]; got != 6 {
		t.Errorf("%d ListKeyRotations counted, want 6", got)
	}
}

// TestRotationHistoryMix: read by the exporter, the inventory holds keys
// never rotated, keys rotated automatically only, on demand only, both, and
// keys that used up their 25 on-demand rotations; none more.
func TestRotationHistoryMix(t *testing.T) {
	const n = 5000
	s, _ := start(t, n)
	kinds := map[string]int{}
	for _, k := range audit(t, s) {
		h := k.RotationHistory()
		if h == nil {
			continue
		}
		kind := "never"
		switch {
		case h.OnDemand > MaxOnDemandRotations:
			t.Errorf("key %s: %d on-demand rotations", k.ID, h.OnDemand)
		case h.OnDemand == MaxOnDemandRotations:
			kind = "limit"
		case h.Automatic > 0 && h.OnDemand > 0:
			kind = "both"
		case h.Automatic > 0:
			kind = "automatic"
		case h.OnDemand > 0:
			kind = "on demand"
		}
		kinds[kind]++
		i, _ := s.index(k.ID)
		if want := s.History(i); len(want) > 0 && !h.LastRotation.Equal(time.UnixMilli(int64(math.Round(want[len(want)-1].At*1000)))) {
			t.Errorf("key %d: last rotation %s, want %v", i, h.LastRotation, want[len(want)-1])
		}
	}
	for _, kind := range []string{"never", "automatic", "on demand", "both", "limit"} {
		if kinds[kind] == 0 {
			t.Errorf("no key rotated %s among %d: %v", kind, n, kinds)
		}
	}
	if calls := s.Calls(); calls["ListKeyRotations"] == 0 || calls["other"] != 0 {
		t.Errorf("calls: %v", calls)
	}
}

func TestRotationStatus(t *testing.T) {
	s, c := start(t, 10000)
	now := time.Now()
	for _, tc := range []struct {
		class   class
		enabled bool
		period  int32
		next    bool
	}{
		{rotating, true, 365, true},
		{longPeriod, true, 730, true},
		{rotationOff, false, 0, false},
		{exempt, false, 0, false},
		{disabledRotating, true, 365, false},
		{disabledOff, false, 0, false},
		{pendingDeletion, false, 0, false},
		{awsManaged, true, 365, true},
	} {
		i := first(tc.class)
		out, err := c.GetKeyRotationStatus(context.Background(), &kms.GetKeyRotationStatusInput{KeyId: aws.String(KeyID(i))})
		if err != nil {
			t.Fatalf("key %d (class %d): %v", i, tc.class, err)
		}
		next := aws.ToTime(out.NextRotationDate)
		if out.KeyRotationEnabled != tc.enabled || aws.ToInt32(out.RotationPeriodInDays) != tc.period || !next.IsZero() != tc.next ||
			aws.ToString(out.KeyId) != s.ARN(i) {
			t.Errorf("key %d (class %d): enabled %v, period %d, next %s, key %s; want %+v",
				i, tc.class, out.KeyRotationEnabled, aws.ToInt32(out.RotationPeriodInDays), next, aws.ToString(out.KeyId), tc)
		}
		if tc.next && (!next.After(now) || next.After(now.AddDate(0, 0, int(tc.period)))) {
			t.Errorf("key %d: next rotation %s is not within one period from now", i, next)
		}
	}
}

func TestErrors(t *testing.T) {
	const n = 1000
	_, c := start(t, n)
	ctx := context.Background()
	for _, id := range []string{KeyID(n), "6f1f8a52-0c1e-4d0a-9b6e-0123456789ab", "not-a-key", "alias/service-1/key-1"} {
		_, err := c.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(id)})
		var nf *types.NotFoundException
		if !errors.As(err, &nf) || !strings.Contains(nf.ErrorMessage(), id) {
			t.Errorf("DescribeKey %q: %v, want NotFoundException naming the key", id, err)
		}
		_, err = c.ListResourceTags(ctx, &kms.ListResourceTagsInput{KeyId: aws.String(id)})
		if !errors.As(err, &nf) {
			t.Errorf("ListResourceTags %q: %v, want NotFoundException", id, err)
		}
	}
	for _, cl := range []class{rsaEncrypt, eccSign, external} {
		_, err := c.GetKeyRotationStatus(ctx, &kms.GetKeyRotationStatusInput{KeyId: aws.String(KeyID(first(cl)))})
		var uo *types.UnsupportedOperationException
		if !errors.As(err, &uo) {
			t.Errorf("GetKeyRotationStatus of a key of class %d: %v, want UnsupportedOperationException", cl, err)
		}
	}
	_, err := c.ListKeys(ctx, &kms.ListKeysInput{Marker: aws.String("x")})
	var im *types.InvalidMarkerException
	if !errors.As(err, &im) {
		t.Errorf("ListKeys with a bad marker: %v, want InvalidMarkerException", err)
	}
	_, err = c.ListKeys(ctx, &kms.ListKeysInput{Limit: aws.Int32(1001)})
	var ae smithy.APIError
	if !errors.As(err, &ae) || ae.ErrorCode() != "ValidationException" {
		t.Errorf("ListKeys with Limit 1001: %v, want ValidationException", err)
	}
}

func TestTags(t *testing.T) {
	_, c := start(t, 1000)
	tags := func(i int) map[string]string {
		out, err := c.ListResourceTags(context.Background(), &kms.ListResourceTagsInput{KeyId: aws.String(KeyID(i))})
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]string{}
		for _, tag := range out.Tags {
			m[aws.ToString(tag.TagKey)] = aws.ToString(tag.TagValue)
		}
		return m
	}
	if m := tags(first(rotationOff)); len(m) != 1 || m["service"] == "" {
		t.Errorf("tags of a key without exemption: %v", m)
	}
	m := tags(first(exempt))
	until, err := policy.ParseExemptionUntil(m["kms-rotation-exempt-until"])
	if m["kms-rotation-exempt"] == "" || err != nil || !until.After(time.Now()) {
		t.Errorf("tags of an exempt key: %v", m)
	}
	m = tags(first(exemptExpired))
	until, err = policy.ParseExemptionUntil(m["kms-rotation-exempt-until"])
	if m["kms-rotation-exempt"] == "" || err != nil || until.After(time.Now()) {
		t.Errorf("tags of a key whose exemption expired: %v", m)
	}
}

// TestAudit runs the exporter's audit against the fake: its verdicts must be
// the ones Expected promises.
func TestAudit(t *testing.T) {
	const n = 5000
	s, _ := start(t, n)
	got := map[string]int{}
	for _, st := range policy.Statuses {
		got[string(st)] = 0
	}
	for _, k := range audit(t, s) {
		got[string(k.Verdict.Get().Status)]++
	}
	if want := Expected(n); !maps.Equal(got, want) {
		t.Errorf("audit of %d keys: %v, want %v", n, got, want)
	}
	if other := s.Calls()["other"]; other != 0 {
		t.Errorf("%d calls of operations the fake does not know", other)
	}
}

// audit runs the exporter's audit of the fake's keys, by id.
func audit(t *testing.T, s *Server) map[string]*model.Key {
	t.Helper()
	f := awsclient.NewFactory(aws.Config{Region: region, BaseEndpoint: aws.String(s.URL),
		Credentials: credentials.NewStaticCredentialsProvider("x", "x", "")},
		awsclient.Options{MaxConcurrency: 16, MaxAttempts: 3, Timeout: 30 * time.Second})
	a := &inventory.Auditor{Policy: policy.Policy{MaxRotationPeriodDays: 365, ExemptionTag: "kms-rotation-exempt"}, Workers: 16, Now: time.Now}
	account, keys, err := a.Audit(context.Background(), inventory.Target{Region: region, API: f.KMS(awsclient.Role{}, region)})
	if err != nil {
		t.Fatal(err)
	}
	if account != Account {
		t.Errorf("account %q, want %q", account, Account)
	}
	byID := make(map[string]*model.Key, len(keys))
	for _, k := range keys {
		byID[k.ID] = k
	}
	return byID
}

// rotationOf reads a key's rotation status through the SDK.
func rotationOf(t *testing.T, c *kms.Client, key string) (enabled bool, period int32, next time.Time) {
	t.Helper()
	out, err := c.GetKeyRotationStatus(context.Background(), &kms.GetKeyRotationStatusInput{KeyId: aws.String(key)})
	if err != nil {
		t.Fatalf("GetKeyRotationStatus %s: %v", key, err)
	}
	return out.KeyRotationEnabled, aws.ToInt32(out.RotationPeriodInDays), aws.ToTime(out.NextRotationDate)
}

// changeRotation calls EnableKeyRotation (enable, with the period if not
// nil) or DisableKeyRotation.
func changeRotation(c *kms.Client, enable bool, key string, period *int32) error {
	ctx := context.Background()
	if enable {
		_, err := c.EnableKeyRotation(ctx, &kms.EnableKeyRotationInput{KeyId: aws.String(key), RotationPeriodInDays: period})
		return err
	}
	_, err := c.DisableKeyRotation(ctx, &kms.DisableKeyRotationInput{KeyId: aws.String(key)})
	return err
}

// TestRotationChanges: EnableKeyRotation and DisableKeyRotation change the
// setting of the key they name (by id or ARN) and no other; enabling sets the
// period asked for, 365 days without one, and the next rotation a period
// from now.
func TestRotationChanges(t *testing.T) {
	s, c := start(t, 1000)
	i, off := first(rotating), first(rotationOff)
	if err := changeRotation(c, false, KeyID(i), nil); err != nil {
		t.Fatal(err)
	}
	if on, period, next := rotationOf(t, c, KeyID(i)); on || period != 0 || !next.IsZero() {
		t.Errorf("after DisableKeyRotation: enabled %v, period %d, next %s", on, period, next)
	}
	if on, period, _ := rotationOf(t, c, KeyID(i+100)); !on || period != 365 {
		t.Errorf("key %d of the same class changed too: enabled %v, period %d", i+100, on, period)
	}
	for _, tc := range []struct {
		key    string
		period *int32
		want   int32
	}{
		{s.ARN(i), aws.Int32(180), 180},
		{KeyID(i), nil, 365},
		{KeyID(off), aws.Int32(2560), 2560},
	} {
		if err := changeRotation(c, true, tc.key, tc.period); err != nil {
			t.Fatalf("EnableKeyRotation %s: %v", tc.key, err)
		}
		on, period, next := rotationOf(t, c, tc.key)
		want := time.Now().AddDate(0, 0, int(tc.want))
		if !on || period != tc.want || next.Before(want.Add(-time.Minute)) || next.After(want) {
			t.Errorf("after EnableKeyRotation %s (period %v): enabled %v, period %d, next %s; want %d days, next about %s",
				tc.key, aws.ToInt32(tc.period), on, period, next, tc.want, want)
		}
	}
	calls := s.Calls()
	if calls["EnableKeyRotation"] != 3 || calls["DisableKeyRotation"] != 1 || calls["other"] != 0 {
		t.Errorf("calls counted: %v, want 3 EnableKeyRotation and 1 DisableKeyRotation", calls)
	}
}

// TestRotationChangeErrors: keys that cannot have their rotation changed
// answer as AWS does, and keep their setting.
func TestRotationChangeErrors(t *testing.T) {
	const n = 1000
	_, c := start(t, n)
	change := func(enable bool, key string, period *int32) error { return changeRotation(c, enable, key, period) }
	for _, tc := range []struct {
		key  string
		code string
	}{
		{KeyID(first(rsaEncrypt)), "UnsupportedOperationException"},
		{KeyID(first(eccK1Sign)), "UnsupportedOperationException"},
		{KeyID(first(external)), "UnsupportedOperationException"},
		{KeyID(first(disabledRotating)), "DisabledException"},
		{KeyID(first(disabledOff)), "DisabledException"},
		{KeyID(first(pendingDeletion)), "KMSInvalidStateException"},
		{KeyID(first(awsManaged)), "AccessDeniedException"},
		{KeyID(n), "NotFoundException"},
		{"6f1f8a52-0c1e-4d0a-9b6e-0123456789ab", "NotFoundException"},
	} {
		for _, enable := range []bool{true, false} {
			err := change(enable, tc.key, nil)
			var ae smithy.APIError
			if !errors.As(err, &ae) || ae.ErrorCode() != tc.code {
				t.Errorf("enable %v of %s: %v, want %s", enable, tc.key, err, tc.code)
			}
		}
	}
	// The SDK's types for the codes it knows.
	var de *types.DisabledException
	if err := change(true, KeyID(first(disabledOff)), nil); !errors.As(err, &de) {
		t.Errorf("EnableKeyRotation of a disabled key: %v, want DisabledException", err)
	}
	var ise *types.KMSInvalidStateException
	if err := change(false, KeyID(first(pendingDeletion)), nil); !errors.As(err, &ise) {
		t.Errorf("DisableKeyRotation of a key pending deletion: %v, want KMSInvalidStateException", err)
	}
	i := first(rotating)
	for _, p := range []int32{89, 2561} {
		var ae smithy.APIError
		if err := change(true, KeyID(i), aws.Int32(p)); !errors.As(err, &ae) || ae.ErrorCode() != "ValidationException" {
			t.Errorf("EnableKeyRotation with a period of %d days: %v, want ValidationException", p, err)
		}
	}
	if on, period, _ := rotationOf(t, c, KeyID(i)); !on || period != 365 {
		t.Errorf("a refused period changed the setting: enabled %v, period %d", on, period)
	}
	if on, period, _ := rotationOf(t, c, KeyID(first(disabledRotating))); !on || period != 365 {
		t.Errorf("a refused change of a disabled key changed it: enabled %v, period %d", on, period)
	}
}

// TestRotationChangeVerdicts: the exporter's audit sees the changes.
func TestRotationChangeVerdicts(t *testing.T) {
	s, c := start(t, 1000)
	on, off := first(rotating), first(rotationOff)
	if err := changeRotation(c, false, KeyID(on), nil); err != nil {
		t.Fatal(err)
	}
	if err := changeRotation(c, true, KeyID(off), nil); err != nil {
		t.Fatal(err)
	}
	keys := audit(t, s)
	for _, tc := range []struct {
		i      int
		status policy.Status
	}{{on, policy.Noncompliant}, {off, policy.Compliant}, {on + 100, policy.Compliant}, {off + 100, policy.Noncompliant}} {
		if k := keys[KeyID(tc.i)]; k == nil || k.Verdict.Get().Status != tc.status {
			t.Errorf("key %d: %+v, want %s", tc.i, k, tc.status)
		}
	}
}

// TestRotationChangesCLI disables and enables rotation with Debian's AWS CLI.
func TestRotationChangesCLI(t *testing.T) {
	s, _ := start(t, 1000)
	id := KeyID(first(rotating))
	enabled := func() bool {
		var out struct{ KeyRotationEnabled *bool }
		if err := json.Unmarshal(harness.AWSCLI(t, s.URL, region, "kms", "get-key-rotation-status", "--key-id", id), &out); err != nil || out.KeyRotationEnabled == nil {
			t.Fatalf("get-key-rotation-status: %+v, %v", out, err)
		}
		return *out.KeyRotationEnabled
	}
	harness.AWSCLI(t, s.URL, region, "kms", "disable-key-rotation", "--key-id", id)
	if enabled() {
		t.Error("rotation still enabled after aws kms disable-key-rotation")
	}
	harness.AWSCLI(t, s.URL, region, "kms", "enable-key-rotation", "--key-id", s.ARN(first(rotating)))
	if !enabled() {
		t.Error("rotation still disabled after aws kms enable-key-rotation")
	}
	if calls := s.Calls(); calls["EnableKeyRotation"] != 1 || calls["DisableKeyRotation"] != 1 {
		t.Errorf("calls counted: %v", calls)
	}
}

// discard is a ResponseWriter that keeps nothing.
type discard struct{ header http.Header }

func (d *discard) Header() http.Header         { return d.header }
func (d *discard) Write(p []byte) (int, error) { return len(p), nil }
func (d *discard) WriteHeader(int)             {}

// BenchmarkHandler measures the fake's own cost per call, without HTTP:
// what it adds to a call of the audit.
func BenchmarkHandler(b *testing.B) {
	const n = 1000000
	h := New(n, Options{})
	for _, tc := range []struct {
		op   string
		body func(i int) string
	}{
		{"DescribeKey", func(i int) string { return `{"KeyId":"` + KeyID(i) + `"}` }},
		{"GetKeyRotationStatus", func(i int) string { return `{"KeyId":"` + KeyID(first(rotating)+100*i) + `"}` }},
		{"ListResourceTags", func(i int) string { return `{"KeyId":"` + KeyID(first(exempt)+100*i) + `"}` }},
		{"ListKeyRotations", func(i int) string { return `{"KeyId":"` + KeyID(first(rotating)+100*i) + `","Limit":1000}` }},
		{"ListKeys", func(i int) string { return `{"Limit":1000,"Marker":"` + strconv.Itoa(1000*i) + `"}` }},
		{"ListAliases", func(i int) string { return `{"Limit":100,"Marker":"` + strconv.Itoa(100*i) + `"}` }},
	} {
		b.Run(tc.op, func(b *testing.B) {
			bodies := make([]string, 500)
			for i := range bodies {
				bodies[i] = tc.body(i)
			}
			r := httptest.NewRequest(http.MethodPost, "/", nil)
			r.Header.Set("X-Amz-Target", "TrentService."+tc.op)
			w := &discard{header: http.Header{}}
			var body strings.Reader
			r.Body = io.NopCloser(&body)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				body.Reset(bodies[i%len(bodies)])
				i++
				h.ServeHTTP(w, r)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "calls/s")
		})
	}
}
