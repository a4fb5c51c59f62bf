package proxy

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/ghlproxy/ghlproxy/cache"
	"github.com/ghlproxy/ghlproxy/internal/ghlerror"
	"github.com/ghlproxy/ghlproxy/internal/identity"
	"github.com/ghlproxy/ghlproxy/internal/metrics"
	"github.com/ghlproxy/ghlproxy/ratelimit"
	"github.com/ghlproxy/ghlproxy/routes"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Admin serves the /_ghlproxy/ endpoints on the proxy listener, for curl debugging. It asks
// the stages for what it reports through typed methods; a stage left nil (a sidecar built
// without it) makes its part of an answer empty.
type Admin struct {
	Handler *Handler
	// Token is admin.token. Empty: mutating endpoints accept loopback callers only.
	Token string

	Cache   AdminCache
	Limiter AdminLimiter
	// WarmRun and WarmStatus are the warming loop's (POST and GET /_ghlproxy/warm). Hooks,
	// not a typed stage: package warm sends its requests through this proxy, so the proxy
	// cannot name its types.
	WarmRun    func(ctx context.Context) (any, error)
	WarmStatus func() any
	// Webhooks receives GHL's webhook deliveries (webhook.Path). They prove themselves by
	// their signature, so the admin token is not asked for.
	Webhooks http.Handler
}

// AdminCache is what the admin endpoints ask of the cache (package cache).
type AdminCache interface {
	Stats() cache.Stats
	Purge(ctx context.Context, sel cache.Selector) (int, error)
	// Peek returns the entry of key for cred, as Get would, without counting a lookup.
	Peek(ctx context.Context, key string, cred *identity.Credential) (*cache.Entry, error)
}

// AdminLimiter is what the admin endpoints ask of the token buckets (package ratelimit).
type AdminLimiter interface {
	Stats() []ratelimit.ScopeStats
	Degraded() bool
	Replicas() int
}

// AdminHeader carries admin.token: Authorization is the GHL credential, and purging "my
// own entries" needs it unchanged.
const AdminHeader = "X-Ghlproxy-Admin-Token"

func (a *Admin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := strings.TrimPrefix(r.URL.Path, adminPrefix)
	switch {
	case path == "webhooks/ghl" && a.Webhooks != nil:
		a.Webhooks.ServeHTTP(w, r)
	case path == "stats" && r.Method == http.MethodGet:
		a.stats(w)
	case path == "explain" && r.Method == http.MethodGet:
		a.explain(w, r)
	case path == "cache" && r.Method == http.MethodGet:
		writeJSON(w, http.StatusOK, a.cacheStats())
	case path == "cache" && r.Method == http.MethodDelete:
		if a.authorized(w, r) {
			a.purge(w, r)
		}
	case path == "warm" && r.Method == http.MethodGet:
		var status any = struct{}{}
		if a.WarmStatus != nil {
			status = a.WarmStatus()
		}
		writeJSON(w, http.StatusOK, status)
	case path == "warm" && r.Method == http.MethodPost:
		if !a.authorized(w, r) {
			return
		}
		if a.WarmRun == nil {
			ghlerror.Write(w, http.StatusNotFound, ghlerror.CauseNotFound, "no warming targets are configured (warm.targets)")
			return
		}
		res, err := a.WarmRun(r.Context())
		if err != nil {
			ghlerror.Write(w, http.StatusInternalServerError, ghlerror.CauseInternal, "warming failed: "+err.Error())
			return
		}
		writeJSON(w, http.StatusOK, res)
	default:
		ghlerror.Write(w, http.StatusNotFound, ghlerror.CauseNotFound,
			"no such ghlproxy endpoint: try GET /_ghlproxy/stats, /_ghlproxy/explain, /_ghlproxy/cache, /_ghlproxy/warm")
	}
}

func (a *Admin) cacheStats() any {
	if a.Cache == nil {
		return struct{}{}
	}
	return a.Cache.Stats()
}

