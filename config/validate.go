package config

import (
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/ghlproxy/ghlproxy/ratelimit"
	"github.com/ghlproxy/ghlproxy/webhook"
)

// Validate reports the first invalid value, in key order, as one line naming the key:
// "ratelimit.rate: must be > 0, got -3". Load calls it; call it again after changing a
// Config by hand.
func (c *Config) Validate() error {
	for _, check := range []func() error{
		func() error { return checkAddr("listen", c.Listen) },
		func() error { return checkAddr("ops_listen", c.OpsListen) },
		func() error {
			// Port 0 asks the kernel for a free port: two such listeners never collide.
			if _, port, _ := net.SplitHostPort(c.Listen); c.OpsListen == c.Listen && port != "0" {
				return fmt.Errorf("ops_listen: must differ from listen (both %q)", c.Listen)
			}
			return nil
		},
		c.checkUpstream,
		c.checkTransport,
		func() error {
			return first(
				positive("limits.max_body_bytes", c.Limits.MaxBodyBytes),
				positive("limits.max_response_bytes", c.Limits.MaxResponseBytes),
				positive("limits.body_timeout", c.Limits.BodyTimeout),
				nonNegative("limits.gc_heap_floor", c.Limits.GCHeapFloor))
		},
		c.checkRedis,
		c.checkRateLimit,
		c.checkDedupe,
		c.checkBatch,
		c.checkCache,
		c.checkWarm,
		c.checkWebhooks,
		c.checkLog,
		func() error { return positive("shutdown.grace", c.Shutdown.Grace) },
	} {
		if err := check(); err != nil {
			return err
		}
	}
	return nil
}

// Warnings lists values that are allowed but risky, one line each, for the caller to log
// at start-up.
func (c *Config) Warnings() []string {
	var w []string
	rl := c.RateLimit
	if rl.Per > 0 {
		b := c.effectiveBurst()
		refill := ratelimit.WindowRefill(rl.Rate, rl.Per)
		if peak := float64(b) + refill; peak > ratelimit.GHLWindowLimit {
			w = append(w, fmt.Sprintf("ratelimit.burst: a full bucket of %d plus %.1f refilled in 10s allows %.1f requests in one 10s window, over GHL's default of %d; fine only if this app's GHL limit is higher",
				b, refill, peak, ratelimit.GHLWindowLimit))
		}
	}
	if c.Identity.Secret == "" && c.sharedStore() {
		w = append(w, "identity.secret: empty, so credential hashes in Redis use the built-in key; set one secret shared by every replica")
	}
	return w
}

func (c *Config) sharedStore() bool { return c.Redis.URL != "" || len(c.Redis.Addrs) > 0 }

// effectiveBurst is ratelimit.burst with 0 resolved: the safe burst, but never below
// batch.max.
func (c *Config) effectiveBurst() int {
	if b := c.RateLimit.Burst; b != 0 {
		return b
	}
	return max(ratelimit.SafeBurst(c.RateLimit.Rate, c.RateLimit.Per), c.Batch.Max)
}

func first(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// number is what the range checks accept.
type number interface {
	~int | ~int64
}

func positive[T number](key string, v T) error {
	if v <= 0 {
		return fmt.Errorf("%s: must be > 0, got %s", key, show(v))
	}
	return nil
}

func nonNegative[T number](key string, v T) error {
	if v < 0 {
		return fmt.Errorf("%s: must be >= 0, got %s", key, show(v))
	}
	return nil
}

// show prints a value the way the user writes it: durations as durations, sizes as sizes.
func show(v any) string {
	switch v := v.(type) {
	case time.Duration:
		return formatDuration(v)
	case ByteSize:
		return v.String()
	}
	return fmt.Sprint(v)
}

func checkAddr(key, addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%s: not a host:port address: %q", key, addr)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("%s: not a host:port address: %q", key, addr)
	}
	return nil
}
func (c *Config) checkWebhooks() error {
	w := c.Webhooks
	if w.Listen != "" {
		if err := checkAddr("webhooks.listen", w.Listen); err != nil {
			return err
		}
		if w.Listen == c.Listen || w.Listen == c.OpsListen {
			if _, port, _ := net.SplitHostPort(w.Listen); port != "0" {
				return fmt.Errorf("webhooks.listen: must differ from listen and ops_listen (%q)", w.Listen)
			}
		}
	}
	if w.PublicKey != "" {
		if _, err := webhook.ParsePublicKey(w.PublicKey); err != nil {
			return fmt.Errorf("webhooks.public_key: %w", err)
		}
	}
	if w.LegacyPublicKey != "" && w.LegacyPublicKey != "off" {
		if _, err := webhook.ParseLegacyPublicKey(w.LegacyPublicKey); err != nil {
			return fmt.Errorf("webhooks.legacy_public_key: %w", err)
		}
	}
	if w.ForwardURL != "" {
		u, err := url.Parse(w.ForwardURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("webhooks.forward_url: not an absolute http(s) URL: %q", w.ForwardURL)
		}
	}
	return positive("webhooks.max_age", w.MaxAge)
}

