package collector

import (
	"bytes"
	"cmp"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/kms-exporter/kms_exporter/model"
	"github.com/kms-exporter/kms_exporter/policy"
)

const (
	cached = " Cached: read from AWS at every refresh (--refresh.interval), not at scrape time."
	// cachedHistory is the suffix of the families of the rotation history.
	cachedHistory = " Cached: ListKeyRotations is read when a key is first seen and again only where the history can have changed (a rotation seen, its next rotation date passed), never at scrape time."
)

// family is one metric family of the inventory: the series of one key, or of
// one target, appended as text exposition lines.
type family struct {
	name, help string
	// cached is how its values are read, after help; "": the suffix cached.
	cached string
	key    func(w *lines, k *model.Key) // after w.identify(k)
	// target writes a target's series; n counts its keys.
	target func(w *lines, t *model.TargetState, n *tally)
}

// families are the inventory's metric families in the order served (sorted
// by name). Labels are written sorted by name, as client_golang writes them
// (so that a line of this exporter reads the same as any other's).
func families(tagLabels []string) []family {
	tagNames := make([]string, len(tagLabels))
	tagOrder := make([]int, len(tagLabels)) // indexes of tagNames, sorted by name
	for i, t := range tagLabels {
		tagNames[i], tagOrder[i] = TagLabelName(t), i
	}
	slices.SortFunc(tagOrder, func(a, b int) int { return strings.Compare(tagNames[a], tagNames[b]) })
	return []family{
		{name: "kms_key_compliance", help: "Rotation verdict of the key: always 1, one series per key, the verdict in status (compliant, noncompliant, not_applicable, unknown, exempt) and why in reason (an AWS error code for unknown).",
			key: func(w *lines, k *model.Key) {
				w.open("kms_key_compliance")
				w.raw(w.accountKey)
				w.label("reason", k.Verdict.Get().Reason)
				w.raw(w.region)
				w.label("status", string(k.Verdict.Get().Status))
				w.value(1)
			}},
		{name: "kms_key_creation_timestamp_seconds", help: "When the key was created.",
			key: func(w *lines, k *model.Key) { w.keyTime("kms_key_creation_timestamp_seconds", k.CreationDate) }},
		{name: "kms_key_deletion_timestamp_seconds", help: "When a key pending deletion will be deleted.",
			key: func(w *lines, k *model.Key) { w.keyTime("kms_key_deletion_timestamp_seconds", k.Deletion()) }},
		{name: "kms_key_info", help: "Metadata of a KMS key, always 1; alias holds the key's aliases, comma-separated and sorted.",
			key: func(w *lines, k *model.Key) {
				meta := k.Meta.Get()
				w.open("kms_key_info")
				w.label("account_id", k.AccountID)
				w.labelJoined("alias", k.Aliases)
				w.label("key_arn", k.ARN)
				w.label("key_id", k.ID)
				w.label("key_manager", meta.KeyManager)
				w.label("key_spec", meta.KeySpec)
				w.label("key_state", meta.KeyState)
				w.label("key_usage", meta.KeyUsage)
				w.label("multi_region_type", k.MultiRegionType())
				w.label("origin", meta.Origin)
				w.label("region", k.Region)
				for _, i := range tagOrder {
					v := ""
					if i < len(k.TagValues) {
						v = k.TagValues[i]
					}
					w.label(tagNames[i], v)
				}
				w.value(1)
			}},
		{name: "kms_key_last_rotation_timestamp_seconds", help: "When the key material last rotated (automatically or on demand), from ListKeyRotations; absent for a key never rotated (its material is as old as the key: kms_key_creation_timestamp_seconds) and where the history was not read.", cached: cachedHistory,
			key: func(w *lines, k *model.Key) {
				if h := k.RotationHistory(); h != nil {
					w.keyTime("kms_key_last_rotation_timestamp_seconds", h.LastRotation)
				}
			}},
		{name: "kms_key_next_rotation_timestamp_seconds", help: "When AWS will next rotate the key material, where AWS reports it.",
			key: func(w *lines, k *model.Key) {
				if k.Rotation != nil {
					w.keyTime("kms_key_next_rotation_timestamp_seconds", k.Rotation.NextRotation)
				}
			}},
		{name: "kms_key_on_demand_rotations_remaining", help: "On-demand rotations the key may still have of the 25 KMS allows a key, ever (RotateKeyOnDemand); present where the rotation history was read.", cached: cachedHistory,
			key: func(w *lines, k *model.Key) {
				if h := k.RotationHistory(); h != nil {
					w.key("kms_key_on_demand_rotations_remaining")
					w.value(float64(h.OnDemandLeft()))
				}
			}},
		{name: "kms_key_rotation_enabled", help: "Whether automatic rotation of the key material is enabled (1) or not (0); present only where GetKeyRotationStatus was read.",
			key: func(w *lines, k *model.Key) {
				if k.Rotation != nil {
					w.key("kms_key_rotation_enabled")
					w.value(boolValue(k.Rotation.Enabled))
				}
			}},
		{name: "kms_key_rotation_exemption_expiry_timestamp_seconds", help: "When the key's rotation exemption ends (the day after its -until tag date, 00:00 UTC).",
			key: func(w *lines, k *model.Key) {
				if k.Verdict.Get().ExemptionReason != "" {
					w.keyTime("kms_key_rotation_exemption_expiry_timestamp_seconds", k.Verdict.Get().ExemptionExpiry)
				}
			}},
		{name: "kms_key_rotation_exemption_info", help: "Always 1 for a key carrying a rotation exemption tag; reason is the tag's text.",
			key: func(w *lines, k *model.Key) {
				if k.Verdict.Get().ExemptionReason != "" {
					w.open("kms_key_rotation_exemption_info")
					w.raw(w.accountKey)
					w.label("reason", k.Verdict.Get().ExemptionReason)
					w.raw(w.region)
					w.value(1)
				}
			}},
		{name: "kms_key_rotation_period_seconds", help: "Automatic rotation period of the key, where AWS reports one.",
			key: func(w *lines, k *model.Key) {
				if k.Rotation != nil && k.Rotation.PeriodDays > 0 {
					w.key("kms_key_rotation_period_seconds")
					w.value(float64(k.Rotation.PeriodDays) * 86400)
				}
			}},
		{name: "kms_key_rotations", help: "Completed rotations of the key material by rotation_type (automatic, on_demand), as ListKeyRotations lists them; present where the rotation history was read (for keys in scope).", cached: cachedHistory,
			key: func(w *lines, k *model.Key) {
				if h := k.RotationHistory(); h != nil {
					w.key("kms_key_rotations")
					w.label("rotation_type", "automatic")
					w.value(float64(h.Automatic))
					w.key("kms_key_rotations")
					w.label("rotation_type", "on_demand")
					w.value(float64(h.OnDemand))
				}
			}},
		{name: "kms_key_stale", help: "Always 1 for a key whose last read failed for a transient reason (error_code) and which still shows the verdict of its last successful read, for up to --refresh.max-stale-age.",
			key: func(w *lines, k *model.Key) {
				if k.Stale {
					w.open("kms_key_stale")
					w.label("account_id", k.AccountID)
					w.label("error_code", k.ReadError)
					w.label("key_id", k.ID)
					w.label("region", k.Region)
					w.value(1)
				}
			}},
		{name: "kms_keys", help: "Number of keys by verdict status.",
			target: func(w *lines, t *model.TargetState, n *tally) {
				for i, st := range policy.Statuses {
					w.target("kms_keys", t)
					w.label("status", string(st))
					w.value(float64(n.status[i]))
				}
			}},
		{name: "kms_keys_stale", help: "Number of keys showing the verdict of an earlier refresh because reading them (or listing the region) failed since; see kms_key_stale.",
			target: func(w *lines, t *model.TargetState, n *tally) {
				w.target("kms_keys_stale", t)
				w.value(float64(n.stale))
			}},
		{name: "kms_last_refresh_timestamp_seconds", help: "When the last successful refresh of this account and region started; the age of the data served.",
			target: func(w *lines, t *model.TargetState, _ *tally) {
				if !t.LastSuccess.IsZero() {
					w.target("kms_last_refresh_timestamp_seconds", t)
					w.value(seconds(t.LastSuccess))
				}
			}},
		{name: "kms_refresh_duration_seconds", help: "How long the last refresh of this account and region took.",
			target: func(w *lines, t *model.TargetState, _ *tally) {
				w.target("kms_refresh_duration_seconds", t)
				w.value(t.Duration.Seconds())
			}},
		{name: "kms_refresh_success", help: "Whether the last refresh of this account and region succeeded (1) or failed (0); on failure the last good data is still served.",
			target: func(w *lines, t *model.TargetState, _ *tally) {
				w.target("kms_refresh_success", t)
				w.value(boolValue(t.Success))
			}},
	}
}