func (a *Admin) limiterStats() any {
	if a.Limiter == nil {
		return struct{}{}
	}
	return map[string]any{"scopes": a.Limiter.Stats(), "degraded": a.Limiter.Degraded(), "replicas": a.Limiter.Replicas()}
}

// scopeTokens is what this replica knows of one scope's bucket.
func (a *Admin) scopeTokens(scopeKey string) any {
	for _, st := range a.Limiter.Stats() {
		if st.Scope == scopeKey {
			return st
		}
	}
	return map[string]any{"scope": scopeKey, "note": "no request of this scope yet on this replica"}
}

// cacheLookup says whether the cache holds key for cred, and in what state.
func (a *Admin) cacheLookup(ctx context.Context, key string, cred *identity.Credential) any {
	e, err := a.Cache.Peek(ctx, key, cred)
	switch {
	case err != nil:
		return map[string]any{"state": "unknown", "error": err.Error()}
	case e == nil:
		return map[string]any{"state": "absent"}
	}
	now := time.Now()
	state := "fresh"
	switch {
	case !e.Fresh(now) && now.Before(e.StaleWhileRevalidate):
		state = "stale (served while one refresh runs)"
	case !e.Fresh(now):
		state = "stale (served only if GHL fails)"
	}
	return map[string]any{"state": state, "status": e.Resp.Status, "age_seconds": int(now.Sub(e.Stored) / time.Second),
		"ttl_seconds": int(e.FreshUntil.Sub(now) / time.Second), "bytes": len(e.Resp.Body)}
}

