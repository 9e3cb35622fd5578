package kmstest

import (
	"context"
	"errors"
	"net/http"
	"regexp"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"
	"github.com/kms-exporter/kms_exporter/internal/harness"
)

const day = 24 * time.Hour

// rotationSetup is local-kms seeded with MixedInventory behind a proxy on a
// test clock, and an SDK client of the proxy that tries each call once (the
// SDK would retry LimitExceededException, a throttle code to it).
type rotationSetup struct {
	proxy *Proxy
	clock *harness.Clock
	c     *kms.Client
	ids   map[string]string
	ctx   context.Context
}

var start = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func newRotationSetup(t *testing.T) *rotationSetup {
	t.Helper()
	srv, ids := StartMixedT(t, "eu-west-1")
	p := NewProxy(t, srv.URL)
	clk := harness.NewClock(start)
	p.SetClock(clk.Now)
	c := kms.New(kms.Options{Region: "eu-west-1", BaseEndpoint: aws.String(p.URL), RetryMaxAttempts: 1,
		Credentials: credentials.NewStaticCredentialsProvider("test", "test", "")})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return &rotationSetup{proxy: p, clock: clk, c: c, ids: ids, ctx: ctx}
}

func (s *rotationSetup) newKey(t *testing.T) string {
	t.Helper()
	out, err := s.c.CreateKey(s.ctx, &kms.CreateKeyInput{})
	if err != nil {
		t.Fatal(err)
	}
	return aws.ToString(out.KeyMetadata.KeyId)
}

// rotatingKey creates a key whose automatic rotation is on, every days.
func (s *rotationSetup) rotatingKey(t *testing.T, days int32) string {
	t.Helper()
	id := s.newKey(t)
	if _, err := s.c.EnableKeyRotation(s.ctx, &kms.EnableKeyRotationInput{KeyId: &id, RotationPeriodInDays: aws.Int32(days)}); err != nil {
		t.Fatal(err)
	}
	return id
}

