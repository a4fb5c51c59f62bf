// Package ratelimit is the token bucket every replica of an app shares, one per GHL
// rate-limit scope (location or company, per app). Callers queue for tokens instead of
// failing; past ratelimit.max_wait they get a RejectedError before anything went upstream.
//
// Lanes: the app's own requests — reads, writes and batched groups of writes alike — share
// one lane (Interactive) and reserve their slots in arrival order, so a write never waits
// behind reads that came after it. Background work (stale-while-revalidate refreshes, and
// requests a client marks X-Ghlproxy-Priority: background) takes only tokens free now, after
// every interactive reservation, and warming goes last, above ratelimit.warm_reserve.
package ratelimit

import (
	"context"
	"fmt"
	"math"
	"time"
)

// Priority is a waiter's lane (see the package doc): Interactive before Background before
// Warm.
type Priority int

const (
	Interactive Priority = iota
	Background
	Warm
)

// Lanes lists the priorities, for metrics labels.
var Lanes = [...]Priority{Interactive, Background, Warm}

func (p Priority) String() string {
	switch p {
	case Interactive:
		return "interactive"
	case Background:
		return "background"
	case Warm:
		return "warm"
	}
	return fmt.Sprintf("priority(%d)", int(p))
}

type maxWaitKey struct{}

// WithMaxWait bounds the waits made with ctx to d, below ratelimit.max_wait: a wait that
// cannot be granted within d is refused up front (a *RejectedError), and one that can is
// slept to its end. Unlike a deadline on ctx, it never cuts a granted wait short, which
// would leave the reserved token unused.
func WithMaxWait(ctx context.Context, d time.Duration) context.Context {
	return context.WithValue(ctx, maxWaitKey{}, d)
}

// ParsePriority reads a lane's name, as X-Ghlproxy-Priority carries it.
func ParsePriority(s string) (Priority, error) {
	for _, p := range Lanes {
		if s == p.String() {
			return p, nil
		}
	}
	return 0, fmt.Errorf("priority %q is not a lane (interactive, background, warm)", s)
}

// Grant is a successful Wait.
type Grant struct {
	// Waited is how long the caller queued; the proxy reports it as X-Ghlproxy-Queue-Ms.
	Waited time.Duration
	// Remaining is the scope's tokens left after this grant, as far as the limiter knows.
	Remaining int
	// Fallback is true when the decision was made on the local fallback bucket.
	Fallback bool
}

// RejectedError means no token could be had within the wait bound. Nothing was sent
// upstream; the proxy answers 429 with Retry-After and X-RateLimit-* from these fields.
type RejectedError struct {
	// RetryAfter is when the tokens would be free given the queue at the time of the
	// decision (for a warm request refused by the daily reserve: a fixed minute).
	RetryAfter time.Duration
	Limit      int           // X-RateLimit-Max
	Interval   time.Duration // X-RateLimit-Interval-Milliseconds
	Remaining  int           // X-RateLimit-Remaining
}

func (e *RejectedError) Error() string {
	return fmt.Sprintf("rate limited: no token within the wait bound, retry after %s", e.RetryAfter.Round(time.Millisecond))
}

// Config of the shared bucket. Zero values take the defaults named on each field; the
// proxy's configuration keys ratelimit.* map onto these fields.
type Config struct {
	// Rate tokens are added every Per, per scope, shared by all replicas. Default 280 per 1m
	// (DefaultRate, DefaultPer).
	Rate int
	Per  time.Duration
	// Burst is the bucket's capacity. Default SafeBurst(Rate, Per): 50 at the default rate.
	Burst int
	// MaxWait is the longest a request queues for a token before it is refused. Default 20s.
	MaxWait time.Duration
	// WarmReserve tokens are never taken by warming requests (in proportion when a learned
	// limit lowers the burst). Default (0) 10, at most Burst-1; NoReserve for none.
	WarmReserve int
	// DailyLimit is the daily quota assumed until GHL reports one. Default 200000.
	DailyLimit int
	// DailyReserve: warming stops while the scope's daily remaining is below it. Default
	// (0) 5000; NoReserve for none.
	DailyReserve int
	// FollowGHL makes a scope that has seen GHL's X-RateLimit-Max per Interval spend that
	// window, less FollowReserve of it (see followed), instead of Rate and Burst: upward as
	// well as downward.
	FollowGHL     bool
	FollowReserve float64
	// DailyPacing spreads what GHL's X-RateLimit-Daily-Remaining says is left of the day
	// over the time to DailyReset (see pacing.go): background and warm requests on what is
	// left above DailyReserve, the app's on all of it.
	DailyPacing bool
	// DailyReset is when GHL's day restarts, as time after midnight UTC. Default 0
	// (midnight UTC).
	DailyReset time.Duration
	// Lease is how long tokens a replica leases from the shared bucket stay spendable (see
	// lease.go): while the bucket is more than half full, an interactive request takes up
	// to what the last Lease asked of this replica beyond its own tokens, and the next
	// requests spend them without a Redis round trip. 0: no leases, every decision on
	// Redis. Unused without Redis.
	Lease time.Duration
	// RedisTimeout bounds every limiter call to Redis; past it the decision is made on the
	// local fallback bucket. Default 50ms.
	RedisTimeout time.Duration
	// Prefix of every Redis key. Default "ghlproxy".
	Prefix string
	// ReplicaID names this replica in the replica set used to share the budget while Redis
	// is unreachable. Default random.
	ReplicaID string
	// ReplicaTTL: a replica that has not refreshed its registration for this long is no
	// longer counted. Default 15s. Every replica refreshes its registration and re-reads
	// the count every second (every ReplicaTTL/3 if that is shorter).
	ReplicaTTL time.Duration
	// ProbeInterval: how often Redis is probed while the limiter runs on fallback buckets.
	// Default 500ms.
	ProbeInterval time.Duration
	// Now is the clock of the in-process buckets (tests); default time.Now.
	Now func() time.Time
}

