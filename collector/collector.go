// Package collector serves the inventory snapshot as Prometheus metrics.
//
// The series are encoded when a snapshot is published (on the refresh path),
// straight from the keys into compressed text exposition, and a scrape only
// writes the bytes out: a scrape never calls AWS, and its cost does not
// include encoding a million keys. Keys are encoded in blocks, in parallel;
// a block whose keys are all unchanged since the last publish (the same
// *model.Key, see model.TargetState.Keys) keeps what was encoded for it.
package collector

import (
	"hash/maphash"
	"log/slog"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kms-exporter/kms_exporter/model"
	"github.com/kms-exporter/kms_exporter/policy"
)

// The values of Options.PerKey.
const (
	// PerKeyAll serves the per-key series of every key.
	PerKeyAll = "all"
	// PerKeyAttention serves per-key series only for keys that need
	// attention (see NeedsAttention); the per-target counts cover all.
	PerKeyAttention = "attention"
)

// Options says what the collector serves.
type Options struct {
	// TagLabels are the tag keys exposed on kms_key_info (as labels named
	// tag_<key>).
	TagLabels []string
	// PerKey is PerKeyAll ("" means the same) or PerKeyAttention.
	PerKey string
	// Include says whether a metric family is served; nil: every one.
	Include func(family string) bool
}

// Collector owns the current snapshot and its metrics, encoded once when
// the snapshot is published (inventory.Publisher), and serves them through
// Handler. As a prometheus.Collector it yields its own metrics: the cost and
// size of what it serves.
type Collector struct {
	opts    Options
	logger  *slog.Logger
	keyFams []family // per-key families served, in order
	tgtFams []family // per-target families served, in order
	order   []int    // families served, by name: i < len(keyFams) per key, else per target
	headers []piece  // each family's HELP and TYPE lines, compressed
	// buffers keeps the text buffers of encodeBlocks' workers ([]lines, one
	// per per-key family) between publishes.
	buffers sync.Pool

	mu      sync.Mutex // serialises Publish
	current atomic.Pointer[published]

	publishSeconds *prometheus.Desc
	series         *prometheus.Desc
	bytes          *prometheus.Desc
	lastPublish    atomic.Int64 // nanoseconds
}

// published is a snapshot with its encoded metrics: swapped as one.
type published struct {
	snapshot *model.Snapshot
	body     stream
	// blocks are the encoded blocks by their first key, for the next
	// publish to reuse.
	blocks map[*model.Key]*block
}

// block is a run of a target's keys with their series, one piece per
// per-key family.
type block struct {
	keys   []*model.Key
	pieces []piece
	// until is when a key of the block left out by PerKeyAttention will
	// need attention (see attentionFrom); zero: never. The block is
	// encoded again from then.
	until time.Time
	// open: the block ends where the keys did, not where a cut ends one.
	open  bool
	tally tally
}

// New returns a Collector serving an empty snapshot.
func New(o Options, logger *slog.Logger) *Collector {
	if o.PerKey == "" {
		o.PerKey = PerKeyAll
	}
	c := &Collector{opts: o, logger: logger,
		publishSeconds: prometheus.NewDesc("kms_exporter_publish_duration_seconds",
			"How long encoding the metrics of the last published snapshot took.", nil, nil),
		series: prometheus.NewDesc("kms_exporter_inventory_series",
			"Series of the inventory served at the metrics path, after --metrics.per-key and the metric family lists.", nil, nil),
		bytes: prometheus.NewDesc("kms_exporter_inventory_bytes",
			"Size of the inventory's series as served: plain text, and the gzip-compressed form kept in memory.", []string{"encoding"}, nil),
	}
	for _, f := range families(o.TagLabels) {
		if o.Include != nil && !o.Include(f.name) {
			continue
		}
		if f.key != nil {
			c.keyFams = append(c.keyFams, f)
		} else {
			c.tgtFams = append(c.tgtFams, f)
		}
	}
	all := slices.Concat(c.keyFams, c.tgtFams)
	c.order = make([]int, len(all))
	for i := range all {
		c.order[i] = i
	}
	slices.SortFunc(c.order, func(a, b int) int { return strings.Compare(all[a].name, all[b].name) })
	for _, f := range all {
		c.headers = append(c.headers, compressOnce(f.header(), 0))
	}
	c.current.Store(&published{snapshot: &model.Snapshot{TagLabels: o.TagLabels}})
	return c
}

// FamilyNames returns the name of every metric family of the inventory.
func FamilyNames() []string {
	var out []string
	for _, f := range families(nil) {
		out = append(out, f.name)
	}
	return out
}

var invalidLabelChars = regexp.MustCompile(`[^a-zA-Z0-9_]`)

// TagLabelName is the label name for a tag key: tag_ and the key with every
// character that a label name cannot hold replaced by an underscore.
func TagLabelName(tag string) string {
	return "tag_" + invalidLabelChars.ReplaceAllString(tag, "_")
}

