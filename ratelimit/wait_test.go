package ratelimit

import (
	"context"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"
)

// backends runs a test on the embedded bucket (fake clock) and on the shared bucket in a
// real Redis (Redis's clock, so waits are compared with a tolerance).
func backends(t *testing.T, cfg Config, f func(t *testing.T, l *Limiter, sleeps *[]time.Duration, tol time.Duration)) {
	t.Run("embedded", func(t *testing.T) {
		l, _, _ := embedded(t, cfg)
		f(t, l, recordSleeps(l), 0)
	})
	t.Run("redis", func(t *testing.T) {
		// A loaded test machine can stall a call past the 50ms default; these tests are
		// about the shared bucket, not the fallback, so give Redis time.
		cfg.RedisTimeout = time.Second
		_, rdb := startRedis(t)
		l, _ := newLimiter(t, cfg, rdb)
		f(t, l, recordSleeps(l), 40*time.Millisecond)
	})
}

func TestWaitGrantsBurstThenReservesThenRejects(t *testing.T) {
	cfg := Config{Rate: 10, Per: time.Second, Burst: 5, MaxWait: time.Second}
	backends(t, cfg, func(t *testing.T, l *Limiter, sleeps *[]time.Duration, tol time.Duration) {
		ctx := context.Background()
		for i := range 5 {
			g := mustWait(t, l, ctx, "s1", 1, Interactive)
			if g.Remaining != 4-i || g.Fallback {
				t.Fatalf("grant %d: %+v, want Remaining %d", i, g, 4-i)
			}
		}
		if len(*sleeps) != 0 {
			t.Fatalf("burst grants slept: %v", *sleeps)
		}
		// 3 tokens at once (a write group): 3 emission intervals after the burst.
		mustWait(t, l, ctx, "s1", 3, Interactive)
		mustWait(t, l, ctx, "s1", 1, Interactive)
		if len(*sleeps) != 2 || !near((*sleeps)[0], 300*time.Millisecond, tol) || !near((*sleeps)[1], 400*time.Millisecond, tol) {
			t.Fatalf("reservations slept %v, want [300ms 400ms]", *sleeps)
		}
		// 7 more would be valid 1.1 s from now: past MaxWait, refused at once, nothing taken.
		_, err := l.Wait(ctx, "s1", 7, Interactive)
		rej := asRejected(t, err)
		if !near(rej.RetryAfter, 1100*time.Millisecond, tol) || len(*sleeps) != 2 {
			t.Fatalf("rejection %+v after sleeps %v, want RetryAfter 1.1s and no sleep", rej, *sleeps)
		}
		if rej.Interval != 10*time.Second || rej.Limit != 5+100 || rej.Remaining != 0 {
			t.Fatalf("rejection headers %+v, want Limit 105 per 10s, Remaining 0", rej)
		}
		mustWait(t, l, ctx, "s1", 1, Interactive)
		if got := (*sleeps)[2]; !near(got, 500*time.Millisecond, tol) {
			t.Fatalf("after a rejection the next reservation slept %s, want 500ms (the rejection took nothing)", got)
		}
		// Other scopes are untouched.
		mustWait(t, l, ctx, "s2", 5, Interactive)
		if len(*sleeps) != 3 {
			t.Fatalf("a fresh scope slept: %v", *sleeps)
		}
	})
}

func TestWaitHonoursContext(t *testing.T) {
	l, clock, _ := embedded(t, Config{Rate: 10, Per: time.Second, Burst: 1, MaxWait: 10 * time.Second})
	mustWait(t, l, context.Background(), "s", 1, Interactive)
	// A deadline shorter than the wait: refused up front instead of sleeping into it.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := l.Wait(ctx, "s", 1, Interactive)
	asRejected(t, err)
	// Cancelled while waiting: ctx.Err().
	ctx2, cancel2 := context.WithCancel(context.Background())
	errc := make(chan error)
	go func() { _, err := l.Wait(ctx2, "s", 1, Interactive); errc <- err }()
	clock.awaitSleepers(t, 1)
	cancel2()
	if err := <-errc; err != context.Canceled {
		t.Fatalf("cancelled wait returned %v", err)
	}
}

// Waiters are served in the order they asked, each after exactly one decision.
func TestWaitFIFO(t *testing.T) {
	l, clock, m := embedded(t, Config{Rate: 10, Per: time.Second, Burst: 1, MaxWait: 5 * time.Second})
	mustWait(t, l, context.Background(), "s", 1, Interactive)
	const n = 8
	order := make(chan int, n)
	for i := range n {
		go func() {
			if _, err := l.Wait(context.Background(), "s", 1, Interactive); err == nil {
				order <- i
			}
		}()
		ds := clock.awaitSleepers(t, i+1)
		if want := time.Duration(i+1) * 100 * time.Millisecond; ds[i] != want {
			t.Fatalf("waiter %d sleeps %s, want %s", i, ds[i], want)
		}
	}
	if d := gaugeValue(t, m.QueueDepth.WithLabelValues("ratelimit")); d != n {
		t.Fatalf("queue depth %v, want %d", d, n)
	}
	for i := range n {
		clock.Advance(100 * time.Millisecond)
		if got := <-order; got != i {
			t.Fatalf("served %d as number %d", got, i)
		}
	}
	if st := l.Stats(); len(st) != 1 || st[0].Queue != 0 {
		t.Fatalf("stats after the queue drained: %+v", st)
	}
}