// header is a family's HELP and TYPE lines.
func (f *family) header() []byte {
	b := append([]byte("# HELP "), f.name...)
	b = append(b, ' ')
	b = appendEscaped(b, f.help+cmp.Or(f.cached, cached), false)
	b = append(b, "\n# TYPE "...)
	b = append(b, f.name...)
	return append(b, " gauge\n"...)
}

// lines appends series in the text exposition format (version 0.0.4).
type lines struct {
	b     []byte
	n     int  // series appended
	first bool // no label yet in the open series
	// The labels of the key being written (see identify): most of its
	// series have them, escaped once.
	accountKey, region, ids []byte
}

// identify readies the labels of k shared by its series.
func (w *lines) identify(k *model.Key) {
	b := append(w.ids[:0], `account_id="`...)
	b = appendEscaped(b, k.AccountID, true)
	b = append(b, `",key_id="`...)
	b = appendEscaped(b, k.ID, true)
	n := len(b) + 1
	b = append(b, `",region="`...)
	b = appendEscaped(b, k.Region, true)
	b = append(b, '"')
	w.ids, w.accountKey, w.region = b, b[:n], b[n+1:]
}

// raw appends labels already written out.
func (w *lines) raw(labels []byte) {
	if !w.first {
		w.b = append(w.b, ',')
	}
	w.first = false
	w.b = append(w.b, labels...)
}

