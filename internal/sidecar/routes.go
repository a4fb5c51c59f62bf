package sidecar

import (
	"fmt"
	"strings"
	"time"

	"github.com/ghlproxy/ghlproxy/config"
	"github.com/ghlproxy/ghlproxy/proxy"
	"github.com/ghlproxy/ghlproxy/routes"
)

// routeTable is the built-in table with cache.default_ttl and cache.routes applied.
func routeTable(cfg *config.Config) (*routes.Table, map[string]proxy.Stale, error) {
	t := routes.New()
	if d := cfg.Cache.DefaultTTL; d > 0 {
		for _, r := range t.All() {
			if (r.Policy == routes.Read || r.Policy == routes.Query) && r.TTL > 0 {
				r.TTL = d
			}
		}
	}
	stale := map[string]proxy.Stale{}
	for i, cr := range cfg.Cache.Routes {
		method, template := config.SplitRoute(cr.Route)
		o := routes.Override{TTL: cr.TTL, Invalidates: cr.Invalidates}
		if cr.Policy != "" {
			p, err := routes.ParsePolicy(cr.Policy)
			if err != nil {
				return nil, nil, fmt.Errorf("cache.routes[%d].policy: %w", i, err)
			}
			o.Policy = p
		}
		if err := t.Override(template, method, o); err != nil {
			// The table's errors already name the route; say which list entry it was.
			return nil, nil, fmt.Errorf("cache.routes[%d]: %s", i, strings.TrimPrefix(err.Error(), "cache.routes: "))
		}
		if cr.StaleWhileRevalidate > 0 || cr.StaleIfError > 0 {
			s := proxy.Stale{WhileRevalidate: cfg.Cache.StaleWhileRevalidate, IfError: cfg.Cache.StaleIfError}
			if cr.StaleWhileRevalidate > 0 {
				s.WhileRevalidate = cr.StaleWhileRevalidate
			}
			if cr.StaleIfError > 0 {
				s.IfError = cr.StaleIfError
			}
			stale[routeKey(method, template)] = s
		}
	}
	return t, stale, nil
}

// foldRoutes turns dedupe.routes into the proxy's per-route windows.
func foldRoutes(cfg *config.Config) map[string]time.Duration {
	m := map[string]time.Duration{}
	for _, dr := range cfg.Dedupe.Routes {
		method, template := config.SplitRoute(dr.Route)
		m[routeKey(method, template)] = dr.Window
	}
	return m
}

func foldMethods(cfg *config.Config) map[string]bool {
	m := map[string]bool{}
	for _, meth := range cfg.Dedupe.Methods {
		m[strings.ToUpper(meth)] = true
	}
	return m
}

// routeKey is how the proxy looks up per-route settings: "METHOD template" for one method,
// the template alone for all.
func routeKey(method, template string) string {
	if method == "" {
		return template
	}
	return method + " " + template
}