// A background request that was waiting first still goes after an interactive one that
// arrives later, and warming goes after both.
func TestWaitPriorities(t *testing.T) {
	l, clock, _ := embedded(t, Config{Rate: 10, Per: time.Second, Burst: 2, MaxWait: 5 * time.Second, WarmReserve: 1})
	ctx := context.Background()
	mustWait(t, l, ctx, "s", 2, Interactive) // bucket empty
	done := make(chan Priority, 3)
	run := func(p Priority) {
		go func() {
			if _, err := l.Wait(ctx, "s", 1, p); err != nil {
				t.Errorf("%s: %v", p, err)
			}
			done <- p
		}()
	}
	run(Warm)
	clock.awaitSleepers(t, 1) // warm asked, was told 200ms (one token + the reserve)
	run(Background)
	clock.awaitSleepers(t, 2) // background overtook warm in the local queue, told 100ms
	run(Interactive)
	ds := clock.awaitSleepers(t, 3) // interactive reserved the token background was waiting for
	if ds[0] != 100*time.Millisecond || ds[1] != 100*time.Millisecond || ds[2] != 200*time.Millisecond {
		t.Fatalf("sleeps %v, want [100ms 100ms 200ms]", ds)
	}
	clock.Advance(100 * time.Millisecond)
	if p := <-done; p != Interactive {
		t.Fatalf("first served: %s", p)
	}
	clock.awaitSleepers(t, 2) // background asked again, told another 100ms; warm still asleep
	clock.Advance(100 * time.Millisecond)
	if p := <-done; p != Background {
		t.Fatalf("second served: %s", p)
	}
	// Warm woke too, asked, and must wait until a token plus the reserve is free.
	clock.awaitSleepers(t, 1)
	clock.Advance(200 * time.Millisecond)
	if p := <-done; p != Warm {
		t.Fatalf("third served: %s", p)
	}
}

func TestWarmReserve(t *testing.T) {
	backends(t, Config{Rate: 10, Per: time.Second, Burst: 5, WarmReserve: 2, MaxWait: 50 * time.Millisecond},
		func(t *testing.T, l *Limiter, sleeps *[]time.Duration, tol time.Duration) {
			ctx := context.Background()
			for range 3 {
				mustWait(t, l, ctx, "s", 1, Warm)
			}
			_, err := l.Wait(ctx, "s", 1, Warm)
			if rej := asRejected(t, err); !near(rej.RetryAfter, 100*time.Millisecond, tol) {
				t.Fatalf("warm RetryAfter %s, want 100ms", rej.RetryAfter)
			}
			// The reserve is there for interactive requests.
			for range 2 {
				mustWait(t, l, ctx, "s", 1, Interactive)
			}
			if len(*sleeps) != 0 {
				t.Fatalf("slept %v", *sleeps)
			}
		})
}

// NoReserve lets warming take the whole bucket (a Config's 0 would take the default).
func TestNoWarmReserve(t *testing.T) {
	backends(t, Config{Rate: 10, Per: time.Second, Burst: 5, WarmReserve: NoReserve, MaxWait: 50 * time.Millisecond},
		func(t *testing.T, l *Limiter, sleeps *[]time.Duration, tol time.Duration) {
			if l.cfg.WarmReserve != 0 {
				t.Fatalf("WarmReserve %d after defaults, want 0", l.cfg.WarmReserve)
			}
			ctx := context.Background()
			for range 5 {
				mustWait(t, l, ctx, "s", 1, Warm)
			}
			if len(*sleeps) != 0 {
				t.Fatalf("slept %v", *sleeps)
			}
		})
}

func TestNoDailyReserve(t *testing.T) {
	backends(t, Config{DailyReserve: NoReserve}, func(t *testing.T, l *Limiter, _ *[]time.Duration, _ time.Duration) {
		if l.cfg.DailyReserve != 0 {
			t.Fatalf("DailyReserve %d after defaults, want 0", l.cfg.DailyReserve)
		}
		ctx := context.Background()
		mustWait(t, l, ctx, "s", 1, Warm)
		tellDaily(l, "s", 1)
		mustWait(t, l, ctx, "s", 1, Warm)
	})
}

// tellDaily has GHL's answer say that scope has remaining of its daily 200,000 left.
func tellDaily(l *Limiter, scope string, remaining int) {
	h := http.Header{}
	h.Set("X-RateLimit-Limit-Daily", "200000")
	h.Set("X-RateLimit-Daily-Remaining", strconv.Itoa(remaining))
	l.Observe(scope, 200, h)
}

