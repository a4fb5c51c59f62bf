package warm

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ghlproxy/ghlproxy/internal/redistest"
)

// TestRedisLease: the scheduled lease stays with its holder while it renews, passes on when
// it lapses; the manual lease is released only by its holder.
func TestRedisLease(t *testing.T) {
	rds := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: rds.Addr()})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	a := &redisLease{rdb: rdb, prefix: "ghlproxy", id: "a"}
	b := &redisLease{rdb: rdb, prefix: "ghlproxy", id: "b"}
	take := func(l *redisLease, want bool) {
		t.Helper()
		got, err := l.acquire(ctx, "leads", time.Minute)
		if err != nil || got != want {
			t.Fatalf("replica %s acquire = %v, %v; want %v", l.id, got, err, want)
		}
	}
	take(a, true)
	take(b, false)
	take(a, true) // renewal by the holder
	take(b, false)
	if _, err := rds.Do("DEL", "ghlproxy:{warm:leads}:lease"); err != nil { // the holder went away and its lease expired
		t.Fatal(err)
	}
	take(b, true)
	take(a, false)
	a.release(ctx, "leads") // not a's: b keeps it
	take(a, false)
	b.release(ctx, "leads") // b shuts down: a takes over at once
	take(a, true)

	releaseA, ok, err := a.acquireManual(ctx, "leads", time.Minute)
	if err != nil || !ok {
		t.Fatalf("manual lease: %v %v", ok, err)
	}
	if _, ok, _ := b.acquireManual(ctx, "leads", time.Minute); ok {
		t.Fatal("two replicas hold the manual lease")
	}
	releaseA()
	releaseB, ok, err := b.acquireManual(ctx, "leads", time.Minute)
	if err != nil || !ok {
		t.Fatalf("manual lease after release: %v %v", ok, err)
	}
	releaseA() // no longer a's: must not free b's lease
	if _, ok, _ := a.acquireManual(ctx, "leads", time.Minute); ok {
		t.Fatal("a released b's lease")
	}
	releaseB()
}
