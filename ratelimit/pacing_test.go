package ratelimit

import (
	"context"
	"math"
	"net/http"
	"strconv"
	"testing"
	"time"
)

func dailyHeader(remaining int) http.Header {
	h := http.Header{}
	h.Set("X-RateLimit-Daily-Remaining", strconv.Itoa(remaining))
	h.Set("X-RateLimit-Limit-Daily", "200000")
	return h
}

// With daily pacing on, what GHL says is left of its day is spread over the time to the
// restart: an app request costs the bucket as many tokens as make the rest last, a
// background one more (it is paced on what is left above the reserve) and is refused at
// the reserve; a count read before the restart paces nothing, and without pacing nothing
// changes. The fake clock starts 1 h 46 min 40 s (6,400 s) before midnight UTC; at 280 a
// minute the bucket spends 29,867 tokens in that time.
func TestDailyPacing(t *testing.T) {
	cfg := Config{Rate: 280, Per: time.Minute, Burst: 50, MaxWait: time.Minute, DailyReserve: 1000, DailyPacing: true}
	l, clock, _ := embedded(t, cfg)
	sleeps := recordSleeps(l)
	ctx := context.Background()
	if until := nextReset(clock.Now(), 0).Sub(clock.Now()); until != 6400*time.Second {
		t.Fatalf("the fake clock is %s before midnight UTC, want 6400s", until)
	}
	const tokens = 6400e6 / (60e6 / 280) // until midnight, at 280/min
	cost := func(p Priority) float64 {
		c, refused := l.pace(l.scope("loc"), p, clock.Now())
		if refused {
			return -1
		}
		return c
	}
	if c := cost(Interactive); c != 1 {
		t.Fatalf("no daily count read yet: cost %v, want 1", c)
	}
	l.Observe("loc", http.StatusOK, dailyHeader(2987))
	if c, want := cost(Interactive), tokens/2987; math.Abs(c-want) > 0.01 {
		t.Fatalf("app request costs %v tokens, want %v: 2,987 calls over 29,867 tokens' time", c, want)
	}
	if c, want := cost(Background), tokens/1987; math.Abs(c-want) > 0.01 {
		t.Fatalf("background request costs %v, want %v: paced on what is above the 1,000 reserve", c, want)
	}
	if st, _ := l.Scope("loc"); math.Abs(st.DailyPace-tokens/2987) > 0.01 {
		t.Errorf("stats daily_pace %v", st.DailyPace)
	}
	// The burst of 50 lasts five app requests of 10 tokens; the sixth waits ten emission
	// intervals, 2.14 s, instead of one.
	for range 5 {
		mustWait(t, l, ctx, "loc", 1, Interactive)
	}
	if len(*sleeps) != 0 {
		t.Fatalf("the first five slept %v", *sleeps)
	}
	mustWait(t, l, ctx, "loc", 1, Interactive)
	perCall := tokens / 2987
	if want := time.Duration(perCall * float64(time.Minute) / 280); len(*sleeps) != 1 || !near((*sleeps)[0], want, 5*time.Millisecond) {
		t.Fatalf("the sixth slept %v, want %s", *sleeps, want)
	}
	// At the reserve, background and warm requests stop; the app's are paced on the rest.
	l.Observe("loc", http.StatusOK, dailyHeader(900))
	if _, err := l.Wait(ctx, "loc", 1, Background); err == nil {
		t.Fatal("a background request was granted with the day's count below the reserve")
	} else {
		asRejected(t, err)
	}
	if c := cost(Interactive); math.Abs(c-tokens/900) > 0.01 {
		t.Fatalf("app cost %v at 900 left", c)
	}
	// Pacing never makes a request cost more than the whole burst.
	l.Observe("loc", http.StatusOK, dailyHeader(3))
	if c := cost(Interactive); c != 50 {
		t.Fatalf("app cost %v with 3 left, want the burst (50)", c)
	}
	// Past midnight UTC the count is yesterday's: nothing is paced until GHL tells the new one.
	clock.Advance(6401 * time.Second)
	if c := cost(Interactive); c != 1 {
		t.Fatalf("after GHL's day restarted: cost %v, want 1", c)
	}
	if c := cost(Background); c != 1 {
		t.Fatalf("after GHL's day restarted: background cost %v, want 1", c)
	}
}

func TestDailyPacingOff(t *testing.T) {
	l, clock, _ := embedded(t, Config{Rate: 280, Per: time.Minute, Burst: 50, DailyReserve: 1000})
	l.Observe("loc", http.StatusOK, dailyHeader(10))
	if c, refused := l.pace(l.scope("loc"), Background, clock.Now()); c != 1 || refused {
		t.Fatalf("pacing off: cost %v, refused %v", c, refused)
	}
}

func TestNextReset(t *testing.T) {
	at := func(s string) time.Time {
		v, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	for _, tc := range []struct {
		now   string
		reset time.Duration
		want  string
	}{
		{"2026-12-07T15:00:00Z", 0, "2026-12-08T00:00:00Z"},
		{"2026-12-07T00:00:00Z", 0, "2026-12-08T00:00:00Z"},
		{"2026-12-07T03:00:00Z", 5 * time.Hour, "2026-12-07T05:00:00Z"},
		{"2026-12-07T06:00:00Z", 5 * time.Hour, "2026-12-08T05:00:00Z"},
		{"2026-12-07T10:00:00+05:00", 6 * time.Hour, "2026-12-07T06:00:00Z"}, // 05:00 UTC
	} {
		if got := nextReset(at(tc.now), tc.reset); !got.Equal(at(tc.want)) {
			t.Errorf("nextReset(%s, %s) = %s, want %s", tc.now, tc.reset, got, tc.want)
		}
	}
}

// On the shared bucket a paced request costs the same: the sixth app request after a burst
// of five sleeps its cost in emission intervals.
func TestDailyPacingOnRedis(t *testing.T) {
	_, rdb := startRedis(t)
	l, _ := newLimiter(t, Config{Rate: 280, Per: time.Minute, Burst: 50, MaxWait: time.Minute, DailyPacing: true, RedisTimeout: time.Second}, rdb)
	sleeps := recordSleeps(l)
	ctx := context.Background()
	// What lasts until the next midnight UTC at a little under ten tokens a call (one call
	// more than ten tokens a call allows: five calls then never spend more than the burst).
	until := time.Until(nextReset(time.Now(), 0))
	if until < time.Minute {
		t.Skip("a minute from midnight UTC the day's count is too small to pace by ten")
	}
	left := int(float64(until)/float64(time.Minute/280)/10) + 1
	l.Observe("loc", http.StatusOK, dailyHeader(left))
	c, _ := l.pace(l.scope("loc"), Interactive, time.Now())
	if math.Abs(c-10) > 0.1 {
		t.Fatalf("cost %v, want 10", c)
	}
	for range 5 {
		mustWait(t, l, ctx, "loc", 1, Interactive)
	}
	mustWait(t, l, ctx, "loc", 1, Interactive)
	if want := time.Duration(c * float64(time.Minute) / 280); len(*sleeps) != 1 || !near((*sleeps)[0], want, 60*time.Millisecond) {
		t.Fatalf("the sixth slept %v, want %s", *sleeps, want)
	}
}
