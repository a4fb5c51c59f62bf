package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

// source is one loading scenario: a YAML file (written to a temp dir when non-empty),
// environment entries and command-line arguments.
type source struct {
	file string
	env  []string
	args []string
}

func (s source) load(t *testing.T) (*Config, error) {
	t.Helper()
	fs := pflag.NewFlagSet("ghlproxy", pflag.ContinueOnError)
	RegisterFlags(fs)
	args := s.args
	if s.file != "" {
		path := filepath.Join(t.TempDir(), "config.yaml")
		if err := os.WriteFile(path, []byte(s.file), 0o600); err != nil {
			t.Fatal(err)
		}
		args = append([]string{"--config", path}, args...)
	}
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parse %q: %v", args, err)
	}
	return Load(fs, s.env)
}

func (s source) mustLoad(t *testing.T) *Config {
	t.Helper()
	c, err := s.load(t)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return c
}

// effectiveDefault is Default() as Load completes it.
func effectiveDefault() *Config {
	c := Default()
	c.RateLimit.Burst = 50
	return c
}

func TestDefaults(t *testing.T) {
	for name, load := range map[string]func() (*Config, error){
		"no flags":         func() (*Config, error) { return Load(nil, nil) },
		"registered flags": func() (*Config, error) { return source{}.load(t) },
		"foreign env": func() (*Config, error) {
			return Load(nil, []string{"GHLPROXY_PORT=tcp://10.0.0.1:80", "HOME=/root", "GHLPROXY_RATELIMIT_RATE="})
		},
	} {
		t.Run(name, func(t *testing.T) {
			c, err := load()
			if err != nil {
				t.Fatal(err)
			}
			if want := effectiveDefault(); !reflect.DeepEqual(c, want) {
				t.Errorf("got %+v\nwant %+v", c, want)
			}
			if w := c.Warnings(); len(w) != 0 {
				t.Errorf("defaults warn: %q", w)
			}
		})
	}
	// The documented defaults, spelled out so that a change to Default() is a conscious one.
	c := effectiveDefault()
	for key, want := range map[string]any{
		"listen": ":8080", "ops_listen": ":9090", "upstream": "https://services.leadconnectorhq.com",
		"transport.timeout": time.Minute, "transport.slow_threshold": 100 * time.Millisecond,
		"limits.max_body_bytes": 10 * MiB, "limits.max_response_bytes": 32 * MiB, "limits.gc_heap_floor": 32 * MiB,
		"limits.body_timeout": 10 * time.Second,
		"ratelimit.rate":      280, "ratelimit.per": time.Minute, "ratelimit.burst": 50, "ratelimit.max_wait": 20 * time.Second,
		"dedupe.window": 30 * time.Second, "batch.min": 3, "batch.max": 5, "batch.linger": 25 * time.Millisecond,
		"cache.stale_if_error": 5 * time.Minute, "cache.coherence": "pubsub", "log.level": "info", "log.format": "text",
		"shutdown.grace": 25 * time.Second, "warm.interval": time.Duration(0),
	} {
		if got := get(c, key); got != want {
			t.Errorf("%s = %v, want %v", key, got, want)
		}
	}
}

func get(c *Config, name string) any {
	for _, k := range keys() {
		if k.name == name {
			return reflect.ValueOf(c).Elem().FieldByIndex(k.index).Interface()
		}
	}
	panic("no key " + name)
}

func TestPrecedence(t *testing.T) {
	file := "ratelimit:\n  rate: 100\n  max_wait: 5s\nlog:\n  format: json\n"
	tests := []struct {
		name string
		src  source
		rate int
	}{
		{"file over default", source{file: file}, 100},
		{"env over file", source{file: file, env: []string{"GHLPROXY_RATELIMIT_RATE=200"}}, 200},
		{"flag over env", source{file: file, env: []string{"GHLPROXY_RATELIMIT_RATE=200"}, args: []string{"--ratelimit.rate=300"}}, 300},
		{"flag over file", source{file: file, args: []string{"--ratelimit.rate", "300"}}, 300},
		{"env without file", source{env: []string{"GHLPROXY_RATELIMIT_RATE=200"}}, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.src.mustLoad(t)
			if c.RateLimit.Rate != tt.rate {
				t.Errorf("ratelimit.rate = %d, want %d", c.RateLimit.Rate, tt.rate)
			}
			// Keys no source set keep their defaults, also beside keys that were set.
			if c.RateLimit.Per != time.Minute || c.Log.Level != "info" {
				t.Errorf("unset keys lost their defaults: per=%s level=%q", c.RateLimit.Per, c.Log.Level)
			}
			if tt.src.file != "" && (c.RateLimit.MaxWait != 5*time.Second || c.Log.Format != "json") {
				t.Errorf("file keys not applied: max_wait=%s format=%q", c.RateLimit.MaxWait, c.Log.Format)
			}
		})
	}
}

