package collector

import (
	"bytes"
	"compress/gzip"
	"log/slog"
	"net/http"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
)

// The exposition format served. Every Prometheus version accepts it.
var textFormat = expfmt.NewFormat(expfmt.TypeTextPlain)

// exposition is a snapshot's metrics encoded once, plain and gzip-compressed.
type exposition struct {
	text []byte
	gz   []byte
}

// sliceCollector hands over a fixed list of metrics (an unchecked collector).
type sliceCollector []prometheus.Metric

func (sliceCollector) Describe(chan<- *prometheus.Desc) {}
func (s sliceCollector) Collect(ch chan<- prometheus.Metric) {
	for _, m := range s {
		ch <- m
	}
}

// encode renders metrics as sorted text exposition, and gzipped.
func encode(metrics []prometheus.Metric) (*exposition, error) {
	reg := prometheus.NewRegistry()
	if err := reg.Register(sliceCollector(metrics)); err != nil {
		return nil, err
	}
	mfs, err := reg.Gather()
	if err != nil {
		return nil, err
	}
	var text bytes.Buffer
	enc := expfmt.NewEncoder(&text, textFormat)
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			return nil, err
		}
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	if _, err := zw.Write(text.Bytes()); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return &exposition{text: text.Bytes(), gz: gz.Bytes()}, nil
}

// Handler serves the metrics of g (the exporter's own: Go, process, build,
// API counters) followed by the collector's, which were encoded once per
// refresh. With gzip the response is two gzip members, which every gzip
// reader (Prometheus's included) reads as one stream. g must not also hold
// this collector.
func (c *Collector) Handler(g prometheus.Gatherer, logger *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mfs, err := g.Gather()
		if err != nil {
			logger.Error("gathering the exporter's own metrics failed", "err", err)
			http.Error(w, "gathering metrics failed: "+err.Error(), http.StatusInternalServerError)
			return
		}
		var live bytes.Buffer
		enc := expfmt.NewEncoder(&live, textFormat)
		for _, mf := range mfs {
			if err := enc.Encode(mf); err != nil {
				logger.Error("encoding metrics failed", "err", err)
				http.Error(w, "encoding metrics failed", http.StatusInternalServerError)
				return
			}
		}
		exp := c.current.Load().exposition
		h := w.Header()
		h.Set("Content-Type", string(textFormat))
		h.Add("Vary", "Accept-Encoding")
		if !acceptsGzip(r.Header.Get("Accept-Encoding")) {
			h.Set("Content-Length", strconv.Itoa(live.Len()+len(exp.text)))
			_, _ = w.Write(live.Bytes())
			_, _ = w.Write(exp.text)
			return
		}
		h.Set("Content-Encoding", "gzip")
		zw := gzip.NewWriter(w)
		_, _ = zw.Write(live.Bytes())
		if err := zw.Close(); err != nil {
			return
		}
		_, _ = w.Write(exp.gz)
	})
}

// acceptsGzip reads an Accept-Encoding header.
func acceptsGzip(header string) bool {
	for _, part := range strings.Split(header, ",") {
		name, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if !strings.EqualFold(strings.TrimSpace(name), "gzip") {
			continue
		}
		q, ok := strings.CutPrefix(strings.ReplaceAll(params, " ", ""), "q=")
		if !ok {
			return true
		}
		v, err := strconv.ParseFloat(q, 64)
		return err == nil && v > 0
	}
	return false
}