func (c *Config) checkUpstream() error {
	u, err := url.Parse(c.Upstream)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Opaque != "" {
		return fmt.Errorf("upstream: not an absolute http(s) URL: %q", c.Upstream)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return fmt.Errorf("upstream: must be a plain base URL without credentials, query or fragment: %q", u.Redacted())
	}
	return nil
}

func (c *Config) checkTransport() error {
	t := c.Transport
	if err := first(
		positive("transport.dial_timeout", t.DialTimeout),
		positive("transport.tls_timeout", t.TLSTimeout),
		positive("transport.header_timeout", t.HeaderTimeout),
		positive("transport.timeout", t.Timeout),
		positive("transport.max_idle_conns_per_host", t.MaxIdleConnsPerHost),
		nonNegative("transport.slow_threshold", t.SlowThreshold),
	); err != nil {
		return err
	}
	if t.HeaderTimeout > t.Timeout {
		return fmt.Errorf("transport.header_timeout: must be <= transport.timeout (%s > %s)", formatDuration(t.HeaderTimeout), formatDuration(t.Timeout))
	}
	return nil
}

func (c *Config) checkRedis() error {
	r := c.Redis
	if r.URL != "" {
		if len(r.Addrs) > 0 {
			return fmt.Errorf("redis.addrs: set redis.url or redis.addrs, not both")
		}
		u, err := url.Parse(r.URL)
		if err != nil {
			// url's error quotes the input, password included.
			return fmt.Errorf("redis.url: not a URL (want redis://host:port or rediss://host:port)")
		}
		if u.Scheme != "redis" && u.Scheme != "rediss" {
			return fmt.Errorf("redis.url: unsupported scheme %q (want redis:// or rediss://)", u.Scheme)
		}
		if u.Hostname() == "" {
			return fmt.Errorf("redis.url: missing host in %q", redactURL(r.URL))
		}
		if db := strings.Trim(u.Path, "/"); db != "" {
			if n, err := strconv.Atoi(db); err != nil || n < 0 {
				return fmt.Errorf("redis.url: database must be a number, got %q", db)
			}
		}
	}
	for i, a := range r.Addrs {
		if err := checkAddr(fmt.Sprintf("redis.addrs[%d]", i), a); err != nil {
			return err
		}
	}
	if r.MasterName != "" && len(r.Addrs) == 0 {
		return fmt.Errorf("redis.master_name: needs redis.addrs (the Sentinel addresses)")
	}
	return first(
		positive("redis.timeout", r.Timeout),
		nonNegative("redis.pool_size", r.PoolSize),
	)
}

