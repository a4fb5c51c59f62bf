package ratelimit

import (
	"context"
	"math"
	"net/http"
	"testing"
	"time"
)

// The Lua and the Go arithmetic lease alike: a fresh bucket of 50 leases what the request
// asks beyond its own, but never below half full; a background request never leases.
func TestLeaseSizeGoAndLua(t *testing.T) {
	_, rdb := startRedis(t)
	c := limits{T: float64(time.Minute.Microseconds()) / 280, burst: 50}
	for i, tc := range []struct {
		a    takeArgs
		want float64
	}{
		{takeArgs{n: 1, mode: modeReserve, maxWait: 1e6, lease: 16}, 16},
		{takeArgs{n: 1, mode: modeReserve, maxWait: 1e6, lease: 40}, 24}, // 49 left, 25 kept
		{takeArgs{n: 30, mode: modeReserve, maxWait: 1e6, lease: 16}, 0}, // 20 left: below half
		{takeArgs{n: 1, mode: modeNow, lease: 16}, 0},
		{takeArgs{n: 1, mode: modeReserve, maxWait: 1e6}, 0},
	} {
		key := bucketKey("test", "lease-"+string(rune('a'+i)))
		d, err := redisTake(context.Background(), rdb, key, c, tc.a)
		if err != nil {
			t.Fatal(err)
		}
		g := newBucketState().take(1e15, c, tc.a)
		if d.leased != tc.want || g.leased != tc.want {
			t.Errorf("case %d: Lua leased %v, Go %v, want %v", i, d.leased, g.leased, tc.want)
		}
		if left := c.burst - tc.a.n - tc.want; math.Abs(d.tokens-left) > 0.01 || math.Abs(g.tokens-left) > 0.01 {
			t.Errorf("case %d: tokens left Lua %v, Go %v, want %v: a lease leaves the bucket", i, d.tokens, g.tokens, left)
		}
	}
}

// One replica's sequential requests: after the first few, most are granted from a lease
// without a Redis decision; every grant was taken from the shared bucket (another replica
// sees the tokens gone); and leases stop once the bucket is half empty.
func TestLeaseGrantsLocallyFromTheSharedBucket(t *testing.T) {
	_, rdb := startRedis(t)
	takes := &scriptCounter{hash: takeScript.Hash()}
	rdb.AddHook(takes)
	// One token an hour: the bucket does not refill while the test runs.
	cfg := Config{Rate: 1, Per: time.Hour, Burst: 100, RedisTimeout: time.Second}
	leasing := cfg
	leasing.Lease = time.Hour
	a, _ := newLimiter(t, leasing, rdb)
	b, _ := newLimiter(t, cfg, rdb)
	ctx := context.Background()
	const grants = 40
	for range grants {
		if g := mustWait(t, a, ctx, "loc", 1, Interactive); g.Waited != 0 || g.Fallback {
			t.Fatalf("grant %+v", g)
		}
	}
	decisions := takes.n.Load()
	if decisions > grants/3 {
		t.Errorf("%d grants took %d shared-bucket decisions, want most granted from leases", grants, decisions)
	}
	mustWait(t, b, ctx, "loc", 1, Interactive)
	st, _ := b.Scope("loc")
	// What a took (its grants and the lease it still holds) is gone for b; the lease holds
	// at most leaseMax.
	if st.Tokens > 100-grants-1 || st.Tokens < 100-grants-1-leaseMax {
		t.Errorf("b sees %.1f tokens after a's %d grants and its own, want %d less at most %d", st.Tokens, grants, 100-grants-1, leaseMax)
	}
	// Below half full, every decision is the shared bucket's.
	for range 20 {
		mustWait(t, b, ctx, "loc", 1, Interactive)
	}
	// a may still spend what it leased above half full, but leases no more.
	for range leaseMax {
		mustWait(t, a, ctx, "loc", 1, Interactive)
	}
	before := takes.n.Load()
	for range 5 {
		mustWait(t, a, ctx, "loc", 1, Interactive)
	}
	if n := takes.n.Load() - before; n != 5 {
		t.Errorf("below half full, 5 grants took %d shared-bucket decisions, want 5", n)
	}
}

func TestPauseEndsTheLease(t *testing.T) {
	_, rdb := startRedis(t)
	takes := &scriptCounter{hash: takeScript.Hash()}
	rdb.AddHook(takes)
	a, _ := newLimiter(t, Config{Rate: 1, Per: time.Hour, Burst: 100, Lease: time.Hour, RedisTimeout: time.Second}, rdb)
	ctx := context.Background()
	for range 4 {
		mustWait(t, a, ctx, "loc", 1, Interactive)
	}
	if s := a.scope("loc"); s.lease.tokens < 1 {
		t.Fatalf("no lease after 4 requests: %+v", s.lease)
	}
	a.Observe("loc", http.StatusTooManyRequests, http.Header{})
	before := takes.n.Load()
	sleeps := recordSleeps(a)
	_, _ = a.Wait(ctx, "loc", 1, Interactive)
	if takes.n.Load() == before {
		t.Fatal("a request after a 429 was granted from the lease, not by the paused shared bucket")
	}
	if len(*sleeps) != 1 || (*sleeps)[0] < 5*time.Second {
		t.Errorf("after a 429 the request slept %v, want the pause (10 s)", *sleeps)
	}
}

// What GHL says reaches the lease on this replica at once: a pause learned while a take is
// on its way voids the lease that take brings, a Remaining below the lease cuts it, and
// nothing is spent from a lease while the scope is paused.
func TestGHLReachesTheLease(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	s := newScope("loc", "k", limits{T: 1000, burst: 50})
	gen := s.leaseGen()
	s.learn(observation{pause: true, pauseDefault: 10_000, remaining: -1, dr: -1, dl: -1}, now) // a 429 while the take was out
	s.grantLease(10, now.Add(time.Hour), gen)
	if s.lease.tokens != 0 {
		t.Fatalf("a lease asked for before a 429 was granted: %+v", s.lease)
	}
	s.grantLease(10, now.Add(time.Hour), s.leaseGen())
	if _, ok := s.spendLease(1, now.Add(time.Second)); ok {
		t.Fatal("a lease was spent during the pause")
	}
	after := now.Add(11 * time.Second)
	if _, ok := s.spendLease(1, after); !ok {
		t.Fatal("the lease granted after the pause was announced is not spendable once it ends")
	}
	s.learn(observation{remaining: 2, dr: -1, dl: -1}, after)
	if s.lease.tokens != 2 {
		t.Fatalf("GHL said 2 remain; the lease holds %v", s.lease.tokens)
	}
	gen = s.leaseGen()
	s.learn(observation{remaining: 1, dr: -1, dl: -1}, after)
	if s.grantLease(5, after.Add(time.Hour), gen); s.lease.tokens != 1 {
		t.Fatalf("a lease asked for before GHL said 1 remains was granted: %v", s.lease.tokens)
	}
}
