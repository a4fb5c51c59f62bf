// Package ops serves the operations listener: /metrics for Prometheus, /healthz (the
// process is alive) and /readyz (ready to serve). It is a separate listener so that a
// scrape or a probe never competes with GHL traffic and is never exposed with it.
package ops

import (
	"encoding/json"
	"net/http"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Check is one readiness component. Degraded components are reported but do not fail
// readiness: a sidecar whose Redis is down still serves on local fallbacks, and taking the
// pod out of service would turn a degraded cache into an outage of the app.
type Check struct {
	Name string
	// Status returns "ok" or a short description of what is wrong, and whether the
	// problem makes the sidecar unable to serve at all.
	Status func() (status string, fatal bool)
}

// Handler is the ops mux.
type Handler struct {
	mux      *http.ServeMux
	checks   []Check
	draining atomic.Bool
}

// New builds the ops handler for a registry and readiness checks.
func New(reg prometheus.Gatherer, checks ...Check) *Handler {
	h := &Handler{mux: http.NewServeMux(), checks: checks}
	h.mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{EnableOpenMetrics: true}))
	h.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	h.mux.HandleFunc("GET /readyz", h.ready)
	return h
}

// Drain makes /readyz fail, so load balancers stop sending new traffic while in-flight
// requests finish during shutdown.
func (h *Handler) Drain() { h.draining.Store(true) }

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

func (h *Handler) ready(w http.ResponseWriter, _ *http.Request) {
	out := map[string]string{}
	ready := !h.draining.Load()
	degraded := false
	if !ready {
		out["shutdown"] = "draining"
	}
	for _, c := range h.checks {
		s, fatal := c.Status()
		out[c.Name] = s
		if s != "ok" {
			degraded = true
		}
		if fatal {
			ready = false
		}
	}
	status := http.StatusOK
	state := "ready"
	switch {
	case !ready:
		status, state = http.StatusServiceUnavailable, "not ready"
	case degraded:
		state = "degraded"
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"status": state, "checks": out})
}
