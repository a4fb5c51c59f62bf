package sidecar

import (
	"context"
	"fmt"
	"time"

	"github.com/ghlproxy/ghlproxy/batcher"
	"github.com/ghlproxy/ghlproxy/cache"
	"github.com/ghlproxy/ghlproxy/config"
	"github.com/ghlproxy/ghlproxy/dedupe"
	"github.com/ghlproxy/ghlproxy/internal/ops"
	"github.com/ghlproxy/ghlproxy/proxy"
	"github.com/ghlproxy/ghlproxy/ratelimit"
)

// addStages builds the pipeline stages and hooks them into the proxy and the admin
// endpoints. They share one store: Redis when configured, else each stage's in-process
// implementation.
func (s *Sidecar) addStages(pc *proxy.Config, admin *proxy.Admin) error {
	cfg := s.cfg
	dailyReset, err := config.ClockTime(cfg.RateLimit.DailyReset)
	if err != nil {
		return fmt.Errorf("ratelimit.daily_reset: %w", err)
	}
	lim, err := ratelimit.New(ratelimit.Config{
		Rate:          cfg.RateLimit.Rate,
		Per:           cfg.RateLimit.Per,
		Burst:         cfg.RateLimit.Burst,
		MaxWait:       cfg.RateLimit.MaxWait,
		WarmReserve:   reserve(cfg.RateLimit.WarmReserve),
		DailyReserve:  reserve(cfg.RateLimit.DailyReserve),
		FollowGHL:     cfg.RateLimit.FollowGHL,
		FollowReserve: cfg.RateLimit.FollowReserve,
		Lease:         cfg.RateLimit.Lease,
		DailyPacing:   cfg.RateLimit.DailyPacing,
		DailyReset:    dailyReset,
		RedisTimeout:  cfg.Redis.Timeout,
	}, s.rdb, s.Metrics, s.log)
	if err != nil {
		return err
	}
	s.closers = append(s.closers, func(context.Context) error { return lim.Close() })
	pc.Limiter = lim
	admin.Limiter = lim
	s.stageChecks = append(s.stageChecks, ops.Check{Name: "ratelimit", Status: func() (string, bool) {
		if lim.Degraded() {
			return "degraded: deciding on local buckets holding this replica's share of the budget", false
		}
		return "ok", false
	}})

	fold, err := dedupe.New(foldConfig(cfg), s.rdb, s.Metrics, s.log)
	if err != nil {
		return err
	}
	s.closers = append(s.closers, fold.Shutdown)
	pc.Fold = fold

	c, err := cache.New(cache.Config{MemoryBytes: int64(cfg.Cache.MemoryBytes)}, s.rdb, s.Metrics, s.log)
	if err != nil {
		return err
	}
	s.closers = append(s.closers, func(context.Context) error { return c.Close() })
	pc.Cache = c
	s.stageChecks = append(s.stageChecks, ops.Check{Name: "cache", Status: func() (string, bool) {
		if !c.Stats().Coherent {
			return "degraded: invalidations from other replicas are not confirmed; serving from Redis only, not from memory", false
		}
		return "ok", false
	}})
	admin.Cache = c

	b := batcher.New(batcher.Config{
		Min:      cfg.Batch.Min,
		Max:      cfg.Batch.Max,
		Linger:   cfg.Batch.Linger,
		Merge:    cfg.Batch.Merge,
		Bulk:     cfg.Batch.Bulk,
		Coalesce: cfg.Batch.Coalesce,
		// The limiter's bound covers the batcher's queue too (README, "The shared token
		// bucket": a write waits up to ratelimit.max_wait in all, then gets the sidecar's 429).
		MaxWait: cfg.RateLimit.MaxWait,
	}, lim, s.Metrics, s.log)
	// Closed first (closers run in reverse): it answers every write it holds while the
	// limiter and the fold are still there.
	s.closers = append(s.closers, b.Close)
	s.drainers = append(s.drainers, b.Close)
	pc.Batcher = b
	return nil
}

// reserve is a reserve key's value for ratelimit.Config: the keys' defaults are filled in
// by config already, so a 0 there was written by the user and means none, where
// ratelimit.Config's 0 takes its default.
func reserve(n int) int {
	if n == 0 {
		return ratelimit.NoReserve
	}
	return n
}

// foldConfig bounds a folded call by what its stages may take, not by a fixed time: the
// bound is a safety net, each stage bounds itself. A call may queue for a token
// (ratelimit.max_wait, which covers batch.linger and batch.coalesce too), go upstream
// (transport.timeout), and — a read that GHL answered 429 anyway — do both once more.
// Waiters on other replicas give up a little after that.
func foldConfig(cfg *config.Config) dedupe.Config {
	call := 2 * (cfg.RateLimit.MaxWait + cfg.Transport.Timeout)
	return dedupe.Config{Window: cfg.Dedupe.Window, CallTimeout: call, WaitBound: call + 5*time.Second}
}

func (s *Sidecar) grace() time.Duration {
	if s.cfg.Shutdown.Grace > 0 {
		return s.cfg.Shutdown.Grace
	}
	return 25 * time.Second
}
