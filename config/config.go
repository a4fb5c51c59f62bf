// Package config is ghlproxy's one typed configuration: the Config struct, its defaults,
// loading (flags over GHLPROXY_* environment variables over a YAML file over defaults),
// validation with one-line errors that name the key, and the redacted effective
// configuration that `ghlproxy config` prints.
//
// The field comments below are the user documentation: the first sentence of each is the
// flag's help text, and the README's configuration table is generated from them.
// A field's key is its yaml tag, joined with dots under its section ("ratelimit.rate").
package config

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/ghlproxy/ghlproxy/batcher"
	"github.com/ghlproxy/ghlproxy/cache"
	"github.com/ghlproxy/ghlproxy/dedupe"
	"github.com/ghlproxy/ghlproxy/ratelimit"
	"github.com/ghlproxy/ghlproxy/webhook"
)

// Config is the whole configuration of one sidecar process.
type Config struct {
	// Proxy listener address: GHL traffic and the /_ghlproxy/ endpoints.
	Listen string `yaml:"listen"`
	// Ops listener address: /metrics, /healthz and /readyz.
	OpsListen string `yaml:"ops_listen"`
	// Base URL of the GHL API, an absolute http(s) URL; point it at the stand-in that
	// "ghlproxy fakeghl" runs to try the sidecar without an account.
	Upstream string `yaml:"upstream"`

	// How the sidecar talks to upstream.
	Transport Transport `yaml:"transport"`
	// Size bounds on bodies.
	Limits Limits `yaml:"limits"`
	// The shared store; empty means an embedded in-memory store (one replica only).
	Redis Redis `yaml:"redis"`
	// The token bucket all replicas share, one per GHL rate-limit scope.
	RateLimit RateLimit `yaml:"ratelimit"`
	// Folding of identical requests.
	Dedupe Dedupe `yaml:"dedupe"`
	// Grouping of writes.
	Batch Batch `yaml:"batch"`
	// The read and query cache.
	Cache Cache `yaml:"cache"`
	// The warming loop.
	Warm Warm `yaml:"warm"`
	// GHL's webhook deliveries, which drop what changes made in GHL itself made wrong.
	Webhooks Webhooks `yaml:"webhooks"`
	// The /_ghlproxy/ admin endpoints.
	Admin Admin `yaml:"admin"`
	// Credential hashing.
	Identity Identity `yaml:"identity"`
	// Logging.
	Log Log `yaml:"log"`
	// Graceful shutdown.
	Shutdown Shutdown `yaml:"shutdown"`
}

// Transport holds the upstream HTTP client's settings. They live under "transport." because
// the key "upstream" itself is the URL.
type Transport struct {
	// Longest time to open a TCP connection to upstream.
	DialTimeout time.Duration `yaml:"dial_timeout"`
	// Longest time for the TLS handshake with upstream.
	TLSTimeout time.Duration `yaml:"tls_timeout"`
	// Longest wait for upstream's response headers after the request was sent.
	HeaderTimeout time.Duration `yaml:"header_timeout"`
	// Longest time for one whole upstream call, body included; must be at least
	// transport.header_timeout.
	Timeout time.Duration `yaml:"timeout"`
	// Idle keep-alive connections kept to upstream; writes of one group go out concurrently
	// over them, so keep this above batch.max.
	MaxIdleConnsPerHost int `yaml:"max_idle_conns_per_host"`
	// Upstream calls slower than this are counted in ghlproxy_slow_upstream_total and logged;
	// 0 turns that off. It sits here, beside the other upstream timings, rather than under log.
	SlowThreshold time.Duration `yaml:"slow_threshold"`
}

