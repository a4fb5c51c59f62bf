package ratelimit

import (
	"context"
	"math"
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
// default: the margin comes out of the burst (5), the rate is the rest of 97% of 20 per 10 s
// (14.4, one token per 694 ms), so burst + rate*10s stays within 97% of 20.
func TestObserveLearnsLowerLimit(t *testing.T) {
	backends(t, Config{}, func(t *testing.T, l *Limiter, sleeps *[]time.Duration, tol time.Duration) {
		l.Observe("s", 200, ghlHeaders(20, 10000, -1))
		ctx := context.Background()
		for range 5 {
			mustWait(t, l, ctx, "s", 1, Interactive)
		}
		mustWait(t, l, ctx, "s", 1, Interactive)
		if len(*sleeps) != 1 || !near((*sleeps)[0], 694444*time.Microsecond, tol+time.Millisecond) {
			t.Fatalf("sleeps %v, want one of 694ms", *sleeps)
		}
		st, ok := l.Scope("s")
		if !ok || st.Burst != 5 || st.LimitMax != 20 || st.LimitInterval != 10*time.Second {
			t.Fatalf("stats %+v", st)
		}
		if perWindow := float64(st.Burst) + st.Rate*10; perWindow > 20*learnMargin+1e-3 {
			t.Fatalf("learned bucket allows %.2f per 10 s, over 97%% of 20", perWindow)
		}
		// A higher limit than configured changes nothing.
		l.Observe("t", 200, ghlHeaders(1000, 10000, -1))
		if st, _ := l.Scope("t"); st.Burst != 50 {
			t.Fatalf("a higher upstream limit changed the burst: %+v", st)
		}
	})
}

// A learned limit is spent at ~97% per interval (the finding: rate and burst scaled by the
// same factor left 19 calls per window of a learned 40), never over it, never over the
// configured rate or burst.
func TestEffectiveLearnedLimit(t *testing.T) {
	perMin := func(rate float64) float64 { return 60e6 / rate } // µs per token
	tests := []struct {
		name       string
		cfg        limits
		lmax, lint float64
		wantBurst  float64
		wantPerIv  float64 // tokens per learned interval from the rate
	}{
		// e2e shape: 280 per 12 s, burst 50, GHL 40 per 2 s.
		{"e2e 40 per 2s", limits{T: 12e6 / 280, burst: 50}, 40, 2000, 5, 33.8},
		{"20 per 10s", limits{T: perMin(280), burst: 50}, 20, 10000, 5, 14.4},
		{"200 per 10s", limits{T: perMin(1200), burst: 100}, 200, 10000, 20, 174},
		// The configured rate (46.7 per 10 s) is lower than 77.6-8: it stays, the burst
		// takes the rest.
		{"configured rate binds", limits{T: perMin(280), burst: 50}, 80, 10000, 30, 280.0 / 6},
		// A configured burst under the minimum is kept.
		{"small configured burst", limits{T: perMin(6000), burst: 2}, 40, 10000, 2, 36.8},
		{"tiny limit", limits{T: perMin(280), burst: 50}, 3, 10000, 1, 1.91},
		{"no limit learned", limits{T: perMin(280), burst: 50}, 0, 0, 50, 0},
		{"higher than configured", limits{T: perMin(280), burst: 50}, 1000, 10000, 50, 280.0 / 6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := tt.cfg.effective(tt.lmax, tt.lint)
			if e.burst != tt.wantBurst {
				t.Errorf("burst %v, want %v", e.burst, tt.wantBurst)
			}
			if e.T < tt.cfg.T || e.burst > tt.cfg.burst {
				t.Errorf("%+v exceeds the configured %+v", e, tt.cfg)
			}
			if tt.lmax == 0 {
				return
			}
			perIv := tt.lint * 1000 / e.T
			if math.Abs(perIv-tt.wantPerIv) > 0.01 {
				t.Errorf("rate %.2f per interval, want %.2f", perIv, tt.wantPerIv)
			}
			if e.burst+perIv > tt.lmax*learnMargin+1e-9 && tt.lmax >= 4 {
				t.Errorf("burst + rate*interval = %.2f, over 97%% of %v", e.burst+perIv, tt.lmax)
			}
		})
	}
}

// A write group of 5 on a fallback share of a learned bucket (burst 5 / 3 replicas = 1):
// once the bucket is full it reserves its slot like an interactive request, instead of
// waiting forever for 5 tokens a bucket of 1 never holds.
func TestGroupLargerThanBurst(t *testing.T) {
	c := limits{T: 100, burst: 5, share: 3} // on the share: 300 µs per token, burst 1
	b := newBucketState()
	if d := b.take(1000, c, takeArgs{n: 5, mode: modeNow}); !d.granted || d.wait != 4*300 {
		t.Fatalf("group of 5 on a burst of 1: %+v, want granted in 1.2 ms", d)
	}
	if d := b.take(1000, c, takeArgs{n: 1, mode: modeNow}); d.granted || d.wait != 5*300 {
		t.Fatalf("next request: %+v, want refused for 1.5 ms (the group's 5 tokens)", d)
	}
	if d := b.take(1000+5*300, c, takeArgs{n: 5, mode: modeNow}); !d.granted || d.wait != 4*300 {
		t.Fatalf("next group once the bucket is full: %+v", d)
	}
}

