package ratelimit

import "math"

// The bucket is GCRA (the generic cell rate algorithm, as in go-redis/redis_rate) with
// reservations: the state is one timestamp, tat, the "theoretical arrival time" at which the
// bucket would be full again. Taking n tokens moves tat forward by n emission intervals; a
// request is allowed once tat-after-taking minus the burst tolerance is not in the future.
//
// Reservation (like rate.Limiter.Reserve): an interactive request that is not allowed yet may
// still move tat forward — it takes its tokens "into debt" and is told the instant they become
// valid; it sleeps until then and goes upstream without asking again. Every later request
// sees the moved tat, so waiters are served in the order the bucket saw them, with exactly one
// decision each. Background and warm requests never take debt: they take tokens only when they are
// free now, so they can never overtake an interactive reservation, and are told how long to
// sleep before asking again.
//
// This file is the Go form of the decision; takeScript in redis.go is the same arithmetic in
// Lua. Both must change together: the embedded bucket, the fallback bucket and the shared
// bucket are meant to behave identically.

// Decision modes, passed to the Lua script as numbers.
const (
	modeReserve = 0 // interactive: take now or reserve a future slot within maxWait
	modeNow     = 1 // background: take only what is free now
	modeWarm    = 2 // warm: take only what is free now and leaves the warm reserve
)

func modeOf(p Priority) int {
	switch p {
	case Interactive:
		return modeReserve
	case Background:
		return modeNow
	}
	return modeWarm
}

// limits of one bucket: emission interval in µs per token, and burst in tokens. share > 1
// divides the (learned) limits among that many replicas: the fallback buckets.
type limits struct {
	T     float64
	burst float64
	share float64
}

// learnMargin is the share of a learned upstream limit the bucket plans to use at most: the
// rest absorbs requests that were granted together but reach GHL spread by network jitter.
const learnMargin = 0.97

// learnedBurst is the smallest burst a bucket lowered to a learned limit keeps (unless the
// configured burst is smaller): a write group of batch.max (5) calls takes its tokens at once.
const learnedBurst = 5

// learnedBurstShare: a bucket lowered to a learned limit of lmax keeps a burst of
// lmax/learnedBurstShare (at least learnedBurst).
const learnedBurstShare = 10

// effective applies a limit learned from GHL's headers (lmax requests per lint ms). When the
// configured bucket could send more than learnMargin*lmax in one upstream interval from a
// cold start (burst + rate*interval), the margin comes out of the burst, not the rate: the
// burst drops to max(learnedBurst, lmax/10) and the rate is the rest of learnMargin*lmax per
// interval, so a busy scope keeps sending close to the learned limit (issue 3: the budget
// is used to the last token) while burst + rate*interval stays within learnMargin*lmax.
// Neither ever exceeds its configured value; when the configured rate is the lower one, the
// burst takes what it leaves.
func (c limits) effective(lmax, lintMs float64) limits {
	e := limits{T: c.T, burst: c.burst}
	if lmax > 0 && lintMs > 0 {
		capacity := lmax * learnMargin
		iv := lintMs * 1000 // µs
		if c.burst+iv/c.T > capacity {
			b := math.Min(c.burst, math.Max(learnedBurst, math.Floor(lmax/learnedBurstShare)))
			b = math.Max(1, math.Min(b, math.Floor(capacity/2)))
			T := math.Max(c.T, iv/math.Max(capacity-b, capacity/2))
			e = limits{T: T, burst: math.Min(c.burst, math.Max(b, math.Floor(capacity-iv/T)))}
		}
	}
	if c.share > 1 {
		e.T *= c.share
		e.burst = math.Max(1, math.Floor(e.burst/c.share))
	}
	return e
}

// followed is the bucket that spends an upstream window of lmax per lintMs, less reserve
// (a share of it left to other clients), with effective's arithmetic: burst
// max(learnedBurst, lmax/10), at most half the planned capacity, and the rest of
// (learnMargin-reserve)*lmax per interval as the rate, so that burst + rate*interval stays
// within that share in any window. For GHL's 100 per 10 s and reserve 0.1: burst 10, one
// token every 10 s/77 (462 a minute), 87 at most in any window. ok is false while no window
// is known, or one too small to plan on.
func followed(lmax, lintMs, reserve float64) (l limits, ok bool) {
	capacity := lmax * (learnMargin - reserve)
	if lmax <= 0 || lintMs <= 0 || capacity < 2 {
		return limits{}, false
	}
	b := math.Max(1, math.Min(math.Max(learnedBurst, math.Floor(lmax/learnedBurstShare)), math.Floor(capacity/2)))
	return limits{T: lintMs * 1000 / (capacity - b), burst: b}, true
}

// bucketState is one scope's shared state; the Redis hash has the same fields.
type bucketState struct {
	tat   float64 // µs; 0 = new bucket (full)
	pause float64 // µs: no new grants before this instant (GHL said 429 / Remaining 0)
	lmax  float64 // learned X-RateLimit-Max, 0 unknown
	lint  float64 // learned X-RateLimit-Interval-Milliseconds, 0 unknown
	dr    float64 // X-RateLimit-Daily-Remaining, -1 unknown
	dl    float64 // X-RateLimit-Limit-Daily, -1 unknown

}

