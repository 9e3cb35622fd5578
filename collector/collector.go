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
	headers [][]byte

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
	// need attention (its next rotation is due); zero: never. The block is
	// encoded again from then.
	until time.Time
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
		c.headers = append(c.headers, f.header())
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
// (its exemption ends), its verdict is stale, it is scheduled for deletion,
// or its next rotation is due (KMSKeyNextRotationOverdue watches those).
func NeedsAttention(k *model.Key, now time.Time) bool {
	switch k.Verdict.Status {
	case policy.Noncompliant, policy.Unknown, policy.Exempt:
		return true
	}
	return k.Stale || !k.DeletionDate.IsZero() || !now.Before(nextRotation(k))
}

// nextRotation is a key's next rotation date; far in the future when none
// is known.
func nextRotation(k *model.Key) time.Time {
	if k.Rotation == nil || k.Rotation.NextRotation.IsZero() {
		return never
	}
	return k.Rotation.NextRotation
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
	var blocks []*block
	var todo []*block
	for _, t := range s.Targets {
		for _, keys := range cut(t.Keys) {
			if b, ok := prev.blocks[keys[0]]; ok && slices.Equal(b.keys, keys) && start.Before(b.until) {
				blocks = append(blocks, b)
				continue
			}
			b := &block{keys: keys}
			blocks = append(blocks, b)
			todo = append(todo, b)
		}
	}
	c.encodeBlocks(todo, start)

	comp := newCompressor()
	next := &published{snapshot: s, blocks: make(map[*model.Key]*block, len(blocks))}
	for _, b := range blocks {
		next.blocks[b.keys[0]] = b
	}
	for _, i := range c.order {
		var ps []piece
		if i < len(c.keyFams) {
			for _, b := range blocks {
				ps = append(ps, b.pieces[i])
			}
		} else {
			w := lines{}
			for _, t := range s.Targets {
				c.tgtFams[i-len(c.keyFams)].target(&w, t)
			}
			ps = append(ps, comp.compress(w.b, w.n))
		}
		if !slices.ContainsFunc(ps, func(p piece) bool { return p.lines > 0 }) {
			continue // a family without series is not served
		}
		next.body.add(comp.compress(c.headers[i], 0))
		for _, p := range ps {
			next.body.add(p)
		}
	}
	c.current.Store(next)
	c.lastPublish.Store(int64(time.Since(start)))
}

// Average and most keys in a block. Where a block ends depends on the key
// ids only (a key whose id hashes to a multiple of blockMean ends one), so a
// key created or deleted changes the block it is in and no other.
const (
	blockMean = 512
	blockMax  = 4 * blockMean
)

var blockSeed = maphash.MakeSeed()

// cut splits keys into blocks.
func cut(keys []*model.Key) [][]*model.Key {
	var out [][]*model.Key
	start := 0
	for i, k := range keys {
		if n := i + 1 - start; n >= blockMax || maphash.String(blockSeed, k.ID)%blockMean == 0 {
			out = append(out, keys[start:i+1])
			start = i + 1
		}
	}
	if start < len(keys) {
		out = append(out, keys[start:])
	}
	return out
}

// encodeBlocks encodes the series of the blocks, on every CPU.
func (c *Collector) encodeBlocks(todo []*block, now time.Time) {
	next := atomic.Int64{}
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(todo)) {
		wg.Go(func() {
			comp := newCompressor()
			ws := make([]lines, len(c.keyFams))
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
					if c.opts.PerKey == PerKeyAttention && !NeedsAttention(k, now) {
						if next := nextRotation(k); next.Before(b.until) {
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