func TestConfigFileFromEnv(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(path, []byte("batch: {min: 1, max: 2}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(nil, []string{"GHLPROXY_CONFIG=" + path})
	if err != nil {
		t.Fatal(err)
	}
	if c.Batch.Min != 1 || c.Batch.Max != 2 {
		t.Errorf("batch = %+v", c.Batch)
	}
	if _, err := Load(nil, []string{"GHLPROXY_CONFIG=/nonexistent/c.yaml"}); err == nil || !strings.HasPrefix(err.Error(), "config file: open /nonexistent/c.yaml") {
		t.Errorf("missing file: %v", err)
	}
}

// legacyKey is an RSA public key (base64 DER) for webhooks.legacy_public_key.
const legacyKey = "MIICIjANBgkqhkiG9w0BAQEFAAOCAg8AMIICCgKCAgEAokvo/r9tVgcfZ5DysOSCFrm602qYV0MaAiNnX9O8KxMbiyRKWeL9JpCpVpt4XHIcBOK4u3cLSqJGOLaPuXw6dO0t6Q/ZVdAV5Phz+ZtzPL16iCGeK9po6D6JHBpbi989mmzMryUnQJezlYJ3DVfBcsedpinheNnyYeFXolrJvcsjDtfAeRx5ByHQmTnSdFUzuAnC9/GepgLT9SM4nCpvuxmZMxrJt5Rw+VUaQ9B8JSvbMPpez4peKaJPZHBbU3OdeCVx5klVXXZQGNHOs8gF3kvoV5rTnXV0IknLBXlcKKAQLZcY/Q9rG6Ifi9c+5vqlvHPCUJFT5XUGG5RKgOKUJ062fRtN+rLYZUV+BjafxQauvC8wSWeYja63VSUruvmNj8xkx2zE/Juc+yjLjTXpIocmaiFeAO6fUtNjDeFVkhf5LNb59vECyrHD2SQIrhgXpO4Q3dVNA5rw576PwTzNh/AMfHKIjE4xQA1SZuYJmNnmVZLIZBlQAF9Ntd03rfadZ+yDiOXCCs9FkHibELhCHULgCsnuDJHcrGNd5/Ddm5hxGQ0ASitgHeMZ0kcIOwKDOzOU53lDza6/Y09T7sYJPQe7z0cvj7aE4B+Ax1ZoZGPzpJlZtGXCsu9aTEGEnKzmsFqwcSsnw3JB31IGKAykT1hhTiaCeIY/OwwwNUY2yvcCAwEAAQ=="

func TestEveryKeyFromEveryLayer(t *testing.T) {
	// A value for every key that differs from its default, in flag/env text form.
	values := map[string]string{
		"listen": "127.0.0.1:18080", "ops_listen": "127.0.0.1:19090", "upstream": "http://127.0.0.1:1234",
		"transport.dial_timeout": "1s", "transport.tls_timeout": "2s", "transport.header_timeout": "3s",
		"transport.timeout": "4s", "transport.max_idle_conns_per_host": "7", "transport.slow_threshold": "250ms",
		"limits.max_body_bytes": "1MiB", "limits.max_response_bytes": "2MiB", "limits.gc_heap_floor": "16MiB", "limits.body_timeout": "3s",
		"redis.url": "", "redis.addrs": "10.0.0.1:7000,10.0.0.2:7000", "redis.master_name": "mymaster",
		"redis.password": "pw", "redis.timeout": "75ms", "redis.pool_size": "20",
		"ratelimit.rate": "100", "ratelimit.per": "30s", "ratelimit.burst": "40", "ratelimit.max_wait": "3s",
		"ratelimit.warm_reserve": "4", "ratelimit.daily_reserve": "1000",
		"dedupe.window": "10s", "dedupe.methods": "GET,POST", "dedupe.routes": `[{"route": "/contacts/{contactId}", "window": "2s"}]`,
		"batch.min": "2", "batch.max": "8", "batch.linger": "40ms", "batch.merge": "false", "batch.bulk": "true", "batch.coalesce": "500ms",
		"cache.default_ttl": "1m", "cache.stale_while_revalidate": "11s", "cache.stale_if_error": "12s",
		"cache.negative_ttl": "13s", "cache.stale_if_busy": "40ms", "cache.write_through": "true", "cache.memory_bytes": "1GiB", "cache.coherence": "none",
		"cache.routes":         `[{route: "POST /contacts/search", ttl: 5s, policy: query}]`,
		"ratelimit.follow_ghl": "true", "ratelimit.follow_reserve": "0.2", "ratelimit.lease": "250ms", "ratelimit.daily_pacing": "true", "ratelimit.daily_reset": "05:30",
		"warm.interval": "5m", "warm.jitter": "1m", "warm.max_pages": "2",
		"webhooks.listen": ":9443", "webhooks.public_key": "8b61d1d6cacbe28d7c3bc0516bb815258ec6edbba96cddc7f40c09ac7083a0e8",
		"webhooks.max_age": "7m", "webhooks.forward_url": "http://app:3000/ghl/webhooks",
		"webhooks.legacy_public_key": legacyKey,
		"warm.targets":               `[{name: main, token_env: GHL_TOKEN, requests: [{path: "/contacts/?locationId=Ab"}]}]`,
		"admin.token":                "admintok", "identity.secret": "idsecret",
		"log.level": "debug", "log.format": "json", "shutdown.grace": "9s",
	}
	var env, args []string
	for _, k := range keys() {
		v, ok := values[k.name]
		if !ok {
			t.Fatalf("test has no value for key %s", k.name)
		}
		env = append(env, EnvName(k.name)+"="+v)
		args = append(args, "--"+k.name+"="+v)
	}
	fileText := fileFor(t, values)

	check := func(t *testing.T, c *Config) {
		t.Helper()
		d := effectiveDefault()
		root, def := reflect.ValueOf(c).Elem(), reflect.ValueOf(d).Elem()
		for _, k := range keys() {
			got, was := root.FieldByIndex(k.index), def.FieldByIndex(k.index)
			if k.name == "redis.url" {
				continue // must stay empty beside redis.addrs
			}
			if reflect.DeepEqual(got.Interface(), was.Interface()) {
				t.Errorf("%s kept its default %v", k.name, got.Interface())
			}
		}
		if c.Cache.Routes[0].Route != "POST /contacts/search" || c.Cache.Routes[0].StaleIfError != 12*time.Second {
			t.Errorf("cache.routes = %+v", c.Cache.Routes)
		}
		w := c.Warm.Targets[0]
		if w.Version != "2021-07-28" || w.Requests[0].Method != "GET" || w.Requests[0].Path != "/contacts/?locationId=Ab" {
			t.Errorf("warm.targets = %+v", c.Warm.Targets)
		}
	}
	t.Run("flags", func(t *testing.T) { check(t, source{args: args}.mustLoad(t)) })
	t.Run("env", func(t *testing.T) { check(t, source{env: env}.mustLoad(t)) })
	t.Run("file", func(t *testing.T) { check(t, source{file: fileText}.mustLoad(t)) })
}

// fileFor writes values (flag text) as a nested YAML document.
func fileFor(t *testing.T, values map[string]string) string {
	t.Helper()
	var b strings.Builder
	section := ""
	for _, k := range keys() {
		v := values[k.name]
		s, leaf, nested := strings.Cut(k.name, ".")
		if !nested {
			b.WriteString(k.name + ": " + yamlScalar(v) + "\n")
			continue
		}
		if s != section {
			b.WriteString(s + ":\n")
			section = s
		}
		if strings.HasPrefix(v, "[") {
			b.WriteString("  " + leaf + ": " + v + "\n")
		} else {
			b.WriteString("  " + leaf + ": " + yamlScalar(v) + "\n")
		}
	}
	return b.String()
}

func yamlScalar(v string) string { return "'" + strings.ReplaceAll(v, "'", "''") + "'" }

func TestYAMLFile(t *testing.T) {
	c := source{file: `
upstream: http://127.0.0.1:8081/base
redis:
  url: rediss://:s3cret@redis.internal:6380/2
limits:
  max_body_bytes: 1048576
  max_response_bytes: 4MiB
dedupe:
  methods: [get, post]
  routes:
    - route: "PUT /locations/{locationId}/customFields/{id}"
      window: 5s
cache:
  stale_while_revalidate: 1m
  routes:
    - route: /contacts/{contactId}
      ttl: 2m
    - route: POST /contacts/search
      ttl: 10s
      stale_if_error: 0s
      policy: query
warm:
  interval: 10m
  targets:
    - name: agency
      token_file: /var/run/secrets/ghl/token
      version: "2021-04-15"
      requests:
        - path: /users/?locationId=LocA
        - method: post
          path: /contacts/search
          body: '{"locationId": "LocA", "pageLimit": 100}'
`}.mustLoad(t)
	if c.Upstream != "http://127.0.0.1:8081/base" || c.Redis.URL != "rediss://:s3cret@redis.internal:6380/2" {
		t.Errorf("upstream/redis: %q %q", c.Upstream, c.Redis.URL)
	}
	if c.Limits.MaxBodyBytes != MiB || c.Limits.MaxResponseBytes != 4*MiB {
		t.Errorf("limits = %+v", c.Limits)
	}
	if !reflect.DeepEqual(c.Dedupe.Methods, []string{"GET", "POST"}) {
		t.Errorf("dedupe.methods = %q", c.Dedupe.Methods)
	}
	// Route templates keep their case: viper lowercases map keys, which is why routes are lists.
	if want := []DedupeRoute{{Route: "PUT /locations/{locationId}/customFields/{id}", Window: 5 * time.Second}}; !reflect.DeepEqual(c.Dedupe.Routes, want) {
		t.Errorf("dedupe.routes = %+v", c.Dedupe.Routes)
	}
	wantCache := []CacheRoute{
		{Route: "/contacts/{contactId}", TTL: 2 * time.Minute, StaleWhileRevalidate: time.Minute, StaleIfError: 5 * time.Minute},
		{Route: "POST /contacts/search", TTL: 10 * time.Second, StaleWhileRevalidate: time.Minute, StaleIfError: 0, Policy: "query"},
	}
	if !reflect.DeepEqual(c.Cache.Routes, wantCache) {
		t.Errorf("cache.routes = %+v\nwant %+v", c.Cache.Routes, wantCache)
	}
	wantWarm := []WarmTarget{{
		Name: "agency", TokenFile: "/var/run/secrets/ghl/token", Version: "2021-04-15",
		Requests: []WarmRequest{
			{Method: "GET", Path: "/users/?locationId=LocA"},
			{Method: "POST", Path: "/contacts/search", Body: `{"locationId": "LocA", "pageLimit": 100}`},
		},
	}}
	if !reflect.DeepEqual(c.Warm.Targets, wantWarm) {
		t.Errorf("warm.targets = %+v\nwant %+v", c.Warm.Targets, wantWarm)
	}
}

func TestErrors(t *testing.T) {
	tests := []struct {
		name string
		src  source
		want string
	}{
		{"negative rate", source{env: []string{"GHLPROXY_RATELIMIT_RATE=-3"}}, `ratelimit.rate: must be > 0, got -3`},
		{"daily reset not a time", source{env: []string{"GHLPROXY_RATELIMIT_DAILY_RESET=25:00"}}, `ratelimit.daily_reset: want a time of day as HH:MM (UTC), got "25:00"`},
		{"negative lease", source{args: []string{"--ratelimit.lease=-1s"}}, `ratelimit.lease: must be >= 0, got -1s`},
		{"rate not a number", source{args: []string{"--ratelimit.rate=lots"}}, `ratelimit.rate: want an integer, got "lots"`},
		{"redis scheme", source{file: "redis:\n  url: http://localhost:6379\n"}, `redis.url: unsupported scheme "http" (want redis:// or rediss://)`},
		{"redis no host", source{file: "redis: {url: 'redis://:pw@/0'}"}, `redis.url: missing host in "redis://:<redacted>@/0"`},
		{"redis both", source{env: []string{"GHLPROXY_REDIS_URL=redis://a:6379", "GHLPROXY_REDIS_ADDRS=b:6379"}}, `redis.addrs: set redis.url or redis.addrs, not both`},
		{"redis master alone", source{args: []string{"--redis.master_name=m"}}, `redis.master_name: needs redis.addrs (the Sentinel addresses)`},
		{"redis addr", source{args: []string{"--redis.addrs=a:1,nope"}}, `redis.addrs[1]: not a host:port address: "nope"`},
		{"batch min over max", source{file: "batch:\n  min: 3\n  max: 2\n"}, `batch.min: must be <= batch.max (3 > 2)`},
		{"batch max over burst", source{args: []string{"--batch.max=45", "--ratelimit.burst=40"}}, `batch.max: must be <= ratelimit.burst (45 > 40): a group takes all its tokens in one grant`},
		{"coalesce past max wait", source{args: []string{"--batch.coalesce=20s", "--ratelimit.max_wait=20s"}}, `batch.coalesce: must be below ratelimit.max_wait (20s >= 20s): a held write would be refused before it is sent`},
		{"upstream relative", source{args: []string{"--upstream=foo"}}, `upstream: not an absolute http(s) URL: "foo"`},
		{"upstream ftp", source{args: []string{"--upstream=ftp://x"}}, `upstream: not an absolute http(s) URL: "ftp://x"`},
		{"upstream query", source{args: []string{"--upstream=https://u:p@x/?a=1"}}, `upstream: must be a plain base URL without credentials, query or fragment: "https://u:xxxxx@x/?a=1"`},
		{"unknown key", source{file: "ratelimt:\n  rate: 5\n"}, `unknown key "ratelimt" in `},
		{"unknown nested key", source{file: "ratelimit:\n  rat: 5\n"}, `unknown key "ratelimit.rat" in `},
		{"dotted key", source{file: "ratelimt.rate: 5\n"}, `unknown key "ratelimt.rate" in `},
		{"unknown key in list", source{file: "cache:\n  routes:\n    - route: /x\n      tll: 5s\n"}, `unknown key "cache.routes[0].tll" in `},
		{"duration without unit", source{file: "dedupe:\n  window: 30\n"}, `dedupe.window: invalid duration "30": missing unit`},
		{"duration string without unit", source{env: []string{"GHLPROXY_DEDUPE_WINDOW=30"}}, `dedupe.window: invalid duration "30": missing unit`},
		{"duration garbage", source{args: []string{"--batch.linger=soon"}}, `batch.linger: invalid duration "soon"`},
		{"duration unit", source{args: []string{"--batch.linger=5y"}}, `batch.linger: invalid duration "5y": unknown unit "y"`},
		{"negative duration", source{args: []string{"--ratelimit.max_wait=-1s"}}, `ratelimit.max_wait: must be >= 0, got -1s`},
		{"zero timeout", source{args: []string{"--transport.timeout=0"}}, `transport.timeout: must be > 0, got 0s`},
		{"header over overall", source{args: []string{"--transport.header_timeout=90s"}}, `transport.header_timeout: must be <= transport.timeout (1m30s > 1m)`},
		{"bad size", source{args: []string{"--limits.max_body_bytes=10MB!"}}, `limits.max_body_bytes: invalid size "10MB!" (want bytes or a number with KiB, MiB, GiB, KB, MB, GB)`},
		{"zero size", source{file: "limits: {max_body_bytes: 0}"}, `limits.max_body_bytes: must be > 0, got 0`},
		{"negative size", source{args: []string{"--limits.gc_heap_floor=-1"}}, `limits.gc_heap_floor: must be >= 0, got -1`},
		{"bool", source{env: []string{"GHLPROXY_BATCH_MERGE=maybe"}}, `batch.merge: want true or false, got "maybe"`},
		{"section not a map", source{file: "ratelimit: 5\n"}, `ratelimit: want a mapping of keys, got "5"`},
		{"string gets a map", source{file: "listen: {a: b}\n"}, `listen: want a string, got a mapping`},
		{"listen", source{args: []string{"--listen=8080"}}, `listen: not a host:port address: "8080"`},
		{"same listeners", source{args: []string{"--ops_listen=:8080"}}, `ops_listen: must differ from listen (both ":8080")`},
		{"method", source{args: []string{"--dedupe.methods=GET,FETCH"}}, `dedupe.methods[1]: unknown method "FETCH" (want GET, POST, PUT, PATCH or DELETE)`},
		{"route", source{file: "dedupe: {routes: [{route: contacts, window: 1s}]}"}, `dedupe.routes[0].route: not a route template: "contacts" (want "/contacts/{contactId}", optionally after a method)`},
		{"route oauth", source{file: "cache: {routes: [{route: /oauth/token}]}"}, `cache.routes[0].route: /oauth/ routes are never cached or folded: "/oauth/token"`},
		{"route twice", source{file: "cache: {routes: [{route: /a}, {route: /a}]}"}, `cache.routes[1].route: "/a" is listed twice`},
		{"policy", source{file: "cache: {routes: [{route: /a, policy: cache}]}"}, `cache.routes[0].policy: must be read, query, write, pass or empty, got "cache"`},
		{"routes not yaml", source{args: []string{"--cache.routes={"}}, `cache.routes: invalid YAML list: `},
		{"routes not a list", source{env: []string{`GHLPROXY_CACHE_ROUTES={route: /a}`}}, `cache.routes: want a list, got a mapping`},
		{"coherence", source{args: []string{"--cache.coherence=gossip"}}, `cache.coherence: must be pubsub or none, got "gossip"`},
		{"log level", source{args: []string{"--log.level=verbose"}}, `log.level: must be debug, info, warn or error, got "verbose"`},
		{"log format", source{args: []string{"--log.format=xml"}}, `log.format: must be text or json, got "xml"`},
		{"grace", source{args: []string{"--shutdown.grace=0s"}}, `shutdown.grace: must be > 0, got 0s`},
		{"jitter", source{args: []string{"--warm.interval=1m", "--warm.jitter=2m"}}, `warm.jitter: must be <= warm.interval (2m > 1m)`},
		{"warm reserve", source{args: []string{"--warm.interval=1m", "--ratelimit.warm_reserve=50"}}, `ratelimit.warm_reserve: must be < ratelimit.burst (50 >= 50), or warming never gets a token`},
		{"warm token inline", source{file: "warm:\n  targets:\n    - name: a\n      token: pit-1234\n"}, `warm.targets[0].token: tokens are never written in the configuration; name an environment variable in token_env or a file in token_file`},
		{"warm token inline env", source{env: []string{`GHLPROXY_WARM_TARGETS=[{"name":"a","token":"pit-1234"}]`}}, `warm.targets[0].token: tokens are never written in the configuration; name an environment variable in token_env or a file in token_file`},
		{"warm token env is a token", source{args: []string{`--warm.targets=[{name: a, token_env: "pit-1234-abcd", requests: [{path: /x}]}]`}}, `warm.targets[0].token_env: not an environment variable name (it names the variable holding the token, it is not the token)`},
		{"warm no token", source{args: []string{`--warm.targets=[{name: a, requests: [{path: /x}]}]`}}, `warm.targets[0]: set token_env or token_file`},
		{"warm two tokens", source{args: []string{`--warm.targets=[{name: a, token_env: A, token_file: /f, requests: [{path: /x}]}]`}}, `warm.targets[0]: set token_env or token_file, not both`},
		{"warm no name", source{args: []string{`--warm.targets=[{token_env: A}]`}}, `warm.targets[0].name: required`},
		{"warm twice", source{args: []string{`--warm.targets=[{name: a, token_env: A, requests: [{path: /x}]}, {name: a, token_env: B, requests: [{path: /x}]}]`}}, `warm.targets[1].name: "a" is used twice`},
		{"warm no requests", source{args: []string{`--warm.targets=[{name: a, token_env: A}]`}}, `warm.targets[0].requests: at least one request is required`},
		{"warm put", source{args: []string{`--warm.targets=[{name: a, token_env: A, requests: [{method: PUT, path: /x}]}]`}}, `warm.targets[0].requests[0].method: must be GET or POST, got "PUT"`},
		{"warm oauth", source{args: []string{`--warm.targets=[{name: a, token_env: A, requests: [{path: /oauth/token}]}]`}}, `warm.targets[0].requests[0].path: /oauth/ is never warmed: "/oauth/token"`},
		{"warm body object", source{file: "warm: {targets: [{name: a, token_env: A, requests: [{method: POST, path: /x, body: {locationId: L}}]}]}"}, `warm.targets[0].requests[0].body: want a string, got a mapping`},
		{"yaml list", source{file: "- listen\n"}, `...: want a mapping of keys at the top level, got a list`},
		{"yaml int key", source{file: "ratelimit: {1: 2}\n"}, `unknown key "ratelimit.1" in `},
		{"yaml syntax", source{file: "ratelimit:\n  rate: [\n"}, `invalid YAML: `},
		{"yaml duplicate", source{file: "listen: ':1'\nlisten: ':2'\n"}, `invalid YAML: `},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.src.load(t)
			if err == nil {
				t.Fatalf("no error, want %q", tt.want)
			}
			got := err.Error()
			if strings.Contains(got, "\n") {
				t.Errorf("error is not one line: %q", got)
			}
			// Messages that name the temp file are compared without it: wants that end in a
			// space or start with "..." are substrings.
			if sub := strings.TrimPrefix(tt.want, "..."); sub != tt.want || strings.HasSuffix(tt.want, " ") {
				if !strings.Contains(got, sub) {
					t.Errorf("error %q, want it to contain %q", got, tt.want)
				}
				return
			}
			if got != tt.want {
				t.Errorf("error\n got %s\nwant %s", got, tt.want)
			}
		})
	}
}