// Limits bounds what the sidecar buffers.
type Limits struct {
	// Largest request body accepted from the app (integer bytes or "10MiB"); larger requests
	// get a sidecar-made 413 before anything goes upstream.
	MaxBodyBytes ByteSize `yaml:"max_body_bytes"`
	// Largest upstream response the sidecar buffers (to cache, fold or replay it), on every
	// route but pass-through ones; a larger one is answered with a sidecar-made 502
	// (upstream-response-too-large).
	MaxResponseBytes ByteSize `yaml:"max_response_bytes"`
	// Longest the app may take to send a request's body once its headers are in; past it the
	// request gets a sidecar-made 408 and its connection is closed (nothing of a buffered
	// route was sent to GHL). Headers have 10s of their own; /oauth/ is not bounded (it
	// passes untouched).
	BodyTimeout time.Duration `yaml:"body_timeout"`
	// Heap the garbage collector lets grow before it collects while the live heap is small
	// (integer bytes or "32MiB"; 0, or a GOGC environment variable, leaves Go's default):
	// fewer collections and more cache hits per CPU, for up to this much more memory at
	// rest. See "Benchmarks".
	GCHeapFloor ByteSize `yaml:"gc_heap_floor"`
}

// Redis selects the store every replica shares. Set redis.url for one server, or
// redis.addrs for Redis Cluster (or Sentinel, with redis.master_name); leave all empty for
// the embedded in-memory store, which only a single replica can use.
type Redis struct {
	// Address of one Redis server: redis://[user:password@]host:port[/db], or rediss:// for
	// TLS. A password in it is redacted when the configuration is printed.
	URL string `yaml:"url"`
	// Redis Cluster node addresses (host:port; one is enough, the others are found from
	// it), or the Sentinel addresses when redis.master_name is set. A single Redis goes in
	// redis.url (one listed here alone still works as one). A comma-separated list in
	// flags and environment variables.
	Addrs []string `yaml:"addrs"`
	// Sentinel master name: with it redis.addrs are Sentinels, not cluster nodes.
	MasterName string `yaml:"master_name"`
	// Password for redis.addrs (or for redis.url, overriding one written in it).
	Password string `yaml:"password" secret:"true"`
	// Longest wait for one Redis command; past it that request goes on without Redis
	// (local bucket, local fold, cache miss) and the sidecar reports itself degraded.
	// It bounds the latency Redis can add to a request.
	Timeout time.Duration `yaml:"timeout"`
	// Connections per replica; 0 means the client's default (10 per CPU).
	PoolSize int `yaml:"pool_size"`
}

