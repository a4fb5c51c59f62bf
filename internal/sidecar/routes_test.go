package sidecar

import (
	"strings"
	"testing"
	"time"

	"github.com/ghlproxy/ghlproxy/config"
	"github.com/ghlproxy/ghlproxy/ratelimit"
	"github.com/ghlproxy/ghlproxy/routes"
)

// Each route carries its whole policy once the table is built: the built-in facts (merge,
// bulk), the configuration's defaults, and the overrides of cache.routes and dedupe.routes,
// an entry for one method winning over one for every method wherever each is listed.
func TestRouteTable(t *testing.T) {
	cfg := config.Default()
	cfg.Cache.DefaultTTL = 2 * time.Minute
	cfg.Cache.StaleWhileRevalidate, cfg.Cache.StaleIfError = 7*time.Second, 9*time.Minute
	cfg.Dedupe.Window = 20 * time.Second
	cfg.Dedupe.Methods = []string{"GET", "PUT", "POST"}
	cfg.Cache.Routes = []config.CacheRoute{
		{Route: "GET /opportunities/{id}", StaleIfError: time.Hour},
		{Route: "/opportunities/{id}", StaleWhileRevalidate: time.Minute, StaleIfError: 2 * time.Hour},
		{Route: "POST /oauth/token", Policy: "pass"},
	}
	cfg.Dedupe.Routes = []config.DedupeRoute{
		{Route: "GET /contacts/{contactId}", Window: 5 * time.Second},
		{Route: "/contacts/{contactId}", Window: 0},
		{Route: "/opportunities/{id}", Window: 40 * time.Second},
	}
	tbl, err := routeTable(cfg)
	if err != nil {
		t.Fatal(err)
	}
	type policy struct {
		ttl, swr, sie, window time.Duration
		fold, merge           bool
		bulk                  string
	}
	for _, tc := range []struct {
		route string
		want  policy
	}{
		// dedupe.routes: the GET entry beats the later one for every method; PUT and
		// DELETE take the window of 0, which turns folding off.
		{"GET /contacts/{contactId}", policy{ttl: 2 * time.Minute, swr: 7 * time.Second, sie: 9 * time.Minute, window: 5 * time.Second, fold: true}},
		{"PUT /contacts/{contactId}", policy{swr: 7 * time.Second, sie: 9 * time.Minute, window: 20 * time.Second, merge: true}},
		{"DELETE /contacts/{contactId}", policy{swr: 7 * time.Second, sie: 9 * time.Minute, window: 20 * time.Second}},
		// cache.routes: the GET entry's stale-if-error beats the one for every method; the
		// stale-while-revalidate it does not set comes from that one.
		{"GET /opportunities/{id}", policy{ttl: 2 * time.Minute, swr: time.Minute, sie: time.Hour, window: 40 * time.Second, fold: true}},
		{"PUT /opportunities/{id}", policy{swr: time.Minute, sie: 2 * time.Hour, window: 40 * time.Second, fold: true, merge: true}},
		// dedupe.methods leaves DELETE out even where a route lists a window.
		{"DELETE /opportunities/{id}", policy{swr: time.Minute, sie: 2 * time.Hour, window: 40 * time.Second}},
		{"POST /contacts/{contactId}/tags", policy{swr: 7 * time.Second, sie: 9 * time.Minute, window: 20 * time.Second, fold: true, bulk: "add"}},
		{"DELETE /contacts/{contactId}/tags", policy{swr: 7 * time.Second, sie: 9 * time.Minute, window: 20 * time.Second, bulk: "remove"}},
		// A route passed through never folds.
		{"POST /oauth/token", policy{swr: 7 * time.Second, sie: 9 * time.Minute, window: 20 * time.Second}},
	} {
		method, template, _ := strings.Cut(tc.route, " ")
		r := tbl.Lookup(method, template)
		if r == nil {
			t.Fatalf("%s: not in the table", tc.route)
		}
		got := policy{r.TTL, r.StaleWhileRevalidate, r.StaleIfError, r.FoldWindow, r.Fold, r.Merge, r.BulkTagOp}
		if got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.route, got, tc.want)
		}
	}
	if r := tbl.Lookup("POST", "/oauth/token"); r.Policy != routes.Pass {
		t.Errorf("POST /oauth/token: policy %v", r.Policy)
	}
}

// A dedupe.routes entry naming no route of the table is a configuration error, as a
// cache.routes one is, not a setting that silently does nothing.
func TestRouteTableUnknownFoldRoute(t *testing.T) {
	cfg := config.Default()
	cfg.Dedupe.Routes = []config.DedupeRoute{{Route: "GET /contacts/{id}", Window: time.Second}}
	_, err := routeTable(cfg)
	if err == nil || !strings.Contains(err.Error(), "dedupe.routes[0]: no route GET /contacts/{id} in the table") {
		t.Fatalf("err = %v", err)
	}
}

// A reserve key of 0 was written by the user (config fills the defaults in) and means no
// reserve; ratelimit.Config's 0 would take its default.
func TestReserveKeys(t *testing.T) {
	if got := reserve(0); got != ratelimit.NoReserve {
		t.Errorf("reserve(0) = %d, want ratelimit.NoReserve", got)
	}
	if got := reserve(7); got != 7 {
		t.Errorf("reserve(7) = %d", got)
	}
	if d := config.Default(); d.RateLimit.WarmReserve != ratelimit.DefaultWarmReserve || d.RateLimit.DailyReserve != ratelimit.DefaultDailyReserve {
		t.Errorf("config defaults %d, %d: a reserve left out of the configuration must not reach ratelimit as 0",
			d.RateLimit.WarmReserve, d.RateLimit.DailyReserve)
	}
}