func TestDailyReserve(t *testing.T) {
	backends(t, Config{DailyReserve: 100}, func(t *testing.T, l *Limiter, _ *[]time.Duration, _ time.Duration) {
		ctx := context.Background()
		mustWait(t, l, ctx, "s", 1, Warm)
		tellDaily(l, "s", 99)
		_, err := l.Wait(ctx, "s", 1, Warm)
		asRejected(t, err)
		mustWait(t, l, ctx, "s", 1, Interactive)
		st := l.Stats()
		if len(st) != 1 || st[0].DailyRemaining != 99 || st[0].DailyLimit != 200000 {
			t.Fatalf("stats %+v", st)
		}
	})
}

type laneTag struct{}

// A background request behind a steady stream of interactive reservations (one per
// emission interval, each taking the next slot) is never free to take a token "now": it
// yields to every one of them — none waits more than two intervals — and is refused at its
// wait bound instead of being served ahead of the app.
func TestWaitBackgroundYieldsToTheApp(t *testing.T) {
	const interval = 100 * time.Millisecond
	const maxWait = 2 * time.Second
	l, clock, m := embedded(t, Config{Rate: 10, Per: time.Second, Burst: 1, MaxWait: maxWait})
	type sleep struct {
		background bool
		d          time.Duration
	}
	sleeps := make(chan sleep, 16)
	l.sleep = func(ctx context.Context, d time.Duration) error {
		sleeps <- sleep{ctx.Value(laneTag{}) != nil, d}
		return clock.Sleep(ctx, d)
	}
	begun := 0
	// next returns the next sleep once it is registered with the clock: the test drives one
	// waiter at a time, so sleeps and registrations come in the same order.
	next := func() sleep {
		t.Helper()
		select {
		case s := <-sleeps:
			begun++
			clock.awaitSleeps(t, begun)
			return s
		case <-time.After(5 * time.Second):
			t.Fatal("no sleep began")
			return sleep{}
		}
	}

	mustWait(t, l, context.Background(), "s", 1, Interactive) // bucket empty
	done := make(chan error, 1)
	go func() {
		_, err := l.Wait(context.WithValue(context.Background(), laneTag{}, true), "s", 1, Background)
		done <- err
	}()
	if s := next(); !s.background {
		t.Fatalf("first sleep %+v, want the background request's", s)
	}
	if d := gaugeValue(t, m.RateLimitQueue.WithLabelValues("background")); d != 1 {
		t.Fatalf("background lane depth %v, want 1", d)
	}
	var interactive sync.WaitGroup
	defer func() {
		// Let the last reservations run out so no waiter outlives the test.
		for range 4 {
			clock.Advance(interval)
		}
		interactive.Wait()
	}()
	for step := 0; step < int(maxWait/interval)+10; step++ {
		interactive.Add(1)
		go func() {
			defer interactive.Done()
			if _, err := l.Wait(context.Background(), "s", 1, Interactive); err != nil {
				t.Errorf("interactive: %v", err)
			}
		}()
		if s := next(); s.background || s.d > 2*interval {
			t.Fatalf("step %d: interactive sleep %+v, want a reservation within two intervals", step, s)
		}
		clock.Advance(interval)
		// The background request wakes every interval: it sleeps again, or is refused.
		select {
		case err := <-done:
			rej := asRejected(t, err)
			if el := time.Duration(step+1) * interval; el < maxWait-2*interval {
				t.Fatalf("background request refused after %s (%v), before its wait bound %s", el, rej, maxWait)
			}
			return
		case s := <-sleeps:
			begun++
			clock.awaitSleeps(t, begun)
			if !s.background {
				t.Fatalf("step %d: unexpected interactive sleep %+v", step, s)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("step %d: the background request neither slept again nor returned", step)
		}
	}
	t.Fatal("background request never refused: it must not be served ahead of the app")
}

// TestChargeTakesWithoutWaiting: Charge takes tokens at once, into debt if it must, and
// the requests after it wait for them — on the embedded and the shared bucket alike.
func TestChargeTakesWithoutWaiting(t *testing.T) {
	cfg := Config{Rate: 10, Per: time.Second, Burst: 5, MaxWait: time.Second}
	backends(t, cfg, func(t *testing.T, l *Limiter, sleeps *[]time.Duration, tol time.Duration) {
		ctx := context.Background()
		l.Charge("s1", 3)
		if len(*sleeps) != 0 {
			t.Fatalf("Charge slept: %v", *sleeps)
		}
		if g := mustWait(t, l, ctx, "s1", 2, Interactive); g.Remaining != 0 || len(*sleeps) != 0 {
			t.Fatalf("after charging 3 of 5: %+v, sleeps %v; want the last 2 at once", g, *sleeps)
		}
		l.Charge("s1", 4) // into debt: 4 intervals
		mustWait(t, l, ctx, "s1", 1, Interactive)
		if len(*sleeps) != 1 || !near((*sleeps)[0], 500*time.Millisecond, tol) {
			t.Fatalf("the request after a debt of 4 slept %v, want 500ms", *sleeps)
		}
	})
}
