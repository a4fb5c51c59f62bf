package ratelimit

import (
	"math"
	"time"
)

// Daily pacing (Config.DailyPacing). GHL also counts 200,000 calls a day per location: 280 a
// minute sustained spends them in 12 hours, and then every call fails until GHL's day
// restarts. With pacing on, what X-RateLimit-Daily-Remaining says is left is spread over the
// time to the restart (Config.DailyReset): a request costs the bucket more than one token
// when the bucket's rate would spend the rest of the day's calls early, so the scope's calls
// slow down to what lasts. The app's requests are paced on everything left; background and
// warm requests on what is left above DailyReserve, so they slow down first and stop at the
// reserve.
//
// Pacing is decided from what this replica itself last read in GHL's headers, with the time
// it read it: a count read before the last restart is yesterday's and paces nothing. Every
// replica that calls GHL reads the headers of its own answers, so each paces on a count at
// most one of its own calls old (other replicas' calls since then are not in it).

// A request costs at most the whole burst in force (a learned limit's or a fallback share's
// smaller one included): more would make a single background or warm request a "group
// larger than the burst", which may reserve ahead of the app. Below rate/burst a day (8,064
// with the defaults), GHL's own answers (its 429s, which pause the scope) take over.

// pace is what one token of a request of lane p costs scope s at now: 1 without pacing, or
// when the bucket's rate lasts the day; more when it does not. refused is true for a
// background or warm request when the day's count is at or below the reserve.
func (l *Limiter) pace(s *scope, p Priority, now time.Time) (cost float64, refused bool) {
	if !l.cfg.DailyPacing {
		return 1, false
	}
	s.mu.Lock()
	dr, at, burst := s.paceDr, s.paceAt, s.eff.burst
	s.mu.Unlock()
	next := nextReset(now, l.cfg.DailyReset)
	if dr < 0 || at.IsZero() || at.Before(next.Add(-24*time.Hour)) {
		return 1, false // no count read since GHL's day restarted
	}
	left := dr
	if p != Interactive {
		left -= float64(l.cfg.DailyReserve)
		if left <= 0 {
			return 1, true
		}
	}
	untilReset := float64(next.Sub(now).Microseconds())
	b := l.base(s)
	// The bucket spends one token every T µs: untilReset/T tokens before the restart.
	cost = untilReset / b.T / math.Max(left, 1)
	return math.Min(math.Max(cost, 1), math.Max(1, burst)), false
}

// nextReset is the first restart of GHL's day after now: the time of day reset (UTC).
func nextReset(now time.Time, reset time.Duration) time.Time {
	u := now.UTC()
	t := time.Date(u.Year(), u.Month(), u.Day(), 0, 0, 0, 0, time.UTC).Add(reset)
	for !t.After(u) {
		t = t.Add(24 * time.Hour)
	}
	for t.Sub(u) > 24*time.Hour {
		t = t.Add(-24 * time.Hour)
	}
	return t
}