// status is what GetKeyRotationStatus answers for a key.
func (s *rotationSetup) status(t *testing.T, id string) *kms.GetKeyRotationStatusOutput {
	t.Helper()
	out, err := s.c.GetKeyRotationStatus(s.ctx, &kms.GetKeyRotationStatusInput{KeyId: &id})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (s *rotationSetup) materialID(t *testing.T, key string) string {
	t.Helper()
	out, err := s.c.DescribeKey(s.ctx, &kms.DescribeKeyInput{KeyId: aws.String(key)})
	if err != nil {
		t.Fatal(err)
	}
	return aws.ToString(out.KeyMetadata.CurrentKeyMaterialId)
}

// rotations lists every page of a key's rotations with the SDK's paginator.
func (s *rotationSetup) rotations(t *testing.T, key string, include types.IncludeKeyMaterial, limit int32) []types.RotationsListEntry {
	t.Helper()
	var all []types.RotationsListEntry
	p := kms.NewListKeyRotationsPaginator(s.c, &kms.ListKeyRotationsInput{KeyId: aws.String(key), IncludeKeyMaterial: include, Limit: aws.Int32(limit)})
	for p.HasMorePages() {
		page, err := p.NextPage(s.ctx)
		if err != nil {
			t.Fatalf("ListKeyRotations %s: %v", key, err)
		}
		if len(page.Rotations) > int(limit) {
			t.Fatalf("a page of %d rotations, limit %d", len(page.Rotations), limit)
		}
		all = append(all, page.Rotations...)
	}
	return all
}

func (s *rotationSetup) rotateOnDemand(key string) error {
	_, err := s.c.RotateKeyOnDemand(s.ctx, &kms.RotateKeyOnDemandInput{KeyId: aws.String(key)})
	return err
}

func code(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

var hex64 = regexp.MustCompile(`^[0-9a-f]{64}$`)

// TestCurrentKeyMaterialID: DescribeKey reports CurrentKeyMaterialId for
// symmetric encryption keys (by id, ARN or alias, whatever their state),
// 64 hex digits and the same at every call; not for asymmetric, HMAC or
// imported-material keys without material; the copies of a multi-Region key
// share theirs.
func TestCurrentKeyMaterialID(t *testing.T) {
	s := newRotationSetup(t)
	id := s.ids["payments"]
	first := s.materialID(t, id)
	if !hex64.MatchString(first) {
		t.Fatalf("CurrentKeyMaterialId %q is not 64 hex digits", first)
	}
	for _, ref := range []string{id, "arn:aws:kms:eu-west-1:" + DefaultAccount + ":key/" + id, "alias/payments"} {
		if got := s.materialID(t, ref); got != first {
			t.Errorf("DescribeKey %s: CurrentKeyMaterialId %q, want %q as before", ref, got, first)
		}
	}
	if other := s.materialID(t, s.ids["legacy-billing"]); other == first || !hex64.MatchString(other) {
		t.Errorf("another key's material id %q", other)
	}
	for _, name := range []string{"disabled", "retired"} {
		if got := s.materialID(t, s.ids[name]); !hex64.MatchString(got) {
			t.Errorf("%s: CurrentKeyMaterialId %q, want one (a symmetric key has material whatever its state)", name, got)
		}
	}
	for _, name := range []string{"signing-rsa", "signing-ecc", "webhook-hmac", "imported-material"} {
		if got := s.materialID(t, s.ids[name]); got != "" {
			t.Errorf("%s: CurrentKeyMaterialId %q, want none", name, got)
		}
	}

	const mrk = "mrk-1234abcd12ab34cd56ef1234567890ab"
	s.proxy.AddFake(MultiRegionKey("eu-west-1", "eu-west-1", DefaultAccount, mrk, true))
	s.proxy.AddFake(MultiRegionKey("us-east-1", "eu-west-1", DefaultAccount, mrk, true))
	s.proxy.AddFake(AWSManagedKey("eu-west-1", DefaultAccount, "0b1f5c7e-aaaa-4bbb-8ccc-000000000001", "s3"))
	primary := s.materialID(t, mrk)
	replica, err := Client(s.proxy.URL, "us-east-1").DescribeKey(s.ctx, &kms.DescribeKeyInput{KeyId: aws.String(mrk)})
	if err != nil {
		t.Fatal(err)
	}
	if !hex64.MatchString(primary) || aws.ToString(replica.KeyMetadata.CurrentKeyMaterialId) != primary {
		t.Errorf("multi-Region key: primary's material %q, replica's %q, want one shared", primary, aws.ToString(replica.KeyMetadata.CurrentKeyMaterialId))
	}
	if got := s.materialID(t, "0b1f5c7e-aaaa-4bbb-8ccc-000000000001"); !hex64.MatchString(got) {
		t.Errorf("AWS-managed key: CurrentKeyMaterialId %q", got)
	}
}

// TestListKeyRotationsValidation: Limit 1..1000, IncludeKeyMaterial's two
// values, Marker, the key by id or ARN only; keys that cannot rotate are
// refused.
func TestListKeyRotationsValidation(t *testing.T) {
	s := newRotationSetup(t)
	id := s.ids["payments"]
	list := func(in kms.ListKeyRotationsInput) error {
		_, err := s.c.ListKeyRotations(s.ctx, &in)
		return err
	}
	for _, tc := range []struct {
		name string
		in   kms.ListKeyRotationsInput
		want string
	}{
		{"limit 0", kms.ListKeyRotationsInput{KeyId: &id, Limit: aws.Int32(0)}, "ValidationException"},
		{"limit 1001", kms.ListKeyRotationsInput{KeyId: &id, Limit: aws.Int32(1001)}, "ValidationException"},
		{"include other", kms.ListKeyRotationsInput{KeyId: &id, IncludeKeyMaterial: "SOME"}, "ValidationException"},
		{"bad marker", kms.ListKeyRotationsInput{KeyId: &id, Marker: aws.String("x")}, "InvalidMarkerException"},
		{"marker past the end", kms.ListKeyRotationsInput{KeyId: &id, Marker: aws.String("2")}, "InvalidMarkerException"},
		{"unknown key", kms.ListKeyRotationsInput{KeyId: aws.String("6f1f8a52-0c1e-4d0a-9b6e-0123456789ab")}, "NotFoundException"},
		{"alias", kms.ListKeyRotationsInput{KeyId: aws.String("alias/payments")}, "NotFoundException"},
		{"asymmetric", kms.ListKeyRotationsInput{KeyId: aws.String(s.ids["signing-rsa"])}, "UnsupportedOperationException"},
		{"hmac", kms.ListKeyRotationsInput{KeyId: aws.String(s.ids["webhook-hmac"])}, "UnsupportedOperationException"},
	} {
		if err := list(tc.in); code(err) != tc.want {
			t.Errorf("%s: %v, want %s", tc.name, err, tc.want)
		}
	}
	for _, limit := range []int32{1, 1000} {
		if err := list(kms.ListKeyRotationsInput{KeyId: &id, Limit: aws.Int32(limit)}); err != nil {
			t.Errorf("limit %d: %v", limit, err)
		}
	}
	// Imported material not yet imported: nothing to list, not a refusal.
	if got := s.rotations(t, s.ids["imported-material"], types.IncludeKeyMaterialAllKeyMaterial, 100); len(got) != 0 {
		t.Errorf("key pending import: %d entries", len(got))
	}
	if n := s.proxy.Calls("ListKeyRotations"); n < 12 {
		t.Errorf("%d ListKeyRotations calls counted, want every one", n)
	}
}

// TestListKeyRotationsOfANewKey: a key never rotated lists nothing by
// default (ROTATIONS_ONLY); with ALL_KEY_MATERIAL its first material, with
// no RotationDate or RotationType, CURRENT, the DescribeKey's current one.
func TestListKeyRotationsOfANewKey(t *testing.T) {
	s := newRotationSetup(t)
	id := s.ids["legacy-billing"]
	out, err := s.c.ListKeyRotations(s.ctx, &kms.ListKeyRotationsInput{KeyId: &id})
	if err != nil || len(out.Rotations) != 0 || out.Truncated || out.NextMarker != nil {
		t.Fatalf("a key never rotated: %+v, %v; want no entry", out, err)
	}
	all := s.rotations(t, id, types.IncludeKeyMaterialAllKeyMaterial, 100)
	if len(all) != 1 {
		t.Fatalf("ALL_KEY_MATERIAL: %d entries, want the first material", len(all))
	}
	e := all[0]
	if e.RotationDate != nil || e.RotationType != "" || e.KeyMaterialState != types.KeyMaterialStateCurrent ||
		aws.ToString(e.KeyMaterialId) != s.materialID(t, id) || aws.ToString(e.KeyId) != id {
		t.Errorf("first material: %+v", e)
	}
}

// TestRotateKeyOnDemand: each rotation is a new current material, listed
// ON_DEMAND at the time it was asked (the earlier ones NON_CURRENT, oldest
// first, across pages), and leaves the automatic schedule as it was.
func TestRotateKeyOnDemand(t *testing.T) {
	s := newRotationSetup(t)
	id := s.rotatingKey(t, 180)
	status := func() *kms.GetKeyRotationStatusOutput { return s.status(t, id) }
	before := status()
	if next := aws.ToTime(before.NextRotationDate); !next.Equal(start.Add(180 * day)) {
		t.Fatalf("next rotation %s, want 180 days after enabling (%s)", next, start.Add(180*day))
	}
	first := s.materialID(t, id)
	var times []time.Time
	ids := []string{first}
	for range 3 {
		s.clock.Add(7 * day)
		out, err := s.c.RotateKeyOnDemand(s.ctx, &kms.RotateKeyOnDemandInput{KeyId: aws.String("arn:aws:kms:eu-west-1:" + DefaultAccount + ":key/" + id)})
		if err != nil {
			t.Fatal(err)
		}
		if aws.ToString(out.KeyId) != id {
			t.Errorf("RotateKeyOnDemand answered KeyId %q, want %q", aws.ToString(out.KeyId), id)
		}
		times = append(times, s.clock.Now())
		ids = append(ids, s.materialID(t, id))
	}
	for i := 1; i < len(ids); i++ {
		if ids[i] == ids[i-1] || !hex64.MatchString(ids[i]) {
			t.Fatalf("CurrentKeyMaterialId after rotation %d: %q (before %q)", i, ids[i], ids[i-1])
		}
	}
	got := s.rotations(t, id, "", 2)
	if len(got) != 3 {
		t.Fatalf("%d rotations listed, want 3", len(got))
	}
	for i, e := range got {
		state := types.KeyMaterialStateNonCurrent
		if i == 2 {
			state = types.KeyMaterialStateCurrent
		}
		if e.RotationType != types.RotationTypeOnDemand || !aws.ToTime(e.RotationDate).Equal(times[i]) ||
			aws.ToString(e.KeyMaterialId) != ids[i+1] || e.KeyMaterialState != state || aws.ToString(e.KeyId) != id {
			t.Errorf("rotation %d: %s %s %s %s %s; want ON_DEMAND at %s, %s, %s", i, e.RotationType, aws.ToTime(e.RotationDate),
				aws.ToString(e.KeyMaterialId), e.KeyMaterialState, aws.ToString(e.KeyId), times[i], ids[i+1], state)
		}
	}
	all := s.rotations(t, id, types.IncludeKeyMaterialAllKeyMaterial, 1000)
	if len(all) != 4 || aws.ToString(all[0].KeyMaterialId) != first || all[0].RotationDate != nil ||
		all[0].KeyMaterialState != types.KeyMaterialStateNonCurrent {
		t.Errorf("ALL_KEY_MATERIAL: %d entries, the first %+v; want the first material, NON_CURRENT, then the 3 rotations", len(all), all[0])
	}
	after := status()
	if !aws.ToTime(after.NextRotationDate).Equal(aws.ToTime(before.NextRotationDate)) || aws.ToInt32(after.RotationPeriodInDays) != 180 {
		t.Errorf("on-demand rotations moved the schedule: next %s, period %d; before %s, 180",
			aws.ToTime(after.NextRotationDate), aws.ToInt32(after.RotationPeriodInDays), aws.ToTime(before.NextRotationDate))
	}
}

// TestRotateKeyOnDemandLimit: 25 on-demand rotations per key, ever; the
// 26th is LimitExceededException and changes nothing.
func TestRotateKeyOnDemandLimit(t *testing.T) {
	s := newRotationSetup(t)
	id := s.newKey(t)
	for i := range MaxOnDemandRotations {
		if err := s.rotateOnDemand(id); err != nil {
			t.Fatalf("rotation %d: %v", i+1, err)
		}
	}
	material := s.materialID(t, id)
	if err := s.rotateOnDemand(id); code(err) != "LimitExceededException" {
		t.Fatalf("rotation 26: %v, want LimitExceededException", err)
	}
	if got := s.materialID(t, id); got != material {
		t.Error("the refused rotation changed the key material")
	}
	if got := s.rotations(t, id, "", 1000); len(got) != MaxOnDemandRotations {
		t.Errorf("%d rotations listed, want %d", len(got), MaxOnDemandRotations)
	}
	if err := s.rotateOnDemand(s.newKey(t)); err != nil {
		t.Errorf("another key: %v (the limit is per key)", err)
	}
}

// TestRotateKeyOnDemandRefusals: as AWS documents, by key.
func TestRotateKeyOnDemandRefusals(t *testing.T) {
	s := newRotationSetup(t)
	const managed, mrk = "0b1f5c7e-aaaa-4bbb-8ccc-000000000001", "mrk-1234abcd12ab34cd56ef1234567890ab"
	s.proxy.AddFake(AWSManagedKey("eu-west-1", DefaultAccount, managed, "s3"))
	s.proxy.AddFake(MultiRegionKey("eu-west-1", "us-east-1", DefaultAccount, mrk, true))
	for _, tc := range []struct{ key, want string }{
		{s.ids["disabled"], "DisabledException"},
		{s.ids["retired"], "KMSInvalidStateException"},
		{s.ids["signing-rsa"], "UnsupportedOperationException"},
		{s.ids["signing-ecc"], "UnsupportedOperationException"},
		{s.ids["webhook-hmac"], "UnsupportedOperationException"},
		{managed, "AccessDeniedException"},
		{mrk, "UnsupportedOperationException"}, // a replica: rotate its primary
		{"6f1f8a52-0c1e-4d0a-9b6e-0123456789ab", "NotFoundException"},
		{"alias/payments", "NotFoundException"},
	} {
		if err := s.rotateOnDemand(tc.key); code(err) != tc.want {
			t.Errorf("RotateKeyOnDemand %s: %v, want %s", tc.key, err, tc.want)
		}
	}
	// Imported material rotates only to material staged PENDING_ROTATION,
	// which the proxy cannot stage: local-kms answers.
	err := s.rotateOnDemand(s.ids["imported-material"])
	var re *awshttp.ResponseError
	if !errors.As(err, &re) || re.HTTPStatusCode() != http.StatusNotImplemented {
		t.Errorf("RotateKeyOnDemand of an imported-material key: %v, want local-kms's 501", err)
	}
	if got := s.rotations(t, s.ids["disabled"], "", 100); len(got) != 0 {
		t.Errorf("the refused key lists %d rotations", len(got))
	}
}

// TestRotateKeyOnDemandConflict: refused while an automatic rotation is due
// within 20 minutes.
func TestRotateKeyOnDemandConflict(t *testing.T) {
	s := newRotationSetup(t)
	id := s.newKey(t)
	if _, err := s.c.EnableKeyRotation(s.ctx, &kms.EnableKeyRotationInput{KeyId: &id, RotationPeriodInDays: aws.Int32(90)}); err != nil {
		t.Fatal(err)
	}
	s.clock.Add(90*day - 21*time.Minute)
	if err := s.rotateOnDemand(id); err != nil {
		t.Fatalf("21 minutes before the automatic rotation: %v", err)
	}
	s.clock.Add(2 * time.Minute)
	if err := s.rotateOnDemand(id); code(err) != "ConflictException" {
		t.Errorf("19 minutes before the automatic rotation: %v, want ConflictException", err)
	}
}

// TestAutomaticRotation: when the next rotation date passes by the proxy's
// clock the rotation completes at that date: an AUTOMATIC entry, a new
// current material, the next date a period later; periods passed while no
// call came all show; on-demand rotations in between leave the schedule.
func TestAutomaticRotation(t *testing.T) {
	s := newRotationSetup(t)
	id := s.newKey(t)
	var rotated []Rotation
	var mu sync.Mutex
	s.proxy.SetRotations(func(r Rotation) { mu.Lock(); rotated = append(rotated, r); mu.Unlock() })
	if _, err := s.c.EnableKeyRotation(s.ctx, &kms.EnableKeyRotationInput{KeyId: &id, RotationPeriodInDays: aws.Int32(90)}); err != nil {
		t.Fatal(err)
	}
	first := s.materialID(t, id)
	s.clock.Add(90*day - time.Second)
	if got := s.materialID(t, id); got != first {
		t.Fatal("rotated a second before its date")
	}
	s.clock.Add(time.Hour)
	second := s.materialID(t, id)
	if second == first {
		t.Fatal("not rotated an hour after its date")
	}
	out, err := s.c.GetKeyRotationStatus(s.ctx, &kms.GetKeyRotationStatusInput{KeyId: &id})
	if err != nil {
		t.Fatal(err)
	}
	if next := aws.ToTime(out.NextRotationDate); !next.Equal(start.Add(180 * day)) {
		t.Errorf("next rotation %s, want a period after the last (%s)", next, start.Add(180*day))
	}
	s.clock.Add(10 * day)
	if err := s.rotateOnDemand(id); err != nil {
		t.Fatal(err)
	}
	onDemandAt := s.clock.Now()
	s.clock.Add(200 * day) // past two more dates: 180 and 270 days
	got := s.rotations(t, id, "", 1000)
	want := []struct {
		typ types.RotationType
		at  time.Time
	}{
		{types.RotationTypeAutomatic, start.Add(90 * day)},
		{types.RotationTypeOnDemand, onDemandAt},
		{types.RotationTypeAutomatic, start.Add(180 * day)},
		{types.RotationTypeAutomatic, start.Add(270 * day)},
	}
	if len(got) != len(want) {
		t.Fatalf("%d rotations listed, want %d", len(got), len(want))
	}
	for i, w := range want {
		if got[i].RotationType != w.typ || !aws.ToTime(got[i].RotationDate).Equal(w.at) {
			t.Errorf("rotation %d: %s at %s, want %s at %s", i, got[i].RotationType, aws.ToTime(got[i].RotationDate), w.typ, w.at)
		}
	}
	if aws.ToString(got[0].KeyMaterialId) != second || aws.ToString(got[3].KeyMaterialId) != s.materialID(t, id) {
		t.Error("the listed materials are not the ones DescribeKey reported")
	}
	mu.Lock()
	defer mu.Unlock()
	var kinds []string
	for _, r := range rotated {
		if r.KeyID != id || r.KeyARN != "arn:aws:kms:eu-west-1:"+DefaultAccount+":key/"+id || r.Region != "eu-west-1" ||
			r.Account != DefaultAccount || r.Origin != "AWS_KMS" || !hex64.MatchString(r.Previous) || !hex64.MatchString(r.Current) {
			t.Errorf("rotation reported: %+v", r)
		}
		kinds = append(kinds, r.Type)
	}
	if !slices.Equal(kinds, []string{"AUTOMATIC", "ON_DEMAND", "AUTOMATIC", "AUTOMATIC"}) {
		t.Errorf("rotations reported: %v", kinds)
	}
	if len(rotated) == 4 && (rotated[0].Previous != first || rotated[0].Current != second || rotated[1].Previous != second || !rotated[3].At.Equal(start.Add(270*day))) {
		t.Errorf("rotations reported do not chain the materials: %+v", rotated)
	}
}

// TestAutomaticRotationSkipsKeysNotEnabled: a disabled key or one pending
// deletion does not rotate when its date passes; enabled again, an overdue
// key rotates at once.
func TestAutomaticRotationSkipsKeysNotEnabled(t *testing.T) {
	s := newRotationSetup(t)
	disabled, pending := s.newKey(t), s.newKey(t)
	for _, id := range []string{disabled, pending} {
		if _, err := s.c.EnableKeyRotation(s.ctx, &kms.EnableKeyRotationInput{KeyId: aws.String(id), RotationPeriodInDays: aws.Int32(90)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.c.DisableKey(s.ctx, &kms.DisableKeyInput{KeyId: &disabled}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.c.ScheduleKeyDeletion(s.ctx, &kms.ScheduleKeyDeletionInput{KeyId: &pending, PendingWindowInDays: aws.Int32(30)}); err != nil {
		t.Fatal(err)
	}
	s.clock.Add(100 * day)
	for _, id := range []string{disabled, pending} {
		if got := s.rotations(t, id, "", 100); len(got) != 0 {
			t.Errorf("key %s not Enabled: %d rotations after its date", id, len(got))
		}
	}
	s.clock.Add(day)
	if _, err := s.c.EnableKey(s.ctx, &kms.EnableKeyInput{KeyId: &disabled}); err != nil {
		t.Fatal(err)
	}
	got := s.rotations(t, disabled, "", 100)
	if len(got) != 1 || got[0].RotationType != types.RotationTypeAutomatic || !aws.ToTime(got[0].RotationDate).Equal(s.clock.Now()) {
		t.Fatalf("enabled again, overdue: %+v; want one AUTOMATIC rotation now (%s)", got, s.clock.Now())
	}
}

// TestFakeKeysRotate: a fake multi-Region key rotates automatically when
// its date passes, once for its primary and replicas, which share the
// material, and its next date moves a period on; so does an AWS-managed
// fake key.
func TestFakeKeysRotate(t *testing.T) {
	s := newRotationSetup(t)
	const managed, mrk = "0b1f5c7e-aaaa-4bbb-8ccc-000000000001", "mrk-1234abcd12ab34cd56ef1234567890ab"
	s.proxy.AddFake(AWSManagedKey("eu-west-1", DefaultAccount, managed, "s3"))
	s.proxy.AddFake(MultiRegionKey("eu-west-1", "eu-west-1", DefaultAccount, mrk, true))
	s.proxy.AddFake(MultiRegionKey("us-east-1", "eu-west-1", DefaultAccount, mrk, true))
	var rotated []Rotation
	s.proxy.SetRotations(func(r Rotation) { rotated = append(rotated, r) })
	west, east := s.c, Client(s.proxy.URL, "us-east-1")
	next := func(c *kms.Client, key string) time.Time {
		out, err := c.GetKeyRotationStatus(s.ctx, &kms.GetKeyRotationStatusInput{KeyId: aws.String(key)})
		if err != nil {
			t.Fatal(err)
		}
		return aws.ToTime(out.NextRotationDate)
	}
	mrkNext, managedNext := next(west, mrk), next(west, managed)
	s.clock.Set(time.Now().Add(101 * day)) // past both (fakes are dated by the real clock)
	list := func(c *kms.Client, key string) []types.RotationsListEntry {
		out, err := c.ListKeyRotations(s.ctx, &kms.ListKeyRotationsInput{KeyId: aws.String(key)})
		if err != nil {
			t.Fatal(err)
		}
		return out.Rotations
	}
	westRot, eastRot := list(west, mrk), list(east, mrk)
	if len(westRot) != 1 || len(eastRot) != 1 || aws.ToString(westRot[0].KeyMaterialId) != aws.ToString(eastRot[0].KeyMaterialId) ||
		!aws.ToTime(westRot[0].RotationDate).Equal(mrkNext.Truncate(time.Millisecond)) {
		t.Errorf("multi-Region key: primary lists %+v, replica %+v; want one shared AUTOMATIC rotation at %s", westRot, eastRot, mrkNext)
	}
	if got := next(east, mrk); !got.Equal(mrkNext.Add(365 * day).Truncate(time.Millisecond)) {
		t.Errorf("replica's next rotation %s, want a year after %s", got, mrkNext)
	}
	if got := list(west, managed); len(got) != 1 || got[0].RotationType != types.RotationTypeAutomatic {
		t.Errorf("AWS-managed key: %+v, want one automatic rotation at %s", got, managedNext)
	}
	regions := map[string]int{}
	for _, r := range rotated {
		regions[r.Region+" "+r.KeyID]++
	}
	if regions["eu-west-1 "+mrk] != 1 || regions["us-east-1 "+mrk] != 1 || regions["eu-west-1 "+managed] != 1 || len(rotated) != 3 {
		t.Errorf("rotations reported: %v, want one per region holding each key", regions)
	}
}

// TestRotationTrail: a RotateKeyOnDemand that succeeds is told to SetTrail's
// hook, as CloudTrail records it, with the rotation to SetRotations's; one
// refused is not.
func TestRotationTrail(t *testing.T) {
	s := newRotationSetup(t)
	id := s.newKey(t)
	var trailed, rotated []string
	var mu sync.Mutex
	s.proxy.SetTrail(func(op, region, arn string) { mu.Lock(); trailed = append(trailed, op+" "+region+" "+arn); mu.Unlock() })
	s.proxy.SetRotations(func(r Rotation) { mu.Lock(); rotated = append(rotated, r.Type+" "+r.KeyARN); mu.Unlock() })
	if err := s.rotateOnDemand(id); err != nil {
		t.Fatal(err)
	}
	if err := s.rotateOnDemand(s.ids["disabled"]); code(err) != "DisabledException" {
		t.Fatal(err)
	}
	arn := "arn:aws:kms:eu-west-1:" + DefaultAccount + ":key/" + id
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(trailed, []string{"RotateKeyOnDemand eu-west-1 " + arn}) {
		t.Errorf("trailed %v", trailed)
	}
	if !slices.Equal(rotated, []string{"ON_DEMAND " + arn}) {
		t.Errorf("rotations reported %v", rotated)
	}
}

// TestListKeyRotationsFaults: faults apply to ListKeyRotations as to the
// other operations (its quota, 100/s, is apart: a throttle of one operation
// leaves the others).
func TestListKeyRotationsFaults(t *testing.T) {
	s := newRotationSetup(t)
	id := s.ids["payments"]
	s.proxy.AddFault(&Fault{Op: "ListKeyRotations", Code: "ThrottlingException"})
	if _, err := s.c.ListKeyRotations(s.ctx, &kms.ListKeyRotationsInput{KeyId: &id}); code(err) != "ThrottlingException" {
		t.Errorf("ListKeyRotations throttled: %v", err)
	}
	if _, err := s.c.DescribeKey(s.ctx, &kms.DescribeKeyInput{KeyId: &id}); err != nil {
		t.Errorf("DescribeKey while ListKeyRotations is throttled: %v", err)
	}
}

// TestListKeyRotationsDefaultLimit: without Limit a page holds 100 entries.
func TestListKeyRotationsDefaultLimit(t *testing.T) {
	s := newRotationSetup(t)
	id := s.newKey(t)
	if _, err := s.c.EnableKeyRotation(s.ctx, &kms.EnableKeyRotationInput{KeyId: &id, RotationPeriodInDays: aws.Int32(90)}); err != nil {
		t.Fatal(err)
	}
	s.clock.Add(101 * 90 * day) // 101 automatic rotations
	out, err := s.c.ListKeyRotations(s.ctx, &kms.ListKeyRotationsInput{KeyId: &id})
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Rotations) != 100 || !out.Truncated || aws.ToString(out.NextMarker) == "" {
		t.Errorf("first page: %d entries, truncated %v, next marker %q; want 100, true and a marker", len(out.Rotations), out.Truncated, aws.ToString(out.NextMarker))
	}
	if got := s.rotations(t, id, "", 1000); len(got) != 101 {
		t.Errorf("%d rotations in all, want 101", len(got))
	}
}

// TestRotationStatusPendingDeletion: a rotating key pending deletion
// answers false, and its setting and schedule come back when the deletion
// is cancelled (API_GetKeyRotationStatus).
func TestRotationStatusPendingDeletion(t *testing.T) {
	s := newRotationSetup(t)
	id := s.rotatingKey(t, 120)
	status := func() *kms.GetKeyRotationStatusOutput { return s.status(t, id) }
	before := status()
	if _, err := s.c.ScheduleKeyDeletion(s.ctx, &kms.ScheduleKeyDeletionInput{KeyId: &id, PendingWindowInDays: aws.Int32(7)}); err != nil {
		t.Fatal(err)
	}
	if out := status(); out.KeyRotationEnabled || out.NextRotationDate != nil || out.RotationPeriodInDays != nil {
		t.Errorf("pending deletion: enabled %v, next %v, period %v; want false and nothing else", out.KeyRotationEnabled, out.NextRotationDate, out.RotationPeriodInDays)
	}
	s.clock.Add(day)
	if _, err := s.c.CancelKeyDeletion(s.ctx, &kms.CancelKeyDeletionInput{KeyId: &id}); err != nil {
		t.Fatal(err)
	}
	after := status()
	if !after.KeyRotationEnabled || aws.ToInt32(after.RotationPeriodInDays) != 120 || !aws.ToTime(after.NextRotationDate).Equal(aws.ToTime(before.NextRotationDate)) {
		t.Errorf("deletion cancelled: enabled %v, period %d, next %s; want true, 120, %s", after.KeyRotationEnabled,
			aws.ToInt32(after.RotationPeriodInDays), aws.ToTime(after.NextRotationDate), aws.ToTime(before.NextRotationDate))
	}
}
