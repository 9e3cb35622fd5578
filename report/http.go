package report

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kms-exporter/kms_exporter/model"
)

// Handler serves the evidence report of the current snapshot, read-only: it
// never calls AWS, and shows what the last refreshes read. GET (or HEAD)
// answers the HTML page, ?format=csv the CSV report as a download.
type Handler struct {
	// Snapshot returns the current snapshot; nil when the report is not
	// enabled: every request is then answered 404, saying how to enable it.
	Snapshot func() *model.Snapshot
	// Now is the time the report is made at (material ages count to it);
	// nil: time.Now.
	Now func() time.Time
	// Ready tells whether the first refresh has finished; until then every
	// GET and HEAD is answered 503, not a report of no keys. nil: always.
	Ready func() bool

	once     sync.Once
	requests *prometheus.CounterVec
}

// The answers of the report's route, counted by Metrics.
var reportCodes = []int{http.StatusOK, http.StatusBadRequest, http.StatusNotFound, http.StatusMethodNotAllowed,
	http.StatusServiceUnavailable}

// Enabled tells whether the report is served.
func (h *Handler) Enabled() bool { return h.Snapshot != nil }

// Metrics returns the counter of the report's requests by HTTP status code.
func (h *Handler) Metrics() *prometheus.CounterVec {
	h.once.Do(func() {
		h.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kms_report_requests_total",
			Help: "Requests of the evidence report (/report, --web.enable-report) by HTTP status code.",
		}, []string{"code"})
		for _, c := range reportCodes {
			h.requests.WithLabelValues(strconv.Itoa(c))
		}
	})
	return h.requests
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	code := h.serve(w, r)
	h.Metrics().WithLabelValues(strconv.Itoa(code)).Inc()
}

// serve answers r and returns the status code it answered.
func (h *Handler) serve(w http.ResponseWriter, r *http.Request) int {
	header := w.Header()
	header.Set("Cache-Control", "no-store")
	header.Set("X-Content-Type-Options", "nosniff")
	header.Set("Referrer-Policy", "no-referrer")
	header.Set("Content-Security-Policy", headerPolicy)
	if !h.Enabled() {
		return refuse(w, http.StatusNotFound, "the report is not enabled (start the exporter with --web.enable-report)")
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		header.Set("Allow", "GET, HEAD")
		return refuse(w, http.StatusMethodNotAllowed, "only GET and HEAD are allowed")
	}
	format := r.URL.Query().Get("format")
	render := writeHTML
	switch format {
	case "", FormatHTML:
		header.Set("Content-Type", "text/html; charset=utf-8")
	case FormatCSV:
		render = writeCSV
		header.Set("Content-Type", "text/csv; charset=utf-8")
	default:
		return refuse(w, http.StatusBadRequest, fmt.Sprintf("unknown format %q: html (the default) or csv", format))
	}
	if h.Ready != nil && !h.Ready() {
		header.Set("Retry-After", "30")
		return refuse(w, http.StatusServiceUnavailable, "no refresh has finished since the exporter started: the report would show no keys")
	}
	now := time.Now
	if h.Now != nil {
		now = h.Now
	}
	e := newEvidence(h.Snapshot(), now())
	if format == FormatCSV {
		header.Set("Content-Disposition", fmt.Sprintf(`attachment; filename="kms-key-rotation-report-%s.csv"`, e.GeneratedAt.Format("20060102T150405Z")))
	}
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return http.StatusOK
	}
	// The report is written as it is made: an error now is the client's
	// connection, and the answer is already under way.
	out := bufio.NewWriterSize(w, 64<<10)
	if render(out, e) == nil {
		_ = out.Flush()
	}
	return http.StatusOK
}

// refuse answers a request the route does not serve, with the reason as JSON.
func refuse(w http.ResponseWriter, code int, reason string) int {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(struct {
		Error string `json:"error"`
	}{reason})
	return code
}