// RateLimit is the shared token bucket, one per GHL rate-limit scope (location or company).
type RateLimit struct {
	// Tokens added per ratelimit.per: the sustained request rate of one scope.
	Rate int `yaml:"rate"`
	// The period ratelimit.rate is counted over.
	Per time.Duration `yaml:"per"`
	// Bucket size, how many requests may go at once after a quiet spell; 0 (the default)
	// picks the largest that keeps GHL's default limit of 100 requests per 10s safe. Even
	// from a cold start, a full bucket of B plus the refill over 10s must stay within 97
	// (the 3% left absorbs requests granted together but reaching GHL spread out by network
	// jitter), so B <= 97 - 10s*rate/per; with 280 per 1m that is 97 - 46.7 = 50.3, so 50.
	// The default is at most 50 and at least batch.max (a group takes its tokens in one
	// grant). A value whose full bucket plus refill exceeds 100 is allowed but reported as
	// a start-up warning.
	Burst int `yaml:"burst"`
	// Longest a request queues for a token before it gets a sidecar-made 429 with
	// Retry-After; nothing has gone upstream by then. 0 takes the default (20s).
	MaxWait time.Duration `yaml:"max_wait"`
	// Tokens warming must leave in the bucket: warming only spends tokens above this, so
	// interactive traffic always finds some. 0 keeps none back.
	WarmReserve int `yaml:"warm_reserve"`
	// Requests of GHL's daily limit kept for interactive traffic: warming (with
	// ratelimit.daily_pacing, every background request) stops for the day once
	// X-RateLimit-Daily-Remaining falls below this. 0 keeps none back.
	DailyReserve int `yaml:"daily_reserve"`
	// Spend the limit GHL advertises (X-RateLimit-Max per
	// X-RateLimit-Interval-Milliseconds), upward as well as downward, instead of
	// ratelimit.rate and burst, once a scope has seen it: for an app that owns its GHL
	// app's budget. Off: 280/min, less
	// than half of GHL's 100 per 10 s, leaving the rest to clients the sidecar cannot see.
	FollowGHL bool `yaml:"follow_ghl"`
	// With follow_ghl, the share of GHL's window left to other clients (0 to 0.5): the
	// bucket plans at most (0.97 - follow_reserve) of it in any window, so 87 of 100 per
	// 10 s with the default 0.1.
	FollowReserve float64 `yaml:"follow_reserve"`
	// Spread what GHL's X-RateLimit-Daily-Remaining says is left of its day (200,000 calls
	// per location) over the time to ratelimit.daily_reset, so that a sustained 280/min
	// does not spend it in 12 hours and leave every call failing until the reset: a request
	// costs the bucket more than one token when the rate would spend the rest early
	// (at most one whole burst). Background and warm requests are paced on what is left
	// above ratelimit.daily_reserve, so they slow down first and stop at it.
	DailyPacing bool `yaml:"daily_pacing"`
	// When GHL's day restarts, HH:MM in UTC. GHL does not document it; check
	// X-RateLimit-Daily-Remaining climbing back in /_ghlproxy/stats and set it to match.
	DailyReset string `yaml:"daily_reset"`
	// On Redis, how long a replica may hold tokens it leased from the shared bucket: while
	// the bucket is more than half full, a request takes, beyond its own token, about what
	// the last lease asked of this replica (at most 16), and the next requests are granted
	// from them without a Redis round trip. Any GHL window sees at most rate × lease more
	// calls than the bucket alone sends (0.47 of 100 per 10 s by default); near an empty
	// bucket every decision is Redis's, as without leases. 0 turns leasing off.
	Lease time.Duration `yaml:"lease"`
}

// Dedupe folds identical requests (same credential, Version, method, path, query and body).
type Dedupe struct {
	// Identical requests within this window fold into one upstream call; a finished call's
	// answer is replayed to identical requests for this long, which makes client retries of
	// writes safe. 0 folds only concurrent requests.
	Window time.Duration `yaml:"window"`
	// Methods that fold. Default all of GET, POST, PUT, PATCH, DELETE; /oauth/ never folds.
	// A comma-separated list in flags and environment variables.
	Methods []string `yaml:"methods"`
	// Per-route fold windows overriding dedupe.window: a list of {route, window}. In flags
	// and environment variables, a YAML or JSON list.
	Routes []DedupeRoute `yaml:"routes"`
}

// DedupeRoute overrides the fold window of one route.
type DedupeRoute struct {
	// Route template as in the route table, e.g. "/contacts/{contactId}", optionally
	// preceded by a method and a space ("POST /contacts/") to apply to that method only; an
	// entry for one method wins over one for every method. It must name a route of the
	// table. Case matters: this is why routes are a list and not a map (viper lowercases map
	// keys).
	Route string `yaml:"route"`
	// Fold window of that route; 0 turns folding off for it (no sharing, no replay). A
	// method dedupe.methods leaves out does not fold whatever its window.
	Window time.Duration `yaml:"window"`
}

// Batch groups writes of one scope behind one rate-limit grant.
type Batch struct {
	// Smallest group worth waiting for: a group goes out when it has batch.min writes or
	// batch.linger has passed, whichever is first.
	Min int `yaml:"min"`
	// Largest group; must not exceed ratelimit.burst, because a group takes all its
	// tokens in one grant.
	Max int `yaml:"max"`
	// Longest a write waits for its group to fill.
	Linger time.Duration `yaml:"linger"`
	// Merge consecutive partial updates of one entity within a group into one call when the
	// result is provably the same.
	Merge bool `yaml:"merge"`
	// Send single tag adds (or removes) of one location token with the same tags, queued
	// together for distinct contacts, as one call to GHL's bulk tag endpoint (one token);
	// each caller still gets its own contact's answer.
	Bulk bool `yaml:"bulk"`
	// Hold a contact's (or opportunity's) partial update until it has waited this long, so
	// that the entity's later updates merge into the same call; 0 holds none past
	// batch.linger. Trades the callers' latency for fewer upstream calls; must be below
	// ratelimit.max_wait.
	Coalesce time.Duration `yaml:"coalesce"`
}

