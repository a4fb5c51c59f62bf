package ratelimit

import (
	"context"
	"net/http"
	"strconv"
)

// Learning from GHL's answers: the X-RateLimit-* headers of every upstream response.

// Observe folds one upstream response of scope into the bucket: GHL's X-RateLimit-* headers
// teach the real limit (which can be lower than configured) and how much of the window other
// clients left; a 429 or Remaining 0 pauses the scope for every replica until GHL's window
// allows (X-RateLimit-Interval-Milliseconds, else 10 s). On Redis, a response that tells the
// shared bucket nothing new (scope.news) costs no round trip.
func (l *Limiter) Observe(scopeKey string, status int, h http.Header) {
	o := observation{
		lmax: headerNum(h, "X-RateLimit-Max", 0), lint: headerNum(h, "X-RateLimit-Interval-Milliseconds", 0),
		remaining: headerNum(h, "X-RateLimit-Remaining", -1),
		dr:        headerNum(h, "X-RateLimit-Daily-Remaining", -1), dl: headerNum(h, "X-RateLimit-Limit-Daily", -1),
		pauseDefault: float64(GHLWindow.Milliseconds()),
	}
	o.pause = status == http.StatusTooManyRequests || o.remaining == 0
	if !o.pause && o.lmax <= 0 && o.remaining < 0 && o.dr < 0 && o.dl < 0 {
		return // nothing to learn (no rate-limit headers)
	}
	s := l.scope(scopeKey)
	now := l.cfg.Now()
	s.learn(o, now)
	if l.rdb != nil && !l.br.isOpen() {
		if !s.news(o, now) {
			return
		}
		s.redisMu.Lock()
		d, err := l.redisCall(context.Background(), func(ctx context.Context) (decision, error) {
			return redisObserve(ctx, l.rdb, s.key, l.base(s), o)
		})
		if err == nil {
			s.update(d, l.cfg.Now(), false)
			s.remember(o, now)
		}
		s.redisMu.Unlock()
		if err == nil {
			return
		}
		l.redisFailed(err)
	}
	c, fb := l.base(s), false
	if l.rdb != nil {
		c, fb = l.shareOf(c), true
	}
	now = l.cfg.Now()
	d := l.mem.observe(s, c, o, micro(now))
	s.update(d, now, fb)
}

func headerNum(h http.Header, name string, missing float64) float64 {
	v := h.Get(name)
	if v == "" {
		return missing
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f < 0 {
		return missing
	}
	return f
}
