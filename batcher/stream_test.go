package batcher

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ghlproxy/ghlproxy/internal/metrics"
	"github.com/ghlproxy/ghlproxy/ratelimit"
)

// streamShape is an update stream and the conditions it is replayed in.
type streamShape struct {
	contacts               int
	minUpdates, maxUpdates int           // partial updates (PUT) per contact, uniform
	spread                 time.Duration // a contact's first write comes within [0, spread)
	gap                    time.Duration // a contact's next write comes [0, 2·gap) later
	tagAdds                bool          // every other contact also gets one tag add of a shared tag among its updates
	latency                time.Duration // upstream median, log-normal as fakeghl's (p99 3.5× median); 0: instant
	realBucket             bool          // GHL's budget: 280/min, burst 50, max_wait 20s; else unlimited
	linger                 time.Duration
	bulk                   bool
	coalesce               time.Duration // batch.coalesce
}

// streamResult is what one replay measured.
type streamResult struct {
	writes, calls int
	refused       int             // answered the sidecar's 429 (max_wait passed), unsent
	wait          []time.Duration // each write's Submit to answer, sorted
}

func (r streamResult) cut() float64 { return 100 * (1 - float64(r.calls)/float64(r.writes)) }

// realistic is a sync or workflow burst at GHL's real numbers: 40 contacts, each updated 3–8
// times within a few seconds (about 300ms apart), every other one also tagged, against an
// upstream answering in ~150ms and the default bucket (280/min, burst 50).
var realistic = streamShape{contacts: 40, minUpdates: 3, maxUpdates: 8, spread: 2 * time.Second, gap: 300 * time.Millisecond,
	tagAdds: true, latency: 150 * time.Millisecond, realBucket: true, linger: 25 * time.Millisecond, bulk: true}

// BenchmarkUpdateStream measures the cut in upstream write calls on update streams replayed
// in real time through a batcher with merging on. The cut is 1 - calls/writes: without a
// batcher every write is one call. Every run also checks each contact's final state
// upstream equals its writes applied in arrival order.
//
// The first cases are the original ones: 20 contacts × 5 updates, first updates within a
// second, an instant upstream and an unlimited bucket; only the gap between a contact's
// updates varies. The "realistic" cases are the one above (GHL latency and budget, tag
// adds), with bulk off, with slower updates (1s apart) and with 20 contacts; then the
// realistic streams again with batch.coalesce at 1 s and 2 s.
//
//	go test -run '^$' -bench UpdateStream -benchtime 1x ./batcher/
func BenchmarkUpdateStream(b *testing.B) {
	type named struct {
		name  string
		shape streamShape
	}
	var cases []named
	for _, linger := range []time.Duration{25 * time.Millisecond, 100 * time.Millisecond} {
		for _, gap := range []time.Duration{5 * time.Millisecond, 50 * time.Millisecond, 500 * time.Millisecond} {
			cases = append(cases, named{fmt.Sprintf("instant/linger=%v/gap=%v", linger, gap), streamShape{contacts: 20, minUpdates: 5, maxUpdates: 5,
				spread: time.Second, gap: gap, linger: linger}})
		}
	}
	noBulk, slow, small := realistic, realistic, realistic
	noBulk.bulk = false
	slow.gap = time.Second
	small.contacts = 20
	cases = append(cases, named{"realistic/40x3-8/gap=300ms", realistic}, named{"realistic/40x3-8/gap=300ms/bulk=off", noBulk},
		named{"realistic/40x3-8/gap=1s", slow}, named{"realistic/20x3-8/gap=300ms", small})
	// batch.coalesce: the same streams, updates of a contact held up to 1 s or 2 s to merge.
	for _, hold := range []time.Duration{time.Second, 2 * time.Second} {
		for _, c := range []named{{"realistic/40x3-8/gap=300ms", realistic}, {"realistic/20x3-8/gap=300ms", small}} {
			c.shape.coalesce = hold
			cases = append(cases, named{fmt.Sprintf("%s/coalesce=%v", c.name, hold), c.shape})
		}
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			var r streamResult
			for range b.N {
				r = replayStream(b, c.shape)
			}
			b.ReportMetric(float64(r.writes), "writes")
			b.ReportMetric(float64(r.calls), "calls")
			b.ReportMetric(float64(r.refused), "refused")
			b.ReportMetric(r.cut(), "%cut")
			b.ReportMetric(float64(r.wait[len(r.wait)/2].Milliseconds()), "p50-ms")
			b.ReportMetric(float64(r.wait[len(r.wait)*99/100].Milliseconds()), "p99-ms")
			if c.shape.realBucket {
				// The peer: the same stream without a batcher, a token per write.
				p := replayDirect(b, c.shape)
				b.ReportMetric(float64(p.refused), "peer-refused")
				b.ReportMetric(float64(p.wait[len(p.wait)/2].Milliseconds()), "peer-p50-ms")
				b.ReportMetric(float64(p.wait[len(p.wait)*99/100].Milliseconds()), "peer-p99-ms")
			}
		})
	}
}