// Port 0 gives each listener a port of its own, so equal addresses are fine (tests start
// replicas with both on 127.0.0.1:0).
func TestListenersOnPortZero(t *testing.T) {
	c := source{args: []string{"--listen=127.0.0.1:0", "--ops_listen=127.0.0.1:0"}}.mustLoad(t)
	if c.Listen != "127.0.0.1:0" || c.OpsListen != "127.0.0.1:0" {
		t.Errorf("listen %q, ops_listen %q", c.Listen, c.OpsListen)
	}
}

func TestUnknownKeyNamesFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte("ratelimt:\n  rate: 5\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := ValidateFile(path)
	if want := `unknown key "ratelimt" in ` + path; err == nil || err.Error() != want {
		t.Errorf("ValidateFile = %v, want %s", err, want)
	}
}

func TestValidateFileIgnoresEnvironment(t *testing.T) {
	t.Setenv("GHLPROXY_RATELIMIT_RATE", "-1")
	path := filepath.Join(t.TempDir(), "ok.yaml")
	if err := os.WriteFile(path, []byte("ratelimit: {rate: 90}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := ValidateFile(path); err != nil {
		t.Errorf("ValidateFile = %v", err)
	}
	if err := ValidateFile(filepath.Join(t.TempDir(), "missing.yaml")); err == nil || !strings.HasPrefix(err.Error(), "config file: open ") {
		t.Errorf("missing file: %v", err)
	}
}

// TestBurst: the burst Load derives is ratelimit.SafeBurst's (tested there), raised to
// batch.max.
func TestBurst(t *testing.T) {
	c := source{args: []string{"--ratelimit.rate=400"}}.mustLoad(t)
	if c.RateLimit.Burst != 30 || len(c.Warnings()) != 0 {
		t.Errorf("derived burst = %d, warnings %q", c.RateLimit.Burst, c.Warnings())
	}
	c = source{args: []string{"--ratelimit.rate=100", "--ratelimit.per=10s"}}.mustLoad(t)
	if c.RateLimit.Burst != c.Batch.Max {
		t.Errorf("derived burst at GHL's whole limit = %d, want batch.max %d", c.RateLimit.Burst, c.Batch.Max)
	}
}

func TestWarnings(t *testing.T) {
	tests := []struct {
		name string
		src  source
		want []string
	}{
		{"explicit unsafe burst", source{args: []string{"--ratelimit.burst=80"}}, []string{
			"ratelimit.burst: a full bucket of 80 plus 46.7 refilled in 10s allows 126.7 requests in one 10s window, over GHL's default of 100; fine only if this app's GHL limit is higher"}},
		{"explicit safe burst", source{args: []string{"--ratelimit.burst=53"}}, nil},
		{"rate alone too high", source{args: []string{"--ratelimit.rate=20", "--ratelimit.per=1s"}}, []string{
			"ratelimit.burst: a full bucket of 5 plus 200.0 refilled in 10s allows 205.0 requests in one 10s window, over GHL's default of 100; fine only if this app's GHL limit is higher"}},
		{"derived burst follows batch.max", source{args: []string{"--batch.max=60"}}, []string{
			"ratelimit.burst: a full bucket of 60 plus 46.7 refilled in 10s allows 106.7 requests in one 10s window, over GHL's default of 100; fine only if this app's GHL limit is higher"}},
		{"shared store without secret", source{args: []string{"--redis.url=redis://127.0.0.1:6379"}}, []string{
			"identity.secret: empty, so credential hashes in Redis use the built-in key; set one secret shared by every replica"}},
		{"shared store with secret", source{args: []string{"--redis.url=redis://127.0.0.1:6379", "--identity.secret=s"}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.src.mustLoad(t).Warnings(); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Warnings =\n %q\nwant %q", got, tt.want)
			}
		})
	}
}

