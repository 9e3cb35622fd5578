package collector

import (
	"bytes"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/kms-exporter/kms_exporter/model"
	"github.com/kms-exporter/kms_exporter/policy"
)

// inventory is n keys in each of two regions, of every shape the exposition
// has series for.
func inventory(n int, rnd *rand.Rand) *model.Snapshot {
	s := &model.Snapshot{TagLabels: []string{"team", "cost-center"}}
	for _, region := range []string{"eu-west-1", "us-east-1"} {
		t := &model.TargetState{AccountID: account, Region: region, Success: true, LastSuccess: time.Unix(1764000000, 0)}
		for i := range n {
			t.Keys = append(t.Keys, randomKey(region, fmt.Sprintf("%08x-0000-4000-8000-%012x", rnd.Uint32(), i), rnd))
		}
		slices.SortFunc(t.Keys, func(a, b *model.Key) int { return strings.Compare(a.ID, b.ID) })
		s.Targets = append(s.Targets, t)
	}
	return s
}

func randomKey(region, id string, rnd *rand.Rand) *model.Key {
	k := key(region, id, symMeta("Enabled"), policy.Verdict{Status: policy.Compliant, Reason: policy.ReasonRotationEnabled})
	k.CreationDate = time.UnixMilli(1600000000000 + rnd.Int64N(1e11))
	k.Rotation = &policy.Rotation{Enabled: true, PeriodDays: 365, NextRotation: time.Date(2031, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(rnd.IntN(365*86400)) * time.Second)}
	switch rnd.IntN(9) {
	case 0:
		k.Rotation.Enabled = false
		k.Verdict = model.VerdictOf(policy.Verdict{Status: policy.Noncompliant, Reason: policy.ReasonRotationDisabled})
	case 1:
		k.Verdict = model.VerdictOf(policy.Verdict{Status: policy.Exempt, Reason: policy.ReasonExemptionTag, ExemptionReason: `vendor "appliance"\n`,
			ExemptionExpiry: time.Date(2027, 4, 1, 0, 0, 0, 0, time.UTC)})
	case 2:
		k.Meta, k.DeletionDate = model.MetaOf(symMeta("PendingDeletion")), new(k.CreationDate.AddDate(2, 0, 0))
		k.Rotation = nil
		k.Verdict = model.VerdictOf(policy.Verdict{Status: policy.NotApplicable, Reason: policy.ReasonPendingDeletion})
	case 3:
		k.ReadError, k.Stale = "ThrottlingException", true
	case 4:
		k.Aliases = []string{"alias/a-" + id[:4], "alias/b"}
		k.TagValues = []string{"payments", `c\d`}
	case 5: // AWS did not rotate it when it said it would
		k.Rotation.NextRotation = k.CreationDate
	}
	return &k
}

// change returns a copy of s in which some keys changed, some were created
// and some deleted: published keys are never modified.
func change(s *model.Snapshot, rnd *rand.Rand) *model.Snapshot {
	out := &model.Snapshot{TagLabels: s.TagLabels}
	for _, t := range s.Targets {
		nt := *t
		nt.Keys = nil
		for _, k := range t.Keys {
			switch rnd.IntN(2000) {
			case 0: // deleted
				continue
			case 1: // changed
				c := *k
				c.Verdict = model.VerdictOf(policy.Verdict{Status: policy.Unknown, Reason: "AccessDeniedException"})
				c.Rotation = nil
				k = &c
			case 2: // a key created next to it
				nt.Keys = append(nt.Keys, randomKey(t.Region, k.ID+"-new", rnd))
			}
			nt.Keys = append(nt.Keys, k)
		}
		slices.SortFunc(nt.Keys, func(a, b *model.Key) int { return strings.Compare(a.ID, b.ID) })
		out.Targets = append(out.Targets, &nt)
	}
	return out
}

// TestPublishReusesUnchangedBlocks: a collector that publishes one snapshot
// after another serves, every time, exactly what a new collector serves for
// the same snapshot, while it re-encodes only the blocks whose keys changed.
func TestPublishReusesUnchangedBlocks(t *testing.T) {
	// Enough keys per target for several blocks in either mode.
	for mode, n := range map[string]int{PerKeyAll: 3000, PerKeyAttention: 20000} {
		t.Run(mode, func(t *testing.T) { testReusesUnchangedBlocks(t, mode, n) })
	}
}

