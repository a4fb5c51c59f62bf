package ratelimit

import (
	"context"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

// A budget no benchmark can exhaust: every Wait is one decision and no sleep.
var benchCfg = Config{Rate: 1_000_000_000, Per: time.Second, Burst: 1_000_000_000, RedisTimeout: time.Second}

// BenchmarkWaitLocal is one in-process decision (the embedded bucket); the peer is
// golang.org/x/time/rate's ReserveN, the usual in-process limiter.
func BenchmarkWaitLocal(b *testing.B) {
	b.Run("ratelimit", func(b *testing.B) {
		l, _ := newLimiter(b, benchCfg, nil)
		ctx := context.Background()
		b.ReportAllocs()
		for b.Loop() {
			if _, err := l.Wait(ctx, "scope", 1, Interactive); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("peer=x-time-rate", func(b *testing.B) {
		lim := rate.NewLimiter(rate.Limit(benchCfg.Rate), benchCfg.Burst)
		b.ReportAllocs()
		for b.Loop() {
			if r := lim.ReserveN(time.Now(), 1); !r.OK() || r.Delay() > 0 {
				b.Fatal("limited")
			}
		}
	})
}

// BenchmarkWaitRedis is one decision on the shared bucket (one EVALSHA on loopback); the
// peer is one GET through the same client.
func BenchmarkWaitRedis(b *testing.B) {
	_, rdb := startRedis(b)
	b.Run("ratelimit", func(b *testing.B) {
		l, _ := newLimiter(b, benchCfg, rdb)
		ctx := context.Background()
		b.ReportAllocs()
		for b.Loop() {
			g, err := l.Wait(ctx, "scope", 1, Interactive)
			if err != nil || g.Fallback {
				b.Fatalf("%+v %v", g, err)
			}
		}
	})
	b.Run("peer=GET", func(b *testing.B) {
		ctx := context.Background()
		rdb.Set(ctx, "k", "v", 0)
		b.ReportAllocs()
		for b.Loop() {
			if err := rdb.Get(ctx, "k").Err(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