// Cache is the read and query cache, shared through Redis with an in-process layer in front.
type Cache struct {
	// TTL for every cached route; 0 uses each route's default from the route table.
	DefaultTTL time.Duration `yaml:"default_ttl"`
	// How long past its TTL an entry may still be served while one background refresh runs.
	StaleWhileRevalidate time.Duration `yaml:"stale_while_revalidate"`
	// How long past its TTL an entry may be served instead of an upstream error or timeout.
	StaleIfError time.Duration `yaml:"stale_if_error"`
	// A read miss that would wait longer than this for a rate-limit token, and holds an
	// entry inside its stale_if_error window, is answered from that entry at once
	// (Cache-Status: fwd=stale; detail=busy) while the entry is refreshed in the background
	// lane; 0 always waits for the token.
	StaleIfBusy time.Duration `yaml:"stale_if_busy"`
	// Store the answer of PUT /contacts/{contactId}, POST /contacts/upsert,
	// PUT /opportunities/{id} and POST /opportunities/ as the answer of the GET of the same
	// record, for the writing credential, instead of leaving a miss behind: per GHL's specs
	// these writes answer with the record that GET returns. Other credentials of the scope
	// are invalidated as without it; a change of the record between the write and the store
	// (another write, a webhook) leaves a miss.
	WriteThrough bool `yaml:"write_through"`
	// TTL for 404 answers of reads; 0 does not cache them.
	NegativeTTL time.Duration `yaml:"negative_ttl"`
	// Size of the in-process layer in front of Redis, and of the whole store without Redis
	// (integer bytes or "64MiB"); 0 takes the default (64MiB).
	MemoryBytes ByteSize `yaml:"memory_bytes"`
	// Accepted for older configurations and not read: replicas always drop in-process
	// entries another replica invalidated through Redis publish/subscribe, the one
	// mechanism there is ("pubsub" or "none" are accepted; both mean that).
	Coherence string `yaml:"coherence"`
	// Per-route cache policy: a list of {route, ttl, stale_while_revalidate,
	// stale_if_error, policy}. In flags and environment variables, a YAML or JSON list.
	Routes []CacheRoute `yaml:"routes"`
}

// CacheRoute overrides the cache policy of one route.
type CacheRoute struct {
	// Route template as in the route table, e.g. "/contacts/{contactId}", optionally
	// preceded by a method and a space ("POST /contacts/search"). Case matters.
	Route string `yaml:"route"`
	// TTL of that route's answers; 0 keeps the route table's (or cache.default_ttl).
	TTL time.Duration `yaml:"ttl"`
	// Stale-while-revalidate window of that route; when absent, that of an entry for the
	// template under every method, else cache.stale_while_revalidate.
	StaleWhileRevalidate time.Duration `yaml:"stale_while_revalidate"`
	// Stale-if-error window of that route; when absent, that of an entry for the template
	// under every method, else cache.stale_if_error.
	StaleIfError time.Duration `yaml:"stale_if_error"`
	// Overrides the route table's policy: "read" or "query" (cache it), "write", or "pass"
	// (never cache or fold it); empty keeps the table's.
	Policy string `yaml:"policy"`
	// For a write route: the tags a successful write drops, replacing the route table's
	// rule, e.g. ["contacts", "contacts/{contactId}", "opportunities"] ("{name}" is a path
	// parameter of the route). Absent keeps the table's rule.
	Invalidates []string `yaml:"invalidates"`
}

