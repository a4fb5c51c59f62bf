package batcher

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ghlproxy/ghlproxy/internal/metrics"
	"github.com/ghlproxy/ghlproxy/internal/promtest"
	"github.com/ghlproxy/ghlproxy/ratelimit"
)

// waitCount is how many grants the limiter gave in lane p.
func waitCount(t *testing.T, m *metrics.Metrics, p ratelimit.Priority) uint64 {
	return promtest.Samples(t, m.RateLimitWait.WithLabelValues(p.String()))
}

// A scope whose queued writes are all background asks in the background lane; an app write
// arriving while that ask waits makes the loop ask again in the app's lane, with both
// writes, so the app's write waits for no background tokens.
func TestAppWritePreemptsBackgroundAsk(t *testing.T) {
	s := newStand(t)
	m := metrics.New()
	lim, err := ratelimit.New(ratelimit.Config{Rate: 100, Per: time.Second, Burst: 5, MaxWait: 10 * time.Second}, nil, m, nil)
	if err != nil {
		t.Fatal(err)
	}
	b := New(Config{Min: 1, Max: 5, Linger: time.Millisecond}, lim, m, nil)
	defer closeBatcher(t, b)
	lim.Charge("s", 100) // a second of debt: nothing is free now

	bg := submitAsync(context.Background(), b, Write{Scope: "s", Entity: "c1", Body: []byte(`{"a":1}`), Send: s.send("c1", nil), Background: true})
	waitUntil(t, "the background group to wait in its lane", func() bool {
		return testutil.ToFloat64(m.RateLimitQueue.WithLabelValues("background")) == 1
	})
	app := submitAsync(context.Background(), b, Write{Scope: "s", Entity: "c2", Body: []byte(`{"b":2}`), Send: s.send("c2", nil)})
	for _, ch := range []<-chan answer{app, bg} {
		if a := receive(t, ch); a.err != nil || a.resp.Status != 200 {
			t.Fatalf("write: %+v", a)
		}
	}
	if n := waitCount(t, m, ratelimit.Background); n != 0 {
		t.Errorf("%d grants in the background lane, want none (the app's write took the group to its lane)", n)
	}
	if n := waitCount(t, m, ratelimit.Interactive); n != 1 {
		t.Errorf("%d grants in the app's lane, want 1 (one group with both writes)", n)
	}
	if calls := s.recorded(); len(calls) != 2 {
		t.Errorf("%d calls upstream, want 2", len(calls))
	}
}