func (w *lines) open(name string) {
	w.b = append(w.b, name...)
	w.b = append(w.b, '{')
	w.first = true
}

// key opens a series of a key, with its identifying labels (and no other).
func (w *lines) key(name string) {
	w.open(name)
	w.raw(w.ids)
}

// keyTime appends a per-key timestamp series, unless t is zero.
func (w *lines) keyTime(name string, t time.Time) {
	if t.IsZero() {
		return
	}
	w.key(name)
	ms := t.UnixMilli()
	if ms < 0 {
		w.value(seconds(t))
		return
	}
	// Seconds with milliseconds, written exactly: the float Prometheus
	// parses is seconds(t).
	w.b = append(w.b, '}', ' ')
	w.b = strconv.AppendInt(w.b, ms/1000, 10)
	if frac := ms % 1000; frac != 0 {
		w.b = append(w.b, '.', byte('0'+frac/100), byte('0'+frac/10%10), byte('0'+frac%10))
		w.b = bytes.TrimRight(w.b, "0")
	}
	w.b = append(w.b, '\n')
	w.n++
}

// target opens a series of an account and region.
func (w *lines) target(name string, t *model.TargetState) {
	w.open(name)
	w.label("account_id", t.AccountID)
	w.label("region", t.Region)
}

func (w *lines) label(name, value string) {
	if !w.first {
		w.b = append(w.b, ',')
	}
	w.first = false
	w.b = append(w.b, name...)
	w.b = append(w.b, '=', '"')
	w.b = appendEscaped(w.b, value, true)
	w.b = append(w.b, '"')
}

// labelJoined appends a label whose value is values joined by commas.
func (w *lines) labelJoined(name string, values []string) {
	if len(values) == 1 {
		w.label(name, values[0])
		return
	}
	w.label(name, strings.Join(values, ","))
}

// value closes the open series with its value.
func (w *lines) value(v float64) {
	w.b = append(w.b, '}', ' ')
	switch {
	case v == 1:
		w.b = append(w.b, '1')
	case v == 0:
		w.b = append(w.b, '0')
	case math.IsNaN(v):
		w.b = append(w.b, "NaN"...)
	case math.IsInf(v, +1):
		w.b = append(w.b, "+Inf"...)
	case math.IsInf(v, -1):
		w.b = append(w.b, "-Inf"...)
	case v == math.Trunc(v) && math.Abs(v) < 1<<53:
		w.b = strconv.AppendInt(w.b, int64(v), 10)
	default:
		w.b = strconv.AppendFloat(w.b, v, 'g', -1, 64)
	}
	w.b = append(w.b, '\n')
	w.n++
}

// plain marks the bytes a label value or HELP text holds as they are.
var plain = func() (t [256]bool) {
	for c := 0; c < utf8.RuneSelf; c++ {
		t[c] = c != '\\' && c != '\n' && c != '"'
	}
	return t
}()

// appendEscaped appends s escaped as the text format wants: backslash and
// newline always, double quotes in label values. Invalid UTF-8 (which the
// format does not allow) becomes U+FFFD.
func appendEscaped(b []byte, s string, quote bool) []byte {
	for i := 0; i < len(s); i++ {
		if !plain[s[i]] {
			return appendEscapedSlow(append(b, s[:i]...), s[i:], quote)
		}
	}
	return append(b, s...)
}

func appendEscapedSlow(b []byte, s string, quote bool) []byte {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\':
			b = append(b, '\\', '\\')
		case c == '\n':
			b = append(b, '\\', 'n')
		case c == '"' && quote:
			b = append(b, '\\', '"')
		default:
			b = append(b, c)
		}
	}
	return b
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func seconds(t time.Time) float64 { return float64(t.UnixMilli()) / 1000 }