func newBucketState() *bucketState { return &bucketState{dr: -1, dl: -1} }

// decision is what one take or observe returned. Durations are µs.
type decision struct {
	granted      bool
	dailyRefused bool    // warm request refused: daily remaining below the reserve
	wait         float64 // granted: until the reserved slot; refused: until it could be granted
	tokens       float64 // tokens left (negative: reserved debt)
	pauseLeft    float64
	dr, dl       float64
	lmax, lint   float64
	eff          limits
	leased       float64 // tokens taken beyond n for the replica to spend locally (lease.go)
}

type takeArgs struct {
	n            float64
	mode         int
	maxWait      float64 // µs
	warmReserve  float64
	dailyReserve float64
	lease        float64 // most tokens to take beyond n, for a lease (interactive, granted now)
}

// take decides one request at now (µs). Mirrors takeScript.
func (b *bucketState) take(now float64, c limits, a takeArgs) decision {
	eff := c.effective(b.lmax, b.lint)
	tau := eff.burst * eff.T
	d := decision{dr: b.dr, dl: b.dl, lmax: b.lmax, lint: b.lint, eff: eff, pauseLeft: math.Max(b.pause-now, 0)}
	tat := b.tat
	if tat == 0 {
		tat = now
	}
	base := math.Max(tat, now)
	if a.mode == modeWarm && b.dr >= 0 && b.dr < a.dailyReserve {
		d.dailyRefused = true
		d.tokens = (now + tau - base) / eff.T
		return d
	}
	newTat := base + a.n*eff.T
	allowAt := newTat - tau
	if a.mode == modeWarm {
		// The reserve in proportion to the bucket in force: a bucket lowered to a learned
		// limit or divided into fallback shares keeps the same fraction for interactive
		// requests, not a reserve as large as its whole (smaller) burst.
		allowAt += a.warmReserve * eff.burst / c.burst * eff.T
	}
	wait := allowAt - now
	switch {
	case wait < 1: // below a µs is float rounding of now+n*T-tau, not a wait
		d.granted, d.wait = true, 0
	case a.mode == modeReserve && wait <= a.maxWait:
		d.granted, d.wait = true, wait
	case a.mode != modeReserve && a.n > eff.burst && tat <= now:
		// A group larger than the whole burst is never free at once; once the bucket is full
		// (nobody reserved ahead of it) it reserves like an interactive request, or a write
		// group could never get its tokens from a small bucket (a learned limit's, or a
		// fallback share).
		d.granted, d.wait = true, wait
	default:
		d.wait = wait
		d.tokens = (now + tau - base) / eff.T
		return d
	}
	if extra := leaseSize(a, d.wait, (now+tau-newTat)/eff.T, eff.burst); extra > 0 {
		newTat += extra * eff.T
		d.leased = extra
	}
	b.tat = newTat
	d.tokens = (now + tau - newTat) / eff.T
	return d
}

// leaseSize is how many tokens beyond its own an interactive request granted now takes for
// its replica's lease: at most a.lease, and only what leaves the bucket at least half full
// (left: tokens left after the request's own), so a lease is never taken from a bucket
// that others may be waiting on. Mirrors takeScript.
func leaseSize(a takeArgs, wait, left, burst float64) float64 {
	if a.lease < 1 || a.mode != modeReserve || wait > 0 {
		return 0
	}
	return math.Max(0, math.Min(a.lease, math.Floor(left-burst/2)))
}

// observation is what one upstream response said; -1 / 0 mean "not reported".
type observation struct {
	lmax, lint   float64 // 0: not reported
	remaining    float64 // -1: not reported
	pause        bool    // 429 or Remaining 0
	pauseDefault float64 // ms, when lint is unknown
	dr, dl       float64 // -1: not reported
}

// observe folds one upstream response into the bucket at now (µs). Mirrors observeScript:
// learn the upstream limit, never hold more tokens than GHL says remain (other clients may
// share the quota), and on a pause empty the bucket until the upstream window allows.
func (b *bucketState) observe(now float64, c limits, o observation) decision {
	if o.lmax > 0 && o.lint > 0 {
		b.lmax, b.lint = o.lmax, o.lint
	}
	eff := c.effective(b.lmax, b.lint)
	tau := eff.burst * eff.T
	tat := b.tat
	if tat == 0 {
		tat = now
	}
	if o.remaining >= 0 {
		tat = math.Max(tat, now+tau-o.remaining*eff.T)
	}
	if o.pause {
		iv := b.lint
		if iv <= 0 {
			iv = o.pauseDefault
		}
		b.pause = math.Max(b.pause, now+iv*1000)
		// Empty at the end of the pause: the first new grant is due exactly then.
		tat = math.Max(tat, b.pause+tau-eff.T)
	}
	b.tat = tat
	if o.dr >= 0 {
		b.dr = o.dr
	}
	if o.dl >= 0 {
		b.dl = o.dl
	}
	return decision{
		tokens: (now + tau - math.Max(tat, now)) / eff.T, pauseLeft: math.Max(b.pause-now, 0),
		dr: b.dr, dl: b.dl, lmax: b.lmax, lint: b.lint, eff: eff,
	}
}