func TestFlagsForEveryKey(t *testing.T) {
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	RegisterFlags(fs)
	for _, k := range keys() {
		f := fs.Lookup(k.name)
		if f == nil {
			t.Errorf("no flag for %s", k.name)
			continue
		}
		if f.Usage == "" {
			t.Errorf("flag --%s has no help", k.name)
		}
	}
	if fs.Lookup(ConfigFlag) == nil {
		t.Error("no --config flag")
	}
	// Bare boolean flags mean true; repeated list flags accumulate.
	if err := fs.Parse([]string{"--batch.bulk", "--dedupe.methods", "GET", "--dedupe.methods", "POST"}); err != nil {
		t.Fatal(err)
	}
	c, err := Load(fs, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Batch.Bulk || !reflect.DeepEqual(c.Dedupe.Methods, []string{"GET", "POST"}) {
		t.Errorf("bulk=%v methods=%q", c.Batch.Bulk, c.Dedupe.Methods)
	}
}

func TestEveryKeyDocumented(t *testing.T) {
	d := fieldDocs()
	for _, k := range keys() {
		if doc := d.doc(k); len(doc) < 10 {
			t.Errorf("%s: field %s.%s has no doc comment", k.name, k.owner.Name(), k.field.Name)
		}
	}
	for _, typ := range []reflect.Type{reflect.TypeFor[DedupeRoute](), reflect.TypeFor[CacheRoute](), reflect.TypeFor[WarmTarget](), reflect.TypeFor[WarmRequest]()} {
		for i := range typ.NumField() {
			if d[typ.Name()+"."+typ.Field(i).Name] == "" {
				t.Errorf("field %s.%s has no doc comment", typ.Name(), typ.Field(i).Name)
			}
		}
	}
}

func TestWarmToken(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "token")
	if err := os.WriteFile(file, []byte("pit-from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"GHL_TOKEN": " pit-from-env ", "EMPTY": ""}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	tests := []struct {
		target  WarmTarget
		want    string
		wantErr string
	}{
		{WarmTarget{Name: "a", TokenEnv: "GHL_TOKEN"}, "pit-from-env", ""},
		{WarmTarget{Name: "a", TokenFile: file}, "pit-from-file", ""},
		{WarmTarget{Name: "a", TokenEnv: "MISSING"}, "", `warm target "a": environment variable MISSING is not set`},
		{WarmTarget{Name: "a", TokenEnv: "EMPTY"}, "", `warm target "a": empty token`},
		{WarmTarget{Name: "a", TokenFile: filepath.Join(dir, "nope")}, "", `warm target "a": open ` + filepath.Join(dir, "nope") + `: no such file or directory`},
	}
	for _, tt := range tests {
		got, err := tt.target.Token(lookup)
		if got != tt.want || (err == nil) != (tt.wantErr == "") || (err != nil && err.Error() != tt.wantErr) {
			t.Errorf("Token(%+v) = %q, %v; want %q, %s", tt.target, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestByteSize(t *testing.T) {
	for in, want := range map[string]ByteSize{
		"0": 0, "1024": KiB, "10MiB": 10 * MiB, "64mib": 64 * MiB, "1GiB": GiB, "1.5KiB": 1536,
		"10MB": 10_000_000, "2kb": 2000, "7B": 7, " 3 MiB ": 3 * MiB,
		// Above 2^53 a float64 would round to a neighbour; whole numbers stay exact.
		"10000000000000001": 10000000000000001,
	} {
		if got, err := ParseByteSize(in); err != nil || got != want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "MiB", "ten", "1.5B", "0x10", "1e400", "NaN", "Inf",
		"9000000000000000000", "9000000000000000KiB", "1e17", "10000000000000001.0"} {
		if got, err := ParseByteSize(in); err == nil {
			t.Errorf("ParseByteSize(%q) = %d, want an error", in, got)
		}
	}
	for b, want := range map[ByteSize]string{0: "0", 10 * MiB: "10MiB", 1536: "1536", 3 * GiB: "3GiB", KiB: "1KiB"} {
		if got := b.String(); got != want {
			t.Errorf("ByteSize(%d).String() = %q, want %q", int64(b), got, want)
		}
	}
}