// Warm keeps chosen reads cached by fetching them on a schedule, spending only tokens above
// ratelimit.warm_reserve.
type Warm struct {
	// Time between warming runs; 0 turns warming off.
	Interval time.Duration `yaml:"interval"`
	// Up to this much random delay before each run, so replicas do not warm in step; at
	// most warm.interval.
	Jitter time.Duration `yaml:"jitter"`
	// Pages followed per list request (via its next-page link) in one run.
	MaxPages int `yaml:"max_pages"`
	// What to warm: a list of {name, token_env | token_file, version, requests}. Tokens are
	// never written in the configuration: a "token" key is rejected. In flags and
	// environment variables, a YAML or JSON list.
	Targets []WarmTarget `yaml:"targets"`
}

// WarmTarget is one credential and the reads to keep warm with it.
type WarmTarget struct {
	// Name in logs, metrics and /_ghlproxy/warm; unique.
	Name string `yaml:"name"`
	// Environment variable holding the token (its name, not the token).
	TokenEnv string `yaml:"token_env"`
	// File holding the token, e.g. a mounted Kubernetes secret; surrounding white space is
	// ignored. Set token_env or token_file, not both.
	TokenFile string `yaml:"token_file"`
	// Version header sent with the requests; default "2021-07-28".
	Version string `yaml:"version"`
	// The requests, each {method, path, body}: method GET (default) or POST (read-only
	// query routes), path with its query string, body the JSON text of a POST.
	Requests []WarmRequest `yaml:"requests"`
}

// WarmRequest is one read to warm.
type WarmRequest struct {
	// GET (default) or POST.
	Method string `yaml:"method"`
	// Path and query, e.g. "/contacts/?locationId=abc&limit=100".
	Path string `yaml:"path"`
	// JSON body of a POST, as a string (keep it a string: a YAML mapping here is rejected,
	// because configuration keys are case-insensitive and JSON field names are not).
	Body string `yaml:"body"`
}

// Token returns the target's token, read from its environment variable (through
// lookupEnv, e.g. os.LookupEnv) or its file.
func (t WarmTarget) Token(lookupEnv func(string) (string, bool)) (string, error) {
	var tok string
	switch {
	case t.TokenEnv != "":
		v, ok := lookupEnv(t.TokenEnv)
		if !ok {
			return "", fmt.Errorf("warm target %q: environment variable %s is not set", t.Name, t.TokenEnv)
		}
		tok = v
	case t.TokenFile != "":
		b, err := os.ReadFile(t.TokenFile)
		if err != nil {
			return "", fmt.Errorf("warm target %q: %w", t.Name, err)
		}
		tok = string(b)
	}
	tok = strings.TrimSpace(tok)
	if tok == "" {
		return "", fmt.Errorf("warm target %q: empty token", t.Name)
	}
	return tok, nil
}

// Webhooks receives GHL's signed webhook deliveries at POST /_ghlproxy/webhooks/ghl, on the
// proxy listener and, when set, on a listener of its own.
type Webhooks struct {
	// Address of a listener that serves only POST /_ghlproxy/webhooks/ghl, so that only
	// the receiver is exposed to GHL; empty: none (the proxy listener still serves it).
	Listen string `yaml:"listen"`
	// Ed25519 key that verifies X-GHL-Signature: PEM, base64 of the DER
	// SubjectPublicKeyInfo, or the raw 32-byte key in base64 or hex. Empty: the key GHL
	// publishes in its Webhook Integration Guide.
	PublicKey string `yaml:"public_key"`
	// RSA key that verifies the legacy X-WH-Signature, which GHL is retiring: PEM
	// (SubjectPublicKeyInfo or PKCS#1) or base64 DER. Empty: the key GHL publishes for it; "off": deliveries signed only that way are
	// refused.
	LegacyPublicKey string `yaml:"legacy_public_key"`
	// A delivery whose timestamp is further than this from now, either way, is refused.
	MaxAge time.Duration `yaml:"max_age"`
	// URL every verified delivery is passed on to unchanged (body and headers), for an app
	// that handles GHL's webhooks itself; GHL then gets the app's answer. Empty: a verified
	// delivery is answered 204.
	ForwardURL string `yaml:"forward_url"`
}