// NeedsAttention says whether a key's series are served with
// --metrics.per-key=attention at now: it is noncompliant, unknown or exempt
// (its exemption ends), its verdict is stale, it is scheduled for deletion
// (with a date, or a multi-Region primary waiting for its replicas' deletion:
// KMSKeyPendingReplicaDeletion), it has few on-demand rotations left
// (KMSKeyOnDemandRotationsLow), or by now it needs attention for a date (see
// attentionFrom).
func NeedsAttention(k *model.Key, now time.Time) bool {
	switch k.Verdict.Get().Status {
	case policy.Noncompliant, policy.Unknown, policy.Exempt:
		return true
	}
	if h := k.RotationHistory(); h != nil && h.OnDemandLeft() <= OnDemandLow {
		return true
	}
	return k.Stale || k.DeletionDate != nil || k.Meta.Get().KeyState == "PendingReplicaDeletion" || !now.Before(attentionFrom(k))
}

// OnDemandLow is the most on-demand rotations left at which a key needs
// attention: the threshold of the KMSKeyOnDemandRotationsLow alert.
const OnDemandLow = 5

// attentionFrom is when a key comes to need attention as time passes: its
// next rotation date (KMSKeyNextRotationOverdue watches those), or, while
// it rotates, when its key material grows older than its rotation period
// (KMSKeyRotationNotHappening); far in the future when neither is known.
func attentionFrom(k *model.Key) time.Time {
	r := k.Rotation
	if r == nil {
		return never
	}
	at := never
	if !r.NextRotation.IsZero() {
		at = r.NextRotation
	}
	if h := k.RotationHistory(); h != nil && r.Enabled {
		period := int(r.PeriodDays)
		if period == 0 {
			period = policy.DefaultRotationPeriodDays
		}
		if old := h.MaterialSince(k.CreationDate).AddDate(0, 0, period); old.Before(at) {
			at = old
		}
	}
	return at
}

var never = time.Unix(1<<62, 0)

// Snapshot returns the current snapshot.
func (c *Collector) Snapshot() *model.Snapshot { return c.current.Load().snapshot }

// Publish makes s the current snapshot, with its metrics encoded once;
// later scrapes serve the bytes as they are. s must not change afterwards.
func (c *Collector) Publish(s *model.Snapshot) {
	c.mu.Lock()
	defer c.mu.Unlock()
	start := time.Now()
	prev := c.current.Load()

	// Cut every target's keys into blocks; reuse what was encoded for a
	// block of the same keys, encode the others in parallel.
	var blocks, todo []*block
	perTarget := make([][]*block, len(s.Targets))
	for i, t := range s.Targets {
		var fresh []*block
		perTarget[i], fresh = prev.blocksOf(t.Keys, c.blockMean(), start)
		blocks = append(blocks, perTarget[i]...)
		todo = append(todo, fresh...)
	}
	c.encodeBlocks(todo, start)

	comp := compressors.Get().(*compressor)
	defer compressors.Put(comp)
	next := &published{snapshot: s, blocks: make(map[*model.Key]*block, len(blocks))}
	for _, b := range blocks {
		next.blocks[b.keys[0]] = b
	}
	tallies := make([]tally, len(s.Targets))
	for j := range s.Targets {
		for _, b := range perTarget[j] {
			tallies[j].sum(&b.tally)
		}
	}
	next.body.pieces = make([]piece, 0, len(c.order)*(1+len(blocks)))
	// from[i] is the block's piece that the body's i-th piece is, nil for
	// the headers and the per-target families (see stream.join).
	from := make([]*piece, 0, cap(next.body.pieces))
	add := func(p piece, of *piece) {
		if p.size > 0 {
			next.body.add(p)
			from = append(from, of)
		}
	}
	for _, i := range c.order {
		if i < len(c.keyFams) {
			if !slices.ContainsFunc(blocks, func(b *block) bool { return b.pieces[i].lines > 0 }) {
				continue // a family without series is not served
			}
			add(c.headers[i], nil)
			for _, b := range blocks {
				add(b.pieces[i], &b.pieces[i])
			}
			continue
		}
		w := lines{}
		for j, t := range s.Targets {
			c.tgtFams[i-len(c.keyFams)].target(&w, t, &tallies[j])
		}
		if w.n > 0 {
			add(c.headers[i], nil)
			add(comp.compress(w.b, w.n), nil)
		}
	}
	if next.body.zsize <= joinedPerKey*keyCount(s) {
		next.body.join(from)
	} else {
		next.body.detach(from)
	}
	c.current.Store(next)
	c.lastPublish.Store(int64(time.Since(start)))
}

// joinedPerKey is the most compressed bytes per key of a body kept in one
// piece of memory (see stream.join): an attention-mode body, a few tens of
// bytes per key, is; an all-mode body, a few hundred, is not, as the copy
// at every publish would hold it twice in the memory a publish peaks at.
const joinedPerKey = 64

func keyCount(s *model.Snapshot) (n int) {
	for _, t := range s.Targets {
		n += len(t.Keys)
	}
	return n
}