func (c *Config) checkRateLimit() error {
	rl := c.RateLimit
	if err := first(
		positive("ratelimit.rate", rl.Rate),
		positive("ratelimit.per", rl.Per),
		nonNegative("ratelimit.burst", rl.Burst),
		nonNegative("ratelimit.max_wait", rl.MaxWait),
		nonNegative("ratelimit.warm_reserve", rl.WarmReserve),
		nonNegative("ratelimit.daily_reserve", rl.DailyReserve),
		nonNegative("ratelimit.lease", rl.Lease),
	); err != nil {
		return err
	}
	if _, err := ClockTime(rl.DailyReset); err != nil {
		return fmt.Errorf("ratelimit.daily_reset: %w", err)
	}
	if !(rl.FollowReserve >= 0 && rl.FollowReserve <= 0.5) { // NaN fails too
		return fmt.Errorf("ratelimit.follow_reserve: must be between 0 and 0.5, got %g", rl.FollowReserve)
	}
	if b := c.effectiveBurst(); c.Warm.Interval > 0 && rl.WarmReserve >= b {
		return fmt.Errorf("ratelimit.warm_reserve: must be < ratelimit.burst (%d >= %d), or warming never gets a token", rl.WarmReserve, b)
	}
	return nil
}

var methods = map[string]bool{"GET": true, "POST": true, "PUT": true, "PATCH": true, "DELETE": true}

func (c *Config) checkDedupe() error {
	d := c.Dedupe
	if err := nonNegative("dedupe.window", d.Window); err != nil {
		return err
	}
	for i, m := range d.Methods {
		if !methods[m] {
			return fmt.Errorf("dedupe.methods[%d]: unknown method %q (want GET, POST, PUT, PATCH or DELETE)", i, m)
		}
	}
	seen := make(map[string]bool)
	for i, r := range d.Routes {
		key := fmt.Sprintf("dedupe.routes[%d]", i)
		if err := checkRoute(key+".route", r.Route, seen); err != nil {
			return err
		}
		if err := nonNegative(key+".window", r.Window); err != nil {
			return err
		}
	}
	return nil
}

// checkRoute accepts "/template" or "METHOD /template" and rejects repeats.
func checkRoute(key, route string, seen map[string]bool) error {
	method, tmpl := SplitRoute(route)
	if method != "" && !methods[method] {
		return fmt.Errorf("%s: unknown method in %q (want \"/path\" or \"GET /path\")", key, route)
	}
	if !strings.HasPrefix(tmpl, "/") || strings.ContainsAny(tmpl, " ?#") {
		return fmt.Errorf("%s: not a route template: %q (want \"/contacts/{contactId}\", optionally after a method)", key, route)
	}
	if strings.HasPrefix(tmpl, "/oauth/") {
		return fmt.Errorf("%s: /oauth/ routes are never cached or folded: %q", key, route)
	}
	if seen[route] {
		return fmt.Errorf("%s: %q is listed twice", key, route)
	}
	seen[route] = true
	return nil
}

// SplitRoute splits a dedupe.routes or cache.routes route into its method ("" when it
// applies to every method) and its template.
func SplitRoute(route string) (method, template string) {
	if m, t, ok := strings.Cut(route, " "); ok {
		return m, t
	}
	return "", route
}

func (c *Config) checkBatch() error {
	b := c.Batch
	if err := first(
		positive("batch.min", b.Min),
		positive("batch.max", b.Max),
		nonNegative("batch.linger", b.Linger),
		nonNegative("batch.coalesce", b.Coalesce),
	); err != nil {
		return err
	}
	if mw := c.RateLimit.MaxWait; mw > 0 && b.Coalesce >= mw {
		return fmt.Errorf("batch.coalesce: must be below ratelimit.max_wait (%s >= %s): a held write would be refused before it is sent", b.Coalesce, mw)
	}
	if b.Min > b.Max {
		return fmt.Errorf("batch.min: must be <= batch.max (%d > %d)", b.Min, b.Max)
	}
	if burst := c.effectiveBurst(); b.Max > burst {
		return fmt.Errorf("batch.max: must be <= ratelimit.burst (%d > %d): a group takes all its tokens in one grant", b.Max, burst)
	}
	return nil
}

var policies = map[string]bool{"": true, "read": true, "query": true, "write": true, "pass": true}