// Admin guards the mutating /_ghlproxy/ endpoints (cache purge, warm now).
type Admin struct {
	// Bearer token the mutating /_ghlproxy/ endpoints require; empty allows loopback
	// callers only.
	Token string `yaml:"token" secret:"true"`
}

// Identity keys the credential hashes that name cache and fold entries.
type Identity struct {
	// Key of the credential hashes in cache and fold keys; must be the same on every
	// replica that shares one Redis, or they share nothing. Empty uses a built-in key.
	Secret string `yaml:"secret" secret:"true"`
}

// Log configures the process log.
type Log struct {
	// Lowest level logged: debug, info, warn or error.
	Level string `yaml:"level"`
	// text (coloured on a terminal) or json (for production).
	Format string `yaml:"format"`
}

// Shutdown configures graceful termination.
type Shutdown struct {
	// On SIGTERM, how long in-flight requests and queued writes get to finish; keep it below
	// the pod's terminationGracePeriodSeconds.
	Grace time.Duration `yaml:"grace"`
}

// Default returns the defaults. Those of a stage are the stage's own (ratelimit.Default*),
// so that a key and the package it configures cannot disagree. ratelimit.burst is 0 here
// (chosen from the rate); Load replaces it with ratelimit.SafeBurst's value.
func Default() *Config {
	return &Config{
		Listen:    ":8080",
		OpsListen: ":9090",
		Upstream:  "https://services.leadconnectorhq.com",
		Transport: Transport{
			DialTimeout:         5 * time.Second,
			TLSTimeout:          5 * time.Second,
			HeaderTimeout:       30 * time.Second,
			Timeout:             60 * time.Second,
			MaxIdleConnsPerHost: 100,
			SlowThreshold:       100 * time.Millisecond,
		},
		Limits: Limits{
			MaxBodyBytes:     10 * MiB,
			BodyTimeout:      10 * time.Second,
			MaxResponseBytes: 32 * MiB,
			GCHeapFloor:      32 * MiB,
		},
		Redis: Redis{
			Timeout: 50 * time.Millisecond,
		},
		RateLimit: RateLimit{
			Rate:          ratelimit.DefaultRate,
			Per:           ratelimit.DefaultPer,
			MaxWait:       ratelimit.DefaultMaxWait,
			WarmReserve:   ratelimit.DefaultWarmReserve,
			DailyReserve:  ratelimit.DefaultDailyReserve,
			FollowReserve: 0.1,
			DailyReset:    "00:00",
			Lease:         100 * time.Millisecond,
		},
		Dedupe: Dedupe{
			Window:  dedupe.DefaultWindow,
			Methods: []string{"GET", "POST", "PUT", "PATCH", "DELETE"},
		},
		Batch: Batch{
			Min:    batcher.DefaultMin,
			Max:    batcher.DefaultMax,
			Linger: batcher.DefaultLinger,
			Merge:  true,
		},
		Cache: Cache{
			StaleWhileRevalidate: 30 * time.Second,
			StaleIfError:         5 * time.Minute,
			StaleIfBusy:          250 * time.Millisecond,
			MemoryBytes:          cache.DefaultMemoryBytes,
			Coherence:            "pubsub",
		},
		Warm: Warm{
			Jitter:   10 * time.Second,
			MaxPages: 5,
		},
		Webhooks: Webhooks{MaxAge: webhook.DefaultMaxAge},
		Log: Log{
			Level:  "info",
			Format: "text",
		},
		Shutdown: Shutdown{
			Grace: 25 * time.Second,
		},
	}
}