type streamEvent struct {
	at      time.Duration
	contact string
	body    []byte
	tag     bool // a tag add ({"tags":[...]} added), else a partial update
}

// delay draws the upstream's latency: log-normal around sh.latency with fakeghl's shape
// (p99 3.5× the median, capped at 10×); nil when sh.latency is 0.
func (sh streamShape) delay() func() time.Duration {
	if sh.latency <= 0 {
		return nil
	}
	var mu sync.Mutex
	rng := rand.New(rand.NewPCG(7, 150))
	return func() time.Duration {
		mu.Lock()
		defer mu.Unlock()
		return time.Duration(float64(sh.latency) * math.Min(math.Exp(0.5386*rng.NormFloat64()), 10))
	}
}

func (sh streamShape) events(rng *rand.Rand) []streamEvent {
	var events []streamEvent
	for c := range sh.contacts {
		id := fmt.Sprintf("c%02d", c)
		at := time.Duration(rng.Int64N(int64(sh.spread)))
		updates := sh.minUpdates
		if sh.maxUpdates > sh.minUpdates { // no draw otherwise: the original cases' streams stay as they were
			updates += rng.IntN(sh.maxUpdates - sh.minUpdates + 1)
		}
		tagAt := -1
		if sh.tagAdds && c%2 == 0 {
			tagAt = rng.IntN(updates + 1)
		}
		for u := range updates + 1 {
			if u == tagAt {
				events = append(events, streamEvent{at: at, contact: id, body: []byte(`{"tags":["synced"]}`), tag: true})
				at += time.Duration(rng.Int64N(2 * int64(sh.gap)))
			}
			if u == updates {
				break
			}
			// A few of a contact's fields, as a workflow or a sync sets them.
			f := map[string]any{}
			for range 1 + rng.IntN(3) {
				f[fmt.Sprintf("field%d", rng.IntN(8))] = fmt.Sprintf("v%d-%d", c, u)
			}
			if rng.IntN(4) == 0 {
				f["tags"] = []string{fmt.Sprintf("t%d", u)}
			}
			body, _ := json.Marshal(f)
			events = append(events, streamEvent{at: at, contact: id, body: body})
			at += time.Duration(rng.Int64N(2 * int64(sh.gap)))
		}
	}
	slices.SortStableFunc(events, func(a, b streamEvent) int { return int(a.at - b.at) })
	return events
}

func replayStream(tb testing.TB, sh streamShape) streamResult {
	tb.Helper()
	rng := rand.New(rand.NewPCG(6, uint64(sh.gap)))
	events := sh.events(rng)

	st := newStand(tb)
	st.delay = sh.delay()
	var lim Limiter = openBucket()
	cfg := Config{Min: 3, Max: 5, Linger: sh.linger, Merge: true, Bulk: sh.bulk, Coalesce: sh.coalesce}
	if sh.realBucket {
		rl, err := ratelimit.New(ratelimit.Config{Rate: 280, Per: time.Minute, Burst: 50, MaxWait: 20 * time.Second}, nil, metrics.New(), nil)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { _ = rl.Close() })
		lim, cfg.MaxWait = rl, 20*time.Second
	}
	bt := New(cfg, lim, metrics.New(), nil)
	type arrived struct {
		body []byte
		tag  bool
	}
	arrival := map[string][]arrived{}
	bt.enqueued = func(w Write) { arrival[w.Entity] = append(arrival[w.Entity], arrived{w.Body, w.Bulk != nil}) }

	var mu sync.Mutex
	var waits []time.Duration
	refused := map[string]bool{} // entity + body: unique in a stream
	start := time.Now()
	var wg sync.WaitGroup
	for _, e := range events {
		// Pacing the generator, not synchronising: each write leaves at its time in the stream.
		time.Sleep(time.Until(start.Add(e.at)))
		wg.Go(func() {
			w := Write{Scope: "loc1", Entity: "contacts/" + e.contact, Body: e.body}
			if e.tag {
				w.Send, w.Bulk = st.tagSend(e.contact), st.bulkTag(e.contact, "synced")
			} else {
				w.MergeKey, w.Send = "tok|PUT /contacts/"+e.contact, st.send(e.contact, nil)
			}
			t0 := time.Now()
			resp, _, err := bt.Submit(context.Background(), w)
			mu.Lock()
			defer mu.Unlock()
			waits = append(waits, time.Since(t0))
			var rej *ratelimit.RejectedError
			switch {
			case errors.As(err, &rej):
				refused[w.Entity+string(w.Body)] = true
			case err != nil || resp.Status/100 != 2:
				tb.Errorf("write to %s: %v %v", e.contact, resp, err)
			}
		})
	}
	wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := bt.Close(ctx); err != nil {
		tb.Fatal(err)
	}
	for entity, writes := range arrival {
		want := map[string]json.RawMessage{}
		for _, w := range writes {
			if refused[entity+string(w.body)] {
				continue
			}
			var f map[string]json.RawMessage
			_ = json.Unmarshal(w.body, &f)
			if !w.tag {
				maps.Copy(want, f)
				continue
			}
			var have, add []string
			_ = json.Unmarshal(want["tags"], &have)
			_ = json.Unmarshal(f["tags"], &add)
			for _, t := range add {
				if !slices.Contains(have, t) {
					have = append(have, t)
				}
			}
			want["tags"] = mustJSONBytes(have)
		}
		id := entity[len("contacts/"):]
		if got := st.contact(id); !maps.EqualFunc(got, want, func(a, b json.RawMessage) bool { return bytes.Equal(a, b) }) {
			tb.Fatalf("%s: final state %s, want %s", id, mustJSON(got), mustJSON(want))
		}
	}
	slices.Sort(waits)
	return streamResult{writes: len(events), calls: len(st.recorded()), refused: len(refused), wait: waits}
}