func testReusesUnchangedBlocks(t *testing.T, mode string, n int) {
	rnd := rand.New(rand.NewPCG(1, 2))
	s := inventory(n, rnd)
	opts := Options{TagLabels: s.TagLabels, PerKey: mode}
	c := publishedWith(opts, s)
	for round := range 5 {
		before := c.current.Load().blocks
		next := change(s, rnd)
		c.Publish(next)
		if got, want := body(t, c), body(t, publishedWith(opts, next)); !bytes.Equal(got, want) {
			t.Fatalf("round %d: the exposition after reusing blocks differs from a fresh encoding", round)
		}
		checkJoined(t, c, mode == PerKeyAttention)
		reused, total := 0, 0
		for first, b := range c.current.Load().blocks {
			total++
			if before[first] == b {
				reused++
			}
		}
		// About 3 keys in 4,000 change per round: most blocks keep theirs.
		if reused == 0 || reused == total {
			t.Errorf("round %d: %d of %d blocks reused; want the unchanged ones only", round, reused, total)
		}
		s = next
	}
	// Nothing changed: nothing is encoded again.
	before := c.current.Load().blocks
	c.Publish(&model.Snapshot{TagLabels: s.TagLabels, Targets: s.Targets})
	for first, b := range c.current.Load().blocks {
		if before[first] != b {
			t.Fatal("a block of unchanged keys was encoded again")
		}
	}
}

// checkJoined fails unless the body of c is kept in one slice exactly when
// joined, the blocks' pieces then in that slice (not in copies of their own).
func checkJoined(t *testing.T, c *Collector, joined bool) {
	t.Helper()
	p := c.current.Load()
	if got := p.body.joined != nil; got != joined {
		t.Fatalf("body kept in one slice: %v, want %v (%d bytes for %d keys)", got, joined, p.body.zsize, keyCount(p.snapshot))
	}
	if !joined {
		return
	}
	for _, b := range p.blocks {
		for _, pc := range b.pieces {
			if len(pc.data) > 0 && !within(pc.data, p.body.joined) {
				t.Fatal("a block's piece is held apart from the joined body: the body is in memory twice")
			}
		}
	}
}

// within tells whether data is memory of slab.
func within(data, slab []byte) bool {
	at, lo := uintptr(unsafe.Pointer(unsafe.SliceData(data))), uintptr(unsafe.Pointer(unsafe.SliceData(slab)))
	return at >= lo && at+uintptr(len(data)) <= lo+uintptr(len(slab))
}

// TestPublishLetsAJoinedBodyGo: once a body grows too large to be joined,
// the blocks the publish reuses no longer hold the earlier body's slice.
func TestPublishLetsAJoinedBodyGo(t *testing.T) {
	s := inventory(20000, rand.New(rand.NewPCG(5, 6)))
	opts := Options{TagLabels: s.TagLabels, PerKey: PerKeyAttention}
	c := publishedWith(opts, s)
	checkJoined(t, c, true)
	before := c.current.Load()
	// Every key of the first target needs attention, with aliases and
	// tags: the body outgrows joinedPerKey. The second target is as it was.
	first := *s.Targets[0]
	first.Keys = nil
	for _, k := range s.Targets[0].Keys {
		nk := *k
		nk.Verdict = model.VerdictOf(policy.Verdict{Status: policy.Unknown, Reason: "AccessDeniedException"})
		nk.ReadError, nk.Stale = "ThrottlingException", true
		nk.Aliases, nk.TagValues = []string{"alias/" + k.ID}, []string{"payments", "cc-" + k.ID[:8]}
		first.Keys = append(first.Keys, &nk)
	}
	next := &model.Snapshot{TagLabels: s.TagLabels, Targets: []*model.TargetState{&first, s.Targets[1]}}
	c.Publish(next)
	checkJoined(t, c, false)
	if got, want := body(t, c), body(t, publishedWith(opts, next)); !bytes.Equal(got, want) {
		t.Fatal("the exposition differs from a fresh encoding")
	}
	reused := 0
	for first, b := range c.current.Load().blocks {
		if before.blocks[first] == b {
			reused++
		}
		for _, p := range b.pieces {
			if len(p.data) > 0 && within(p.data, before.body.joined) {
				t.Fatal("a reused block still holds the earlier joined body's slice")
			}
		}
	}
	if reused == 0 {
		t.Fatal("no block reused: the test does not test reuse")
	}
	for _, p := range c.current.Load().body.pieces {
		if within(p.data, before.body.joined) {
			t.Fatal("the body still holds the earlier joined body's slice")
		}
	}
}