// The same on both buckets, through Wait: a batch group of 4 on a burst of 2 is granted
// after the 2 tokens it lacks (200 ms), not refused.
func TestWaitGroupLargerThanBurst(t *testing.T) {
	backends(t, Config{Rate: 10, Per: time.Second, Burst: 2, MaxWait: time.Second},
		func(t *testing.T, l *Limiter, sleeps *[]time.Duration, tol time.Duration) {
			mustWait(t, l, context.Background(), "s", 4, Background)
			if len(*sleeps) != 1 || !near((*sleeps)[0], 200*time.Millisecond, tol) {
				t.Fatalf("sleeps %v, want [200ms]", *sleeps)
			}
		})
}

// Waiters whose slots a pause voided take new slots from the bucket one emission interval
// apart after it, not all at its end (the finding: 26 calls in 250 ms when a pause ended,
// then Remaining 0 and a second pause). Waiters whose slot lies after the pause keep it.
func TestPauseSpreadsVoidedReservations(t *testing.T) {
	tests := []struct {
		name   string
		pause  int // ms
		voided int
		want   []int // ms: every waiter's sleep once the voided ones reserved again
	}{
		// Every slot (100..500 ms) is inside the pause: new slots 1.0 s, 1.1 s, ... 1.4 s.
		{"all voided", 1000, 5, []int{1000, 1100, 1200, 1300, 1400}},
		// Slots 400 and 500 ms are after a 300 ms pause and stay; 100..300 follow them.
		{"some kept", 300, 3, []int{400, 500, 600, 700, 800}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, clock, _ := embedded(t, Config{Rate: 10, Per: time.Second, Burst: 5, MaxWait: 5 * time.Second})
			ctx := context.Background()
			mustWait(t, l, ctx, "s", 5, Interactive) // bucket empty
			const waiters = 5
			done := make(chan Grant, waiters)
			for i := range waiters {
				go func() { done <- mustWait(t, l, ctx, "s", 1, Interactive) }()
				clock.awaitSleepers(t, i+1) // slots 100ms, 200ms, ... 500ms
			}
			l.Observe("s", http.StatusTooManyRequests, ghlHeaders(100, tt.pause, -1))
			clock.awaitSleeps(t, waiters+tt.voided)
			ds := clock.awaitSleepers(t, waiters)
			for i := range ds {
				if ds[i] != time.Duration(tt.want[i])*time.Millisecond {
					t.Fatalf("sleeps %v, want %v ms", ds, tt.want)
				}
			}
			for range 14 {
				clock.Advance(100 * time.Millisecond)
			}
			for range waiters {
				<-done
			}
			if n := clock.sleeps(); n != waiters+tt.voided {
				t.Fatalf("%d sleeps, want %d (a kept slot was given up)", n, waiters+tt.voided)
			}
		})
	}
}

// With FollowGHL a scope spends the window GHL advertises, less FollowReserve of it, upward
// from the configured 280/min as well as downward, on the embedded and the shared bucket:
// for 100 per 10 s and the default reserve, a burst of 10 and one token every 10 s/77, 87
// at most in any window; then, when GHL says 40, the lower bucket at once. Without it, a
// higher advertised limit changes nothing.
func TestFollowGHL(t *testing.T) {
	window := func(st ScopeStats) float64 { return float64(st.Burst) + st.Rate*10 }
	backends(t, Config{FollowGHL: true, FollowReserve: 0.1}, func(t *testing.T, l *Limiter, sleeps *[]time.Duration, tol time.Duration) {
		ctx := context.Background()
		mustWait(t, l, ctx, "s", 1, Interactive)
		if st, _ := l.Scope("s"); st.Burst != 50 || math.Abs(st.Rate-280.0/60) > 0.01 {
			t.Fatalf("before GHL's headers: %+v, want the configured 280/min, burst 50", st)
		}
		l.Observe("s", 200, ghlHeaders(100, 10000, 99))
		mustWait(t, l, ctx, "s", 1, Interactive)
		st, _ := l.Scope("s")
		if st.Burst != 10 || math.Abs(st.Rate-7.7) > 0.01 || window(st) > 87+1e-6 {
			t.Fatalf("following 100 per 10 s: %+v (%.2f per window), want burst 10, 7.7/s, at most 87", st, window(st))
		}
		// Warming still gets the tokens above its reserve, which shrinks with the burst (2 of
		// the followed 10, as the default 10 of the configured 50), not the whole bucket.
		l.Observe("w", 200, ghlHeaders(100, 10000, 99))
		mustWait(t, l, ctx, "w", 1, Interactive) // learns the window on this replica
		slept := len(*sleeps)
		for i := range 6 {
			if g := mustWait(t, l, ctx, "w", 1, Warm); len(*sleeps) != slept {
				t.Fatalf("warm grant %d of a followed bucket slept %v (%+v)", i, (*sleeps)[slept:], g)
			}
		}
		l.Observe("s", 200, ghlHeaders(40, 10000, 39))
		mustWait(t, l, ctx, "s", 1, Interactive)
		st, _ = l.Scope("s")
		if st.Burst != 5 || window(st) > 40*(learnMargin-0.1)+1e-6 {
			t.Fatalf("following 40 per 10 s: %+v (%.2f per window), want burst 5, at most 34.8", st, window(st))
		}
	})
	backends(t, Config{}, func(t *testing.T, l *Limiter, _ *[]time.Duration, _ time.Duration) {
		l.Observe("s", 200, ghlHeaders(100, 10000, 99))
		mustWait(t, l, context.Background(), "s", 1, Interactive)
		if st, _ := l.Scope("s"); st.Burst != 50 || math.Abs(st.Rate-280.0/60) > 0.01 {
			t.Fatalf("not following: %+v, want the configured 280/min, burst 50", st)
		}
	})
}
