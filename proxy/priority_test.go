package proxy

import (
	"net/http"
	"testing"

	"github.com/ghlproxy/ghlproxy/internal/metrics"
	"github.com/ghlproxy/ghlproxy/internal/promtest"
	"github.com/ghlproxy/ghlproxy/ratelimit"
)

// waits is how many grants the limiter gave in lane p.
func waits(t *testing.T, m *metrics.Metrics, p ratelimit.Priority) uint64 {
	return promtest.Samples(t, m.RateLimitWait.WithLabelValues(p.String()))
}

// X-Ghlproxy-Priority: background puts a request in the limiter's background lane and never
// reaches GHL; without it a request is in the app's lane; any other value is refused in
// GHL's error shape before anything is sent.
func TestPriorityHeader(t *testing.T) {
	up, seen := recordingUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"contact":{"id":"c1"}}`))
	})
	m := metrics.New()
	lim, err := ratelimit.New(ratelimit.Config{}, nil, m, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv, _ := newProxy(t, up.URL, func(c *Config) { c.Limiter, c.Metrics = lim, m })
	auth := map[string]string{"Authorization": "Bearer pit-1", "Version": "2021-07-28"}
	with := func(v string) map[string]string {
		h := map[string]string{headerPriority: v}
		for k, x := range auth {
			h[k] = x
		}
		return h
	}
	for _, p := range []string{"/contacts/c1", "/unknown/route"} {
		if resp, body := do(t, "GET", srv.URL+p, "", with("Background")); resp.StatusCode != 200 {
			t.Fatalf("GET %s in the background lane: %d %s", p, resp.StatusCode, body)
		}
	}
	if resp, body := do(t, "GET", srv.URL+"/contacts/c2", "", auth); resp.StatusCode != 200 {
		t.Fatalf("GET in the app's lane: %d %s", resp.StatusCode, body)
	}
	for _, v := range []string{"urgent", "warm"} {
		if resp, body := do(t, "GET", srv.URL+"/contacts/c3", "", with(v)); resp.StatusCode != http.StatusBadRequest ||
			resp.Header.Get("X-Ghlproxy-Error") != "malformed-request" {
			t.Errorf("%s: %s: %d %s, want a sidecar-made 400", headerPriority, v, resp.StatusCode, body)
		}
	}
	if b, i := waits(t, m, ratelimit.Background), waits(t, m, ratelimit.Interactive); b != 2 || i != 1 {
		t.Fatalf("grants: %d in the background lane, %d in the app's; want 2 and 1", b, i)
	}
	reqs := seen()
	if len(reqs) != 3 {
		t.Fatalf("upstream got %d requests, want 3 (the refused ones sent nothing)", len(reqs))
	}
	for _, r := range reqs {
		if v := r.Header.Get(headerPriority); v != "" {
			t.Errorf("%s %s reached GHL with %s: %s", r.Method, r.Path, headerPriority, v)
		}
	}
}