func TestPerKeyAttention(t *testing.T) {
	s := inventory(500, rand.New(rand.NewPCG(3, 4)))
	families := parse(t, body(t, publishedWith(Options{TagLabels: s.TagLabels, PerKey: PerKeyAttention}, s)))
	want := map[string]bool{}
	total := 0
	for _, tg := range s.Targets {
		for _, k := range tg.Keys {
			total++
			if NeedsAttention(k, time.Now()) {
				want[k.ID] = true
			}
		}
	}
	if len(want) == 0 || len(want) == total {
		t.Fatalf("%d of %d keys need attention: the inventory does not test the mode", len(want), total)
	}
	for name, f := range families {
		for _, m := range f.GetMetric() {
			id := labelValue(m.GetLabel(), "key_id")
			if strings.HasPrefix(name, "kms_key_") && !want[id] {
				t.Errorf("%s has a series of key %q, which needs no attention", name, id)
			}
		}
	}
	if n := len(families["kms_key_compliance"].GetMetric()); n != len(want) {
		t.Errorf("%d kms_key_compliance series, want one per key needing attention (%d)", n, len(want))
	}
	counted := 0.0
	for _, m := range families["kms_keys"].GetMetric() {
		counted += m.GetGauge().GetValue()
	}
	if int(counted) != total {
		t.Errorf("kms_keys counts %v keys, want every key (%d)", counted, total)
	}
}

// In attention mode a block holds eight times the keys (few of which are
// served): a body has as few pieces as a body of every key's series has per
// key served, since each piece costs every scrape its time.
func TestAttentionBlocksHoldMoreKeys(t *testing.T) {
	s := inventory(20000, rand.New(rand.NewPCG(5, 6)))
	perBlock := func(mode string) float64 {
		c := publishedWith(Options{TagLabels: s.TagLabels, PerKey: mode}, s)
		return 40000 / float64(len(c.current.Load().blocks))
	}
	all, attention := perBlock(PerKeyAll), perBlock(PerKeyAttention)
	if all < 64 || all > 256 || attention < 4*all {
		t.Errorf("keys per block: %.0f for every key's series, %.0f in attention mode; want about %d and %d",
			all, attention, blockMean, attentionBlockMean)
	}
}

// TestAttentionWhenRotationFallsDue: an unchanged key whose next rotation
// falls due, or whose key material grows older than its rotation period,
// between two publishes is served from the second on, although its block is
// otherwise reused.
func TestAttentionWhenRotationFallsDue(t *testing.T) {
	soon := func() time.Time { return time.Now().Add(300 * time.Millisecond) }
	for name, set := range map[string]func(k *model.Key){
		"next rotation": func(k *model.Key) {
			k.Rotation = &policy.Rotation{Enabled: true, PeriodDays: 365, NextRotation: soon()}
		},
		"material older than the period": func(k *model.Key) {
			k.Rotation = &policy.Rotation{Enabled: true, PeriodDays: 90, NextRotation: time.Now().AddDate(0, 0, 30)}
			k.History = &policy.History{LastRotation: soon().AddDate(0, 0, -90), LastType: policy.RotationAutomatic, Automatic: 1}
		},
	} {
		t.Run(name, func(t *testing.T) {
			s := inventory(300, rand.New(rand.NewPCG(5, 6)))
			due := s.Targets[0].Keys[7]
			c := *due
			c.Verdict, c.Stale, c.DeletionDate = model.VerdictOf(policy.Verdict{Status: policy.Compliant, Reason: policy.ReasonRotationEnabled}), false, nil
			set(&c)
			s.Targets[0].Keys[7] = &c
			col := publishedWith(Options{PerKey: PerKeyAttention}, s)
			served := func() bool {
				return strings.Contains(string(body(t, col)), `kms_key_compliance{account_id="`+account+`",key_id="`+c.ID+`"`)
			}
			if served() {
				t.Fatal("a compliant key not yet due is served in attention mode")
			}
			time.Sleep(400 * time.Millisecond)
			col.Publish(&model.Snapshot{Targets: s.Targets})
			if !served() {
				t.Error("a key that fell due is not served after the next publish")
			}
		})
	}
}

func TestIncludeFamilies(t *testing.T) {
	s := goldenSnapshot()
	c := publishedWith(Options{TagLabels: s.TagLabels, Include: func(name string) bool { return name != "kms_key_info" && name != "kms_keys" }}, s)
	families := parse(t, body(t, c))
	if _, ok := families["kms_key_info"]; ok {
		t.Error("kms_key_info is served although excluded")
	}
	if _, ok := families["kms_keys"]; ok {
		t.Error("kms_keys is served although excluded")
	}
	if len(families) != len(FamilyNames())-2 {
		t.Errorf("%d families served, want all but the two excluded", len(families))
	}
}