// replayDirect replays sh's stream as the proxy does without a batcher: each write takes a
// token of its own from the same bucket and is sent at once; none is ordered or merged.
func replayDirect(tb testing.TB, sh streamShape) streamResult {
	tb.Helper()
	events := sh.events(rand.New(rand.NewPCG(6, uint64(sh.gap))))
	st := newStand(tb)
	st.delay = sh.delay()
	lim, err := ratelimit.New(ratelimit.Config{Rate: 280, Per: time.Minute, Burst: 50, MaxWait: 20 * time.Second}, nil, metrics.New(), nil)
	if err != nil {
		tb.Fatal(err)
	}
	defer lim.Close()
	var mu sync.Mutex
	var r streamResult
	start := time.Now()
	var wg sync.WaitGroup
	for _, e := range events {
		time.Sleep(time.Until(start.Add(e.at))) // pacing the generator
		wg.Go(func() {
			t0 := time.Now()
			_, err := lim.Wait(context.Background(), "loc1", 1, ratelimit.Interactive)
			if err == nil {
				send := st.send(e.contact, nil)
				if e.tag {
					send = st.tagSend(e.contact)
				}
				_, err = send(context.Background(), e.body)
			}
			mu.Lock()
			defer mu.Unlock()
			r.wait = append(r.wait, time.Since(t0))
			var rej *ratelimit.RejectedError
			if errors.As(err, &rej) {
				r.refused++
			} else if err != nil {
				tb.Errorf("direct write to %s: %v", e.contact, err)
			}
		})
	}
	wg.Wait()
	slices.Sort(r.wait)
	r.writes, r.calls = len(events), len(st.recorded())
	return r
}

// TestUpdateStreamMergesBursts runs the benchmark's stream once with updates of a contact a
// few milliseconds apart: most of them must merge (and every final state be right).
func TestUpdateStreamMergesBursts(t *testing.T) {
	if testing.Short() {
		t.Skip("real-time stream")
	}
	r := replayStream(t, streamShape{contacts: 20, minUpdates: 5, maxUpdates: 5, spread: time.Second, gap: 2 * time.Millisecond, linger: 25 * time.Millisecond})
	t.Logf("%d writes -> %d calls: %.0f%% cut", r.writes, r.calls, r.cut())
	if r.cut() < 50 {
		t.Errorf("cut %.0f%%, want most of a burst of updates merged", r.cut())
	}
}

// TestRealisticStreamFinalState replays the realistic stream (GHL's latency and budget, tag
// adds in bulk) once: every write answered 2xx and every contact's final state equal to its
// writes applied in arrival order. The cut is reported, not asserted (it is the benchmark's).
func TestRealisticStreamFinalState(t *testing.T) {
	if testing.Short() {
		t.Skip("real-time stream")
	}
	r := replayStream(t, realistic)
	t.Logf("%d writes -> %d calls (%d refused): %.0f%% cut; Submit->answer p50 %v p99 %v", r.writes, r.calls, r.refused, r.cut(),
		r.wait[len(r.wait)/2].Round(time.Millisecond), r.wait[len(r.wait)*99/100].Round(time.Millisecond))
	if r.calls >= r.writes || r.refused > 0 {
		t.Errorf("%d calls for %d writes, %d refused", r.calls, r.writes, r.refused)
	}
}
