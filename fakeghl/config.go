// Package fakeghl is a stand-in for the HighLevel (GHL) API, faithful enough that the
// sidecar is tested, demonstrated and benchmarked against it: GHL's per-scope rate limits
// and X-RateLimit-* headers, its 429 and error shapes, a long-tailed latency, faults that
// tests switch on at run time, stateful contacts, opportunities and conversations, and a
// plausible answer, generated from the OpenAPI specs, for every other documented route.
//
// It also counts what it saw (Stats) so tests can prove what the sidecar sent: calls per
// route, the most calls any scope made in one rate-limit window, the order of writes per
// entity.
//
// Stand-in only: every JSON object it answers to an authenticated route carries a top-level
// "_caller" field, the first 16 hex digits of SHA-256 of the request's Authorization header
// (see CallerOf). Isolation tests use it to prove that no credential is ever served a body
// made for another. Real GHL has no such field.
package fakeghl

import (
	"time"
)

// GHL's documented defaults.
const (
	DefaultLimit   = 100
	DefaultWindow  = 10 * time.Second
	DefaultDaily   = 200000
	DefaultLatency = 150 * time.Millisecond
	// DefaultBaseURL is where absolute links in answers (meta.nextPageUrl) point.
	DefaultBaseURL = "https://services.leadconnectorhq.com"
)

// Config shapes a Server. The zero value is GHL's limits with no added latency, which is
// what tests want; DefaultConfig adds GHL's latency for demos and benchmarks.
type Config struct {
	// Limit is the number of requests a scope may make per Window. Default 100.
	Limit int
	// Window is the rate-limit interval. Default 10s.
	Window time.Duration
	// Daily is the number of requests a scope may make per UTC day. Default 200,000.
	Daily int
	// Limits overrides Limit per scope, the way GHL grants some apps other limits. Keys are
	// scopes as ScopeOf returns them ("Location:abc app:xyz", "token:…"), or the
	// "Class:ID" part alone to cover every app on that resource.
	Limits map[string]int

	// Latency is the median added to every answer (0: none). The distribution is
	// log-normal with p99 ≈ 3.5 × median, like GHL's long tail.
	Latency time.Duration
	// Seed makes ids, latencies and fault choices reproducible.
	Seed uint64

	// BaseURL is the host of absolute links in answers. Default DefaultBaseURL: the
	// sidecar must rewrite those links, so tests keep the real host.
	BaseURL string

	// Now is the clock; tests inject a fake one to cross window boundaries without
	// sleeping. Default time.Now.
	Now func() time.Time

	// VerifyTokens makes the stand-in check JWT signatures as GHL does: a JWT must carry
	// the signature SignedToken gives it, or it is answered GHL's 401 before it counts
	// against any scope. Off, it accepts any token (Token's are unsigned).
	VerifyTokens bool

	// WebhookURL is where the stand-in sends the signed webhooks of its changes (see
	// SetWebhookURL); "" sends none.
	WebhookURL string
}

// DefaultConfig is GHL as a client sees it: default limits and a ~150 ms median latency.
func DefaultConfig() Config {
	return Config{Latency: DefaultLatency}
}

func (c Config) withDefaults() Config {
	if c.Limit <= 0 {
		c.Limit = DefaultLimit
	}
	if c.Window <= 0 {
		c.Window = DefaultWindow
	}
	if c.Daily <= 0 {
		c.Daily = DefaultDaily
	}
	if c.BaseURL == "" {
		c.BaseURL = DefaultBaseURL
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}
