package batcher

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ghlproxy/ghlproxy/metrics"
)

// BenchmarkUpdateStream measures the cut in upstream write calls on a stream of partial
// updates: Contacts contacts, each updated Updates times, its first update at a random time
// within the first second and the next ones Gap apart on average (uniform in [0, 2·Gap)),
// replayed in real time through a batcher with merging on. The peer is the same stream
// without a batcher: one call per write. Every run also checks each contact's final state
// upstream equals its updates applied in arrival order.
//
//	go test -run '^$' -bench UpdateStream -benchtime 1x ./batcher/
func BenchmarkUpdateStream(b *testing.B) {
	const contacts, updates = 20, 5
	for _, linger := range []time.Duration{25 * time.Millisecond, 100 * time.Millisecond} {
		for _, gap := range []time.Duration{5 * time.Millisecond, 50 * time.Millisecond, 500 * time.Millisecond} {
			b.Run(fmt.Sprintf("linger=%v/gap=%v", linger, gap), func(b *testing.B) {
				var cut float64
				for range b.N {
					calls := replayStream(b, contacts, updates, gap, linger)
					cut = 100 * (1 - float64(calls)/float64(contacts*updates))
					b.ReportMetric(float64(calls), "calls")
				}
				b.ReportMetric(float64(contacts*updates), "writes")
				b.ReportMetric(cut, "%cut")
			})
		}
	}
}

type streamEvent struct {
	at      time.Duration
	contact string
	body    []byte
}

func replayStream(tb testing.TB, contacts, updates int, gap, linger time.Duration) int {
	tb.Helper()
	rng := rand.New(rand.NewPCG(6, uint64(gap)))
	var events []streamEvent
	for c := range contacts {
		id := fmt.Sprintf("c%02d", c)
		at := time.Duration(rng.Int64N(int64(time.Second)))
		for u := range updates {
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
			at += time.Duration(rng.Int64N(2 * int64(gap)))
		}
	}
	slices.SortStableFunc(events, func(a, b streamEvent) int { return int(a.at - b.at) })

	st := newStand(tb)
	bt := New(Config{Min: 3, Max: 5, Linger: linger, Merge: true}, openBucket(), metrics.New(), nil)
	var mu sync.Mutex
	arrival := map[string][][]byte{}
	bt.enqueued = func(w Write) { arrival[w.Entity] = append(arrival[w.Entity], w.Body) }

	start := time.Now()
	var wg sync.WaitGroup
	for _, e := range events {
		// Pacing the generator, not synchronising: each write leaves at its time in the stream.
		time.Sleep(time.Until(start.Add(e.at)))
		wg.Go(func() {
			resp, _, err := bt.Submit(context.Background(), Write{Scope: "loc1", Entity: "contacts/" + e.contact,
				MergeKey: "tok|PUT /contacts/" + e.contact, Body: e.body, Send: st.send(e.contact, nil)})
			if err != nil || resp.Status != 200 {
				mu.Lock()
				defer mu.Unlock()
				tb.Errorf("update of %s: %v %v", e.contact, resp, err)
			}
		})
	}
	wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := bt.Close(ctx); err != nil {
		tb.Fatal(err)
	}
	for entity, bodies := range arrival {
		want := map[string]json.RawMessage{}
		for _, body := range bodies {
			var f map[string]json.RawMessage
			_ = json.Unmarshal(body, &f)
			maps.Copy(want, f)
		}
		id := entity[len("contacts/"):]
		if got := st.contact(id); !maps.EqualFunc(got, want, func(a, b json.RawMessage) bool { return bytes.Equal(a, b) }) {
			tb.Fatalf("%s: final state %s, want %s", id, mustJSON(got), mustJSON(want))
		}
	}
	return len(st.recorded())
}

// TestUpdateStreamMergesBursts runs the benchmark's stream once with updates of a contact a
// few milliseconds apart: most of them must merge (and every final state be right).
func TestUpdateStreamMergesBursts(t *testing.T) {
	if testing.Short() {
		t.Skip("real-time stream")
	}
	const contacts, updates = 20, 5
	calls := replayStream(t, contacts, updates, 2*time.Millisecond, 25*time.Millisecond)
	cut := 100 * (1 - float64(calls)/float64(contacts*updates))
	t.Logf("%d writes -> %d calls: %.0f%% cut", contacts*updates, calls, cut)
	if cut < 50 {
		t.Errorf("cut %.0f%%, want most of a burst of updates merged", cut)
	}
}