// GHL's default limit, GHLWindowLimit requests per GHLWindow: the default burst keeps it,
// GHLWindow is the pause after a 429 when GHL does not say its interval.
const (
	GHLWindow      = 10 * time.Second
	GHLWindowLimit = 100
)

// The defaults of Config, which config.Default is built from: one value each, for the
// sidecar's configuration keys and for code that builds a Config itself.
const (
	DefaultRate        = 280
	DefaultPer         = time.Minute
	DefaultMaxWait     = 20 * time.Second
	DefaultWarmReserve = 10
	// NoReserve, as Config.WarmReserve or DailyReserve, keeps nothing back from warming
	// (0 there takes the default).
	NoReserve           = -1
	DefaultDailyLimit   = 200000
	DefaultDailyReserve = 5000
	// maxDefaultBurst caps SafeBurst for slow rates, where GHL's window would allow more.
	maxDefaultBurst = 50
)

// SafeBurst is the default burst for rate tokens per per: the largest bucket that, full at
// the start of one of GHL's default windows (100 per 10 s) and refilled during it, sends at
// most learnMargin (97%) of that window — B + 10s×rate/per <= 97, so 50 at 280 per minute
// (50 + 46.7 = 96.7) — capped at 50 and at least 1. The 3% left absorbs requests granted
// together but reaching GHL spread out by network jitter.
func SafeBurst(rate int, per time.Duration) int {
	if per <= 0 {
		return 1
	}
	b := int(math.Floor(GHLWindowLimit*learnMargin - WindowRefill(rate, per)))
	return max(1, min(maxDefaultBurst, b))
}

// WindowRefill is how many tokens rate per per adds during one of GHL's default windows.
func WindowRefill(rate int, per time.Duration) float64 {
	return float64(rate) * float64(GHLWindow) / float64(per)
}

func (c Config) withDefaults() (Config, error) {
	if c.Rate == 0 {
		c.Rate = DefaultRate
	}
	if c.Per == 0 {
		c.Per = DefaultPer
	}
	if c.Rate < 0 || c.Per < 0 {
		return c, fmt.Errorf("ratelimit.rate: must be positive, got %d per %s", c.Rate, c.Per)
	}
	if c.Burst == 0 {
		c.Burst = SafeBurst(c.Rate, c.Per)
	}
	if c.Burst < 0 {
		return c, fmt.Errorf("ratelimit.burst: must be positive, got %d", c.Burst)
	}
	if c.MaxWait == 0 {
		c.MaxWait = DefaultMaxWait
	}
	if c.MaxWait < 0 {
		return c, fmt.Errorf("ratelimit.max_wait: must not be negative, got %s", c.MaxWait)
	}
	switch {
	case c.WarmReserve == 0:
		// Below the burst, or warming would never get a token (config refuses such a value).
		c.WarmReserve = max(0, min(DefaultWarmReserve, c.Burst-1))
	case c.WarmReserve < 0:
		c.WarmReserve = 0 // NoReserve
	}
	if c.DailyLimit == 0 {
		c.DailyLimit = DefaultDailyLimit
	}
	switch {
	case c.DailyReserve == 0:
		c.DailyReserve = DefaultDailyReserve
	case c.DailyReserve < 0:
		c.DailyReserve = 0 // NoReserve
	}
	if c.RedisTimeout == 0 {
		c.RedisTimeout = 50 * time.Millisecond
	}
	if c.Prefix == "" {
		c.Prefix = "ghlproxy"
	}
	if c.ReplicaTTL == 0 {
		c.ReplicaTTL = 15 * time.Second
	}
	if c.ProbeInterval == 0 {
		c.ProbeInterval = 500 * time.Millisecond
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c, nil
}

// ScopeStats is one scope as this replica knows it, for /_ghlproxy/stats.
type ScopeStats struct {
	Scope  string  `json:"scope"` // the credential's ScopeKey, already hashed
	Tokens float64 `json:"tokens"`
	Queue  int     `json:"queue"` // this replica's requests waiting
	// QueueByLane splits Queue by lane (interactive, background, warm).
	QueueByLane    map[string]int `json:"queue_by_lane"`
	DailyRemaining int            `json:"daily_remaining"`
	DailyLimit     int            `json:"daily_limit"`
	// DailyPace is what one token of an app request costs the bucket under
	// ratelimit.daily_pacing: 1 while the rate lasts the day, more when it would not.
	DailyPace   float64   `json:"daily_pace"`
	PausedUntil time.Time `json:"paused_until,omitzero"`
	// LimitMax per LimitInterval is GHL's limit as learned from its headers (0: none yet).
	LimitMax      int           `json:"limit_max"`
	LimitInterval time.Duration `json:"limit_interval"`
	// Rate (tokens per second) and Burst in force: the configured ones, lowered to a learned
	// limit, or this replica's share while on fallback.
	Rate     float64   `json:"rate"`
	Burst    int       `json:"burst"`
	Fallback bool      `json:"fallback"`
	Updated  time.Time `json:"updated"`
}
