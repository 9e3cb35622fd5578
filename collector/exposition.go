package collector

import (
	"bufio"
	"bytes"
	"compress/gzip"
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
		own := compressOnce(live.Bytes(), 0)
		pieces := make([][]byte, 0, len(body.pieces)+4)
		pieces = append(pieces, gzipHeader, own.data)
		if body.joined != nil {
			pieces = append(pieces, body.joined)
		} else {
			for _, p := range body.pieces {
				pieces = append(pieces, p.data)
			}
		}
		size := own.size + body.size
		pieces = append(pieces, finalBlock, trailer(crc32Combine(own.crc, body.crc, int64(body.size)), size))

		zsize := 0
		for _, p := range pieces {
			zsize += len(p)
		}

		h := w.Header()
		h.Set("Content-Type", string(textFormat))
		h.Add("Vary", "Accept-Encoding")
		gz := acceptsGzip(r.Header.Get("Accept-Encoding"))
		if gz {
			h.Set("Content-Encoding", "gzip")
			h.Set("Content-Length", strconv.Itoa(zsize))
		} else {
			h.Set("Content-Length", strconv.Itoa(size))
		}
		if r.Method == http.MethodHead {
			return
		}
		// The pieces are thousands of a few KB each at a million keys: one
		// write each costs a system call apiece, three times the time of
		// the same bytes in large writes. They go out through a buffer of
		// up to writeBuffer bytes instead.
		out := bufio.NewWriterSize(w, min(max(zsize, size/8), writeBuffer))
		if gz {
			_, err = (*net.Buffers)(&pieces).WriteTo(out)
		} else {
			var zr *gzip.Reader
			if zr, err = gzip.NewReader((*net.Buffers)(&pieces)); err == nil {
				_, err = out.ReadFrom(zr)
			}
		}
		if err == nil {
			err = out.Flush()
		}
		if err != nil {
			logger.Debug("writing the metrics failed", "err", err)
		}
	})
}

// writeBuffer bounds the buffer a scrape writes through.
const writeBuffer = 1 << 20

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