// FuzzLabelValue: whatever a tag or an exemption reason holds, the exposition
// parses and the label reads back as the text (invalid UTF-8 replaced).
func FuzzLabelValue(f *testing.F) {
	for _, s := range []string{"", "plain", `quote " backslash \ newline` + "\n", "\xff\xfe", "é\\n\"", "tab\tcr\r"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, value string) {
		k := key("eu-west-1", "k1", symMeta("Enabled"), policy.Verdict{Status: policy.Exempt, Reason: policy.ReasonExemptionTag, ExemptionReason: value})
		k.TagValues = []string{value}
		s := &model.Snapshot{TagLabels: []string{"team"}, Targets: []*model.TargetState{{AccountID: account, Region: "eu-west-1", Keys: []*model.Key{&k}}}}
		families := parse(t, body(t, publishedWith(Options{TagLabels: s.TagLabels}, s)))
		want := strings.ToValidUTF8(value, "\uFFFD")
		if got := labelValue(families["kms_key_info"].GetMetric()[0].GetLabel(), "tag_team"); got != want {
			t.Errorf("tag_team = %q, want %q", got, want)
		}
		if value == "" {
			return // no exemption: no exemption series
		}
		if got := labelValue(families["kms_key_rotation_exemption_info"].GetMetric()[0].GetLabel(), "reason"); got != want {
			t.Errorf("reason = %q, want %q", got, want)
		}
	})
}

// FuzzCRC32Combine: the CRC of two texts one after the other is the CRC
// combined from theirs.
func FuzzCRC32Combine(f *testing.F) {
	f.Add([]byte("kms_keys 1\n"), []byte("kms_key_info 1\n"))
	f.Add([]byte{}, []byte("x"))
	f.Add([]byte("x"), []byte{})
	f.Fuzz(func(t *testing.T, a, b []byte) {
		want := crc32.ChecksumIEEE(append(slices.Clone(a), b...))
		if got := crc32Combine(crc32.ChecksumIEEE(a), crc32.ChecksumIEEE(b), int64(len(b))); got != want {
			t.Errorf("combined %08x, want %08x", got, want)
		}
	})
}

func TestCRC32CombineLong(t *testing.T) {
	a := bytes.Repeat([]byte("kms_key_info{} 1\n"), 100000)
	b := bytes.Repeat([]byte("0123456789abcdef"), 300000) // past 4 MiB: every bit of the length counts
	if got, want := crc32Combine(crc32.ChecksumIEEE(a), crc32.ChecksumIEEE(b), int64(len(b))), crc32.ChecksumIEEE(append(a, b...)); got != want {
		t.Errorf("combined %08x, want %08x", got, want)
	}
}