// Average keys in a block, by per-key mode; a block holds at most four
// times as many. Where a block ends depends on the key ids only (a key whose
// id hashes to a multiple of the mean ends one), so a key created or deleted
// changes the block it is in and no other.
// The smaller the blocks, the less a change costs to publish (a block of 128
// keys encodes in about half a millisecond), and the more pieces a body has,
// each with its own Huffman tables and a cost at every scrape (about 170 ns
// apiece on the benchmark's machine). In attention mode a block encodes the
// few of its keys that need attention: blocks eight times as large hold about
// as many series as a block in the other modes, and a body of a million keys
// has 8,000 pieces rather than 100,000.
const (
	blockMean          = 128
	attentionBlockMean = 8 * blockMean
)

// blockMean is the average keys in a block of this collector's blocks.
func (c *Collector) blockMean() int {
	if c.opts.PerKey == PerKeyAttention {
		return attentionBlockMean
	}
	return blockMean
}

var blockSeed = maphash.MakeSeed()

// blocksOf cuts a target's keys into blocks: those of the last publish (p)
// where the same keys follow one another as then, new ones elsewhere (fresh,
// to encode). The cost is a comparison of pointers per key and a hash per
// key of a new block: a publish after one key changed hashes one block.
func (p *published) blocksOf(keys []*model.Key, mean int, now time.Time) (blocks, fresh []*block) {
	for i := 0; i < len(keys); {
		// Each block starts where a cut of keys from the first would start
		// one; so does an earlier block of the same keys, provided it ended
		// as a cut ends one (not at the end of the keys, unless it still does).
		if b, ok := p.blocks[keys[i]]; ok && i+len(b.keys) <= len(keys) && (!b.open || i+len(b.keys) == len(keys)) &&
			slices.Equal(b.keys, keys[i:i+len(b.keys)]) && now.Before(b.until) {
			blocks = append(blocks, b)
			i += len(b.keys)
			continue
		}
		n, open := blockLen(keys[i:], mean)
		b := &block{keys: keys[i : i+n], open: open}
		blocks = append(blocks, b)
		fresh = append(fresh, b)
		i += n
	}
	return blocks, fresh
}

// blockLen returns how many of keys the block starting at keys[0] holds,
// and whether it ends because keys do (else at a key whose id ends blocks
// of this mean, or at four times the mean).
func blockLen(keys []*model.Key, mean int) (n int, open bool) {
	for i, k := range keys {
		if i+1 >= 4*mean || maphash.String(blockSeed, k.ID)%uint64(mean) == 0 {
			return i + 1, false
		}
	}
	return len(keys), true
}

// tally counts keys by verdict status and staleness: the per-target
// families are sums of their blocks' tallies, so that a publish does not
// visit every key.
type tally struct {
	status [len(policy.Statuses)]int // by index in policy.Statuses
	stale  int
}

func (t *tally) add(k *model.Key) {
	if i := slices.Index(policy.Statuses[:], k.Verdict.Get().Status); i >= 0 {
		t.status[i]++
	}
	if k.Stale {
		t.stale++
	}
}

func (t *tally) sum(o *tally) {
	for i, n := range o.status {
		t.status[i] += n
	}
	t.stale += o.stale
}

// encodeBlocks encodes the series of the blocks, on every CPU.
func (c *Collector) encodeBlocks(todo []*block, now time.Time) {
	next := atomic.Int64{}
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(todo)) {
		wg.Go(func() {
			comp := compressors.Get().(*compressor)
			defer compressors.Put(comp)
			ws, _ := c.buffers.Get().([]lines)
			if ws == nil {
				ws = make([]lines, len(c.keyFams))
			}
			defer c.buffers.Put(ws)
			for {
				i := int(next.Add(1)) - 1
				if i >= len(todo) {
					return
				}
				b := todo[i]
				for f := range ws {
					ws[f].b, ws[f].n = ws[f].b[:0], 0
				}
				b.until = never
				for _, k := range b.keys {
					b.tally.add(k)
					if c.opts.PerKey == PerKeyAttention && !NeedsAttention(k, now) {
						if next := attentionFrom(k); next.Before(b.until) {
							b.until = next
						}
						continue
					}
					ws[0].identify(k)
					for f := range ws {
						ws[f].accountKey, ws[f].region, ws[f].ids = ws[0].accountKey, ws[0].region, ws[0].ids
						c.keyFams[f].key(&ws[f], k)
					}
				}
				b.pieces = make([]piece, len(ws))
				for f := range ws {
					b.pieces[f] = comp.compress(ws[f].b, ws[f].n)
				}
			}
		})
	}
	wg.Wait()
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.publishSeconds
	ch <- c.series
	ch <- c.bytes
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	body := &c.current.Load().body
	ch <- prometheus.MustNewConstMetric(c.publishSeconds, prometheus.GaugeValue, time.Duration(c.lastPublish.Load()).Seconds())
	ch <- prometheus.MustNewConstMetric(c.series, prometheus.GaugeValue, float64(body.lines))
	ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.GaugeValue, float64(body.size), "plain")
	ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.GaugeValue, float64(body.zsize), "gzip")
}
