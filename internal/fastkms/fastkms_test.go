package fastkms

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"maps"
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
		got[string(k.Verdict.Status)]++
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
		if k := keys[KeyID(tc.i)]; k == nil || k.Verdict.Status != tc.status {
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
