package ratelimit

import (
	"context"
	"net/http"
	"strconv"
	"testing"
	"time"
)

func ghlHeaders(max, intervalMs, remaining int) http.Header {
	h := http.Header{}
	if max > 0 {
		h.Set("X-RateLimit-Max", strconv.Itoa(max))
		h.Set("X-RateLimit-Interval-Milliseconds", strconv.Itoa(intervalMs))
	}
	if remaining >= 0 {
		h.Set("X-RateLimit-Remaining", strconv.Itoa(remaining))
	}
	return h
}

// GHL's headers say 20 per 10 s (a per-app override) while the sidecar is configured for the
// default: the bucket shrinks so that burst + rate*10s stays within 97% of 20.
func TestObserveLearnsLowerLimit(t *testing.T) {
	backends(t, Config{}, func(t *testing.T, l *Limiter, sleeps *[]time.Duration, tol time.Duration) {
		l.Observe("s", 200, ghlHeaders(20, 10000, -1))
		ctx := context.Background()
		for range 10 {
			mustWait(t, l, ctx, "s", 1, Interactive)
		}
		mustWait(t, l, ctx, "s", 1, Interactive)
		// Configured 50 + 46.7 per 10 s scaled by 19.4/96.7: burst 10, one token per 1.068 s.
		if len(*sleeps) != 1 || !near((*sleeps)[0], 1068*time.Millisecond, tol+time.Millisecond) {
			t.Fatalf("sleeps %v, want one of 1.068s", *sleeps)
		}
		st, ok := l.Scope("s")
		if !ok || st.Burst != 10 || st.LimitMax != 20 || st.LimitInterval != 10*time.Second {
			t.Fatalf("stats %+v", st)
		}
		if perWindow := float64(st.Burst) + st.Rate*10; perWindow > 20*learnMargin {
			t.Fatalf("learned bucket allows %.2f per 10 s, over 97%% of 20", perWindow)
		}
		// A higher limit than configured changes nothing.
		l.Observe("t", 200, ghlHeaders(1000, 10000, -1))
		if st, _ := l.Scope("t"); st.Burst != 50 {
			t.Fatalf("a higher upstream limit changed the burst: %+v", st)
		}
	})
}

// Other clients spending the same quota: the bucket never holds more than GHL says remain.
func TestObserveClampsToRemaining(t *testing.T) {
	backends(t, Config{Rate: 10, Per: time.Second, Burst: 5}, func(t *testing.T, l *Limiter, sleeps *[]time.Duration, tol time.Duration) {
		l.Observe("s", 200, ghlHeaders(1000, 10000, 2))
		ctx := context.Background()
		mustWait(t, l, ctx, "s", 1, Interactive)
		mustWait(t, l, ctx, "s", 1, Interactive)
		if len(*sleeps) != 0 {
			t.Fatalf("slept %v", *sleeps)
		}
		mustWait(t, l, ctx, "s", 1, Interactive)
		if len(*sleeps) != 1 || !near((*sleeps)[0], 100*time.Millisecond, tol) {
			t.Fatalf("sleeps %v, want [100ms]", *sleeps)
		}
	})
}

// A 429 (or Remaining 0) pauses the scope for GHL's interval: new requests are given slots
// after it, or refused at once when that is past MaxWait.
func TestObservePausesOn429(t *testing.T) {
	backends(t, Config{Rate: 10, Per: time.Second, Burst: 5, MaxWait: 3 * time.Second}, func(t *testing.T, l *Limiter, sleeps *[]time.Duration, tol time.Duration) {
		ctx := context.Background()
		l.Observe("s", http.StatusTooManyRequests, ghlHeaders(100, 2000, -1))
		mustWait(t, l, ctx, "s", 1, Interactive)
		mustWait(t, l, ctx, "s", 1, Interactive)
		if len(*sleeps) != 2 || !near((*sleeps)[0], 2*time.Second, tol) || !near((*sleeps)[1], 2100*time.Millisecond, tol) {
			t.Fatalf("sleeps %v, want [2s 2.1s]", *sleeps)
		}
		if st, _ := l.Scope("s"); st.PausedUntil.IsZero() {
			t.Fatalf("stats show no pause: %+v", st)
		}
		// Remaining 0 without an interval: GHL's default window, 10 s, past MaxWait.
		l.Observe("r", 200, ghlHeaders(0, 0, 0))
		_, err := l.Wait(ctx, "r", 1, Interactive)
		if rej := asRejected(t, err); !near(rej.RetryAfter, 10*time.Second, tol) {
			t.Fatalf("RetryAfter %s, want 10s", rej.RetryAfter)
		}
	})
}

// A request that reserved its slot before a pause began gives it back and asks again: its
// new slot is after the pause.
func TestPauseVoidsEarlierReservation(t *testing.T) {
	l, clock, _ := embedded(t, Config{Rate: 10, Per: time.Second, Burst: 1, MaxWait: 5 * time.Second})
	ctx := context.Background()
	mustWait(t, l, ctx, "s", 1, Interactive)
	done := make(chan Grant)
	go func() { done <- mustWait(t, l, ctx, "s", 1, Interactive) }()
	clock.awaitSleepers(t, 1) // reserved 100ms
	l.Observe("s", http.StatusTooManyRequests, ghlHeaders(100, 1000, -1))
	for {
		ds := clock.awaitSleepers(t, 1)
		if len(ds) == 1 && ds[0] == time.Second {
			break // the old sleep was cancelled, the new one ends with the pause
		}
		<-clock.changed()
	}
	clock.Advance(time.Second)
	if g := <-done; g.Waited != time.Second {
		t.Fatalf("waited %s, want 1s", g.Waited)
	}
	// The voided slot was given back: the next request gets the one right after.
	go func() { done <- mustWait(t, l, ctx, "s", 1, Interactive) }()
	if ds := clock.awaitSleepers(t, 1); ds[0] != 100*time.Millisecond {
		t.Fatalf("next slot in %v, want 100ms", ds)
	}
	clock.Advance(100 * time.Millisecond)
	<-done
}