func (c *Config) checkCache() error {
	ca := c.Cache
	if err := first(
		nonNegative("cache.default_ttl", ca.DefaultTTL),
		nonNegative("cache.stale_while_revalidate", ca.StaleWhileRevalidate),
		nonNegative("cache.stale_if_error", ca.StaleIfError),
		nonNegative("cache.stale_if_busy", ca.StaleIfBusy),
		nonNegative("cache.negative_ttl", ca.NegativeTTL),
		nonNegative("cache.memory_bytes", ca.MemoryBytes),
	); err != nil {
		return err
	}
	if ca.Coherence != "pubsub" && ca.Coherence != "none" {
		return fmt.Errorf("cache.coherence: must be pubsub or none, got %q", ca.Coherence)
	}
	seen := make(map[string]bool)
	for i, r := range ca.Routes {
		key := fmt.Sprintf("cache.routes[%d]", i)
		if err := first(
			checkRoute(key+".route", r.Route, seen),
			nonNegative(key+".ttl", r.TTL),
			nonNegative(key+".stale_while_revalidate", r.StaleWhileRevalidate),
			nonNegative(key+".stale_if_error", r.StaleIfError),
		); err != nil {
			return err
		}
		if !policies[r.Policy] {
			return fmt.Errorf("%s.policy: must be read, query, write, pass or empty, got %q", key, r.Policy)
		}
	}
	return nil
}

var envVarName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func (c *Config) checkWarm() error {
	w := c.Warm
	if err := first(
		nonNegative("warm.interval", w.Interval),
		nonNegative("warm.jitter", w.Jitter),
		positive("warm.max_pages", w.MaxPages),
	); err != nil {
		return err
	}
	if w.Interval > 0 && w.Jitter > w.Interval {
		return fmt.Errorf("warm.jitter: must be <= warm.interval (%s > %s)", formatDuration(w.Jitter), formatDuration(w.Interval))
	}
	names := make(map[string]bool)
	for i, t := range w.Targets {
		key := fmt.Sprintf("warm.targets[%d]", i)
		switch {
		case t.Name == "":
			return fmt.Errorf("%s.name: required", key)
		case names[t.Name]:
			return fmt.Errorf("%s.name: %q is used twice", key, t.Name)
		case t.TokenEnv == "" && t.TokenFile == "":
			return fmt.Errorf("%s: set token_env or token_file", key)
		case t.TokenEnv != "" && t.TokenFile != "":
			return fmt.Errorf("%s: set token_env or token_file, not both", key)
		case t.TokenEnv != "" && !envVarName.MatchString(t.TokenEnv):
			// Never echo the value: it may be a token pasted into the wrong key.
			return fmt.Errorf("%s.token_env: not an environment variable name (it names the variable holding the token, it is not the token)", key)
		case t.Version == "":
			return fmt.Errorf("%s.version: required", key)
		case len(t.Requests) == 0:
			return fmt.Errorf("%s.requests: at least one request is required", key)
		}
		names[t.Name] = true
		for j, r := range t.Requests {
			rk := fmt.Sprintf("%s.requests[%d]", key, j)
			switch {
			case r.Method != "GET" && r.Method != "POST":
				return fmt.Errorf("%s.method: must be GET or POST, got %q", rk, r.Method)
			case !strings.HasPrefix(r.Path, "/"):
				return fmt.Errorf("%s.path: must start with /, got %q", rk, r.Path)
			case strings.HasPrefix(r.Path, "/oauth/"):
				return fmt.Errorf("%s.path: /oauth/ is never warmed: %q", rk, r.Path)
			case r.Body != "" && r.Method != "POST":
				return fmt.Errorf("%s.body: only a POST has a body", rk)
			}
		}
	}
	return nil
}

func (c *Config) checkLog() error {
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("log.level: must be debug, info, warn or error, got %q", c.Log.Level)
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		return fmt.Errorf("log.format: must be text or json, got %q", c.Log.Format)
	}
	return nil
}

// ClockTime reads a time of day, HH:MM (24-hour), as the time after midnight.
func ClockTime(s string) (time.Duration, error) {
	t, err := time.Parse("15:04", s)
	if err != nil {
		return 0, fmt.Errorf("want a time of day as HH:MM (UTC), got %q", s)
	}
	return time.Duration(t.Hour())*time.Hour + time.Duration(t.Minute())*time.Minute, nil
}