func TestNeedsAttention(t *testing.T) {
	now := time.Date(2026, 11, 28, 0, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		name string
		k    model.Key
		want bool
	}{
		{"compliant", model.Key{Verdict: model.VerdictOf(policy.Verdict{Status: policy.Compliant})}, false},
		{"not applicable", model.Key{Verdict: model.VerdictOf(policy.Verdict{Status: policy.NotApplicable})}, false},
		{"noncompliant", model.Key{Verdict: model.VerdictOf(policy.Verdict{Status: policy.Noncompliant})}, true},
		{"unknown", model.Key{Verdict: model.VerdictOf(policy.Verdict{Status: policy.Unknown})}, true},
		{"exempt", model.Key{Verdict: model.VerdictOf(policy.Verdict{Status: policy.Exempt})}, true},
		{"compliant but stale", model.Key{Verdict: model.VerdictOf(policy.Verdict{Status: policy.Compliant}), Stale: true}, true},
		{"pending deletion", model.Key{Verdict: model.VerdictOf(policy.Verdict{Status: policy.NotApplicable}), DeletionDate: new(time.Unix(1, 0))}, true},
		{"multi-Region primary pending its replicas' deletion (no date yet)", model.Key{Verdict: model.VerdictOf(policy.Verdict{Status: policy.NotApplicable}),
			Meta: model.MetaOf(policy.Meta{KeyManager: "CUSTOMER", KeyState: "PendingReplicaDeletion"})}, true},
		{"disabled", model.Key{Verdict: model.VerdictOf(policy.Verdict{Status: policy.NotApplicable}), Meta: model.MetaOf(policy.Meta{KeyManager: "CUSTOMER", KeyState: "Disabled"})}, false},
		{"compliant, rotation due later", model.Key{Verdict: model.VerdictOf(policy.Verdict{Status: policy.Compliant}), Rotation: &policy.Rotation{Enabled: true, NextRotation: now.Add(time.Second)}}, false},
		{"compliant, rotation due now", model.Key{Verdict: model.VerdictOf(policy.Verdict{Status: policy.Compliant}), Rotation: &policy.Rotation{Enabled: true, NextRotation: now}}, true},
		{"compliant, rotation overdue", model.Key{Verdict: model.VerdictOf(policy.Verdict{Status: policy.Compliant}), Rotation: &policy.Rotation{Enabled: true, NextRotation: now.Add(-time.Hour)}}, true},
		{"compliant, material younger than its period", model.Key{Verdict: model.VerdictOf(policy.Verdict{Status: policy.Compliant}), Rotation: &policy.Rotation{Enabled: true, PeriodDays: 90},
			History: &policy.History{LastRotation: now.AddDate(0, 0, -89)}}, false},
		{"compliant, material older than its period (rotation not happening)", model.Key{Verdict: model.VerdictOf(policy.Verdict{Status: policy.Compliant}), Rotation: &policy.Rotation{Enabled: true, PeriodDays: 90},
			History: &policy.History{LastRotation: now.AddDate(0, 0, -90)}}, true},
		{"compliant, never rotated, created over 365 days ago, no period reported", model.Key{Verdict: model.VerdictOf(policy.Verdict{Status: policy.Compliant}), CreationDate: now.AddDate(-1, 0, -1),
			Rotation: &policy.Rotation{Enabled: true}, History: &policy.History{}}, true},
		{"compliant, old material but history not read", model.Key{Verdict: model.VerdictOf(policy.Verdict{Status: policy.Compliant}), CreationDate: now.AddDate(-2, 0, 0),
			Rotation: &policy.Rotation{Enabled: true}, History: &policy.History{Error: "AccessDeniedException"}}, false},
		{"compliant (on demand), 5 on-demand rotations left", model.Key{Verdict: model.VerdictOf(policy.Verdict{Status: policy.Compliant}), Rotation: &policy.Rotation{},
			History: &policy.History{LastRotation: now, OnDemand: 20}}, true},
		{"compliant (on demand), 6 left", model.Key{Verdict: model.VerdictOf(policy.Verdict{Status: policy.Compliant}), Rotation: &policy.Rotation{},
			History: &policy.History{LastRotation: now, OnDemand: 19}}, false},
	} {
		if got := NeedsAttention(&tt.k, now); got != tt.want {
			t.Errorf("%s: NeedsAttention = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestTimestampsExact(t *testing.T) {
	for _, ms := range []int64{0, 1, 10, 100, 999, 1000, 1704164645123, 1704164645120, 1704164645100, 1704164645000} {
		w := lines{}
		k := model.Key{AccountID: account, Region: "r", ID: "k"}
		w.identify(&k)
		ts := time.UnixMilli(ms)
		if ms == 0 {
			ts = time.UnixMilli(0).Add(time.Nanosecond) // not the zero time.Time, 0 ms
		}
		w.keyTime("m", ts)
		_, v, _ := strings.Cut(strings.TrimSpace(string(w.b)), "} ")
		var f float64
		if _, err := fmt.Sscan(v, &f); err != nil || f != seconds(ts) {
			t.Errorf("%d ms written as %q, want %v", ms, v, seconds(ts))
		}
	}
}

// BenchmarkPublishOneChange publishes, at 100,000 keys (two regions of
// 50,000), a snapshot in which one key changed since the last: what an
// event costs the exposition (issue 11: under 10 ms, against a full encode).
func BenchmarkPublishOneChange(b *testing.B) {
	rnd := rand.New(rand.NewPCG(3, 4))
	s := inventory(50000, rnd)
	c := publishedWith(Options{TagLabels: s.TagLabels}, s)
	b.Run("one-changed-key", func(b *testing.B) {
		i := 0
		for b.Loop() {
			t := s.Targets[i%2]
			nt := *t
			nt.Keys = slices.Clone(t.Keys)
			j := rnd.IntN(len(nt.Keys))
			k := *nt.Keys[j]
			k.Stale = !k.Stale
			nt.Keys[j] = &k
			next := &model.Snapshot{TagLabels: s.TagLabels, Targets: slices.Clone(s.Targets)}
			next.Targets[i%2] = &nt
			c.Publish(next)
			s = next
			i++
		}
	})
	b.Run("full", func(b *testing.B) {
		for b.Loop() {
			publishedWith(Options{TagLabels: s.TagLabels}, s)
		}
	})
}
