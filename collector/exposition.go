package collector

import (
	"bytes"
	"compress/gzip"

	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
)

// The exposition format served. Every Prometheus version accepts it.
var textFormat = expfmt.NewFormat(expfmt.TypeTextPlain)

// Handler serves the metrics of g (the exporter's own: Go, process, build,
// API counters, this collector's) followed by the inventory's, which were
// encoded when their snapshot was published. With gzip (as Prometheus asks)
// the kept pieces are written out as they are, behind the exporter's own
// metrics compressed for this scrape. Without, the same stream is
// decompressed while it is written: only the compressed form is kept.
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
		body := &c.current.Load().body
		own := newCompressor().compress(live.Bytes(), 0)
		pieces := make([][]byte, 0, len(body.pieces)+4)
		pieces = append(pieces, gzipHeader, own.data)
		for _, p := range body.pieces {
			pieces = append(pieces, p.data)
		}
		size := own.size + body.size
		pieces = append(pieces, finalBlock, trailer(crc32Combine(own.crc, body.crc, int64(body.size)), size))

		h := w.Header()
		h.Set("Content-Type", string(textFormat))
		h.Add("Vary", "Accept-Encoding")
		if !acceptsGzip(r.Header.Get("Accept-Encoding")) {
			h.Set("Content-Length", strconv.Itoa(size))
			if r.Method == http.MethodHead {
				return
			}
			zr, err := gzip.NewReader((*net.Buffers)(&pieces))
			if err == nil {
				_, err = io.Copy(w, zr)
			}
			if err != nil {
				logger.Debug("writing the metrics failed", "err", err)
			}
			return
		}
		zsize := 0
		for _, p := range pieces {
			zsize += len(p)
		}
		h.Set("Content-Encoding", "gzip")
		h.Set("Content-Length", strconv.Itoa(zsize))
		if r.Method == http.MethodHead {
			return
		}
		for _, p := range pieces {
			if _, err := w.Write(p); err != nil {
				logger.Debug("writing the metrics failed", "err", err)
				return
			}
		}
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