// authorized admits mutating calls: with admin.token set, only callers presenting it;
// without, only loopback callers (the app in the same pod).
func (a *Admin) authorized(w http.ResponseWriter, r *http.Request) bool {
	if a.Token != "" {
		got := r.Header.Get(AdminHeader)
		if subtle.ConstantTimeCompare([]byte(got), []byte(a.Token)) == 1 {
			return true
		}
		ghlerror.Write(w, http.StatusForbidden, ghlerror.CauseForbidden, "this endpoint needs the admin token in "+AdminHeader)
		return false
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if ip := net.ParseIP(host); err == nil && ip != nil && ip.IsLoopback() {
		return true
	}
	ghlerror.Write(w, http.StatusForbidden, ghlerror.CauseForbidden, "this endpoint accepts loopback callers only unless admin.token is set")
	return false
}

func (a *Admin) purge(w http.ResponseWriter, r *http.Request) {
	if a.Cache == nil {
		ghlerror.Write(w, http.StatusNotFound, ghlerror.CauseNotFound, "the cache is off")
		return
	}
	q := r.URL.Query()
	sel := cache.Selector{Route: q.Get("route"), All: q.Get("all") == "true"}
	cred := a.Handler.cfg.Identity.Resolve(r.Header.Get("Authorization"))
	if t := q.Get("tag"); t != "" {
		sel.Tag = routes.ScopedTag(cred.ScopeKey, t)
	}
	if sel.Route == "" && sel.Tag == "" && !sel.All {
		if cred.Anonymous {
			ghlerror.Write(w, http.StatusBadRequest, ghlerror.CauseMalformed,
				"say what to purge: ?route=TEMPLATE, ?tag=TAG, ?all=true, or send your Authorization header to purge your own entries")
			return
		}
		sel.CredHash = cred.Hash
	}
	a.Handler.cfg.Metrics.Invalidations.WithLabelValues(metrics.SourcePurge).Inc()
	n, err := a.Cache.Purge(r.Context(), sel)
	if err != nil {
		ghlerror.Write(w, http.StatusServiceUnavailable, ghlerror.CauseInternal, "purge failed: "+err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"purged": n})
}

// explain tells how a GHL request would be handled, without sending it.
func (a *Admin) explain(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	method, path := strings.ToUpper(q.Get("method")), q.Get("path")
	if method == "" {
		method = http.MethodGet
	}
	if !strings.HasPrefix(path, "/") {
		ghlerror.Write(w, http.StatusBadRequest, ghlerror.CauseMalformed, "explain needs ?path=/the/ghl/path (and ?method=, default GET)")
		return
	}
	u, err := url.Parse(path)
	if err != nil {
		ghlerror.Write(w, http.StatusBadRequest, ghlerror.CauseMalformed, "explain: bad path: "+err.Error())
		return
	}
	in := r.Clone(r.Context())
	in.Method, in.URL = method, u
	h := a.Handler
	x := h.classify(in)
	h.identify(in, x)
	out := map[string]any{
		"method":    method,
		"path":      u.EscapedPath(),
		"route":     x.label,
		"policy":    x.policy.String(),
		"scope":     x.cred.Scope,
		"scope_key": x.cred.ScopeKey,
		"credential": map[string]any{
			"hash":      x.cred.Hash[:16],
			"anonymous": x.cred.Anonymous,
			// false until GHL has answered the token 2xx on this replica: until then it
			// spends a budget of its own (limit_key), one request at a time.
			"claims_verified": x.cred.Verified(),
			"limit_key":       x.cred.LimitKey(),
		},
	}
	if x.route != nil && (x.policy == routes.Read || x.policy == routes.Query || x.policy == routes.Write) {
		key := h.key(in, x, nil)
		out["key"] = key
		if x.policy != routes.Write {
			out["ttl_seconds"] = int(x.route.TTL / time.Second)
			out["tags"] = x.route.Tags(x.params)
			if a.Cache != nil {
				out["cache"] = a.cacheLookup(r.Context(), key, x.cred)
			}
		} else {
			out["invalidates"] = x.route.Invalidates(x.params)
		}
		window, folds := h.foldWindow(in, x, parseCacheControl(in.Header.Get("Cache-Control")))
		out["fold"] = map[string]any{"folds": folds, "window_seconds": int(window / time.Second)}
	}
	if a.Limiter != nil && x.cred != nil {
		out["ratelimit"] = a.scopeTokens(x.cred.LimitKey())
	}
	writeJSON(w, http.StatusOK, out)
}

// stats summarises what the sidecar did, from the same counters Prometheus scrapes.
func (a *Admin) stats(w http.ResponseWriter) {
	m := a.Handler.cfg.Metrics
	byOutcome := map[string]float64{}
	saved := map[string]float64{}
	var upstreamCalls float64
	families, _ := m.Registry.Gather()
	for _, f := range families {
		switch f.GetName() {
		case "ghlproxy_requests_total":
			for _, mm := range f.GetMetric() {
				byOutcome[labelValue(mm.GetLabel(), "outcome")] += mm.GetCounter().GetValue()
			}
		case "ghlproxy_upstream_calls_saved_total":
			for _, mm := range f.GetMetric() {
				saved[labelValue(mm.GetLabel(), "reason")] += mm.GetCounter().GetValue()
			}
		case "ghlproxy_upstream_requests_total":
			for _, mm := range f.GetMetric() {
				upstreamCalls += mm.GetCounter().GetValue()
			}
		}
	}
	var total float64
	for _, v := range byOutcome {
		total += v
	}
	hits := byOutcome["hit"] + byOutcome["stale"]
	lookups := hits + byOutcome["miss"] + byOutcome["shared"] + byOutcome["replay"]
	ratio := 0.0
	if lookups > 0 {
		ratio = hits / lookups
	}
	degraded := a.Limiter != nil && a.Limiter.Degraded()
	writeJSON(w, http.StatusOK, map[string]any{
		"requests":            total,
		"requests_by_outcome": byOutcome,
		"upstream_calls":      upstreamCalls,
		"calls_saved":         saved,
		"cache_hit_ratio":     ratio,
		"cache":               a.cacheStats(),
		"ratelimit":           a.limiterStats(),
		"degraded":            degraded,
		"refreshes_in_flight": a.Handler.refreshes.Load(),
	})
}

func labelValue(ls []*dto.LabelPair, name string) string {
	for _, l := range ls {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

var _ prometheus.Gatherer = (*prometheus.Registry)(nil)

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		ghlerror.Write(w, http.StatusInternalServerError, ghlerror.CauseInternal, "encoding the answer failed: "+err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
