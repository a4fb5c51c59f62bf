package sidecar

import (
	"fmt"
	"strings"

	"github.com/ghlproxy/ghlproxy/config"
	"github.com/ghlproxy/ghlproxy/routes"
)

// CheckRoutes reports what starting the sidecar with cfg would say of the routes it names
// (cache.routes, dedupe.routes): for `ghlproxy config --validate`.
func CheckRoutes(cfg *config.Config) error {
	_, err := routeTable(cfg)
	return err
}

// routeTable is the built-in table with every route's policy resolved from the
// configuration, once: its TTL (cache.default_ttl, cache.routes), its stale windows
// (cache.stale_while_revalidate, cache.stale_if_error, cache.routes) and whether and how
// long it folds (dedupe.window, dedupe.methods, dedupe.routes). The proxy reads them off
// the route.
func routeTable(cfg *config.Config) (*routes.Table, error) {
	t := routes.New()
	folds := map[string]bool{}
	for _, m := range cfg.Dedupe.Methods {
		folds[strings.ToUpper(m)] = true
	}
	for _, r := range t.All() {
		if d := cfg.Cache.DefaultTTL; d > 0 && (r.Policy == routes.Read || r.Policy == routes.Query) && r.TTL > 0 {
			r.TTL = d
		}
		r.StaleWhileRevalidate, r.StaleIfError = cfg.Cache.StaleWhileRevalidate, cfg.Cache.StaleIfError
		r.Fold, r.FoldWindow = folds[r.Method], max(cfg.Dedupe.Window, 0)
	}
	for i, cr := range cfg.Cache.Routes {
		method, template := config.SplitRoute(cr.Route)
		o := routes.Override{TTL: cr.TTL, Invalidates: cr.Invalidates}
		if cr.Policy != "" {
			p, err := routes.ParsePolicy(cr.Policy)
			if err != nil {
				return nil, fmt.Errorf("cache.routes[%d].policy: %w", i, err)
			}
			o.Policy = p
		}
		if err := t.Override(template, method, o); err != nil {
			// The table's errors already name the route; say which list entry it was.
			return nil, fmt.Errorf("cache.routes[%d]: %s", i, strings.TrimPrefix(err.Error(), "cache.routes: "))
		}
	}
	// An entry for one method ("PUT /contacts/{contactId}") wins over one for the template
	// under every method, wherever each is in its list; between two of one kind, the later.
	for _, methodOnly := range []bool{false, true} {
		for _, cr := range cfg.Cache.Routes {
			method, template := config.SplitRoute(cr.Route)
			if (method != "") != methodOnly {
				continue
			}
			for _, r := range t.Select(method, template) {
				if cr.StaleWhileRevalidate > 0 {
					r.StaleWhileRevalidate = cr.StaleWhileRevalidate
				}
				if cr.StaleIfError > 0 {
					r.StaleIfError = cr.StaleIfError
				}
			}
		}
		for i, dr := range cfg.Dedupe.Routes {
			method, template := config.SplitRoute(dr.Route)
			if (method != "") != methodOnly {
				continue
			}
			rs := t.Select(method, template)
			if len(rs) == 0 {
				return nil, fmt.Errorf("dedupe.routes[%d]: no route %s in the table", i, strings.TrimSpace(method+" "+template))
			}
			for _, r := range rs {
				if dr.Window <= 0 {
					r.Fold = false // a route's window of 0 turns folding off for it
					continue
				}
				// dedupe.methods still decides whether the route folds at all.
				r.Fold, r.FoldWindow = folds[r.Method], dr.Window
			}
		}
	}
	for _, r := range t.All() {
		if r.Policy == routes.Pass {
			r.Fold = false // passed through untouched (/oauth/ always), whatever the lists say
		}
	}
	return t, nil
}
