package batcher

import (
	"slices"
	"testing"
	"time"

	"github.com/ghlproxy/ghlproxy/internal/metrics"
)

// TestCoalesceHoldsUpdatesOfAnEntity stages batch.coalesce with a fake clock and a gated
// bucket: an entity's partial updates are held until the first has waited Coalesce and go
// out as one merged call; a write that cannot merge is not held; Close sends held writes at
// once.
func TestCoalesceHoldsUpdatesOfAnEntity(t *testing.T) {
	st := newStand(t)
	clk := newFakeClock()
	lim := gatedBucket()
	b := New(Config{Min: 3, Max: 5, Linger: 25 * time.Millisecond, Merge: true, Coalesce: time.Second,
		Now: clk.Now, After: clk.After}, lim, metrics.New(), nil)
	put := func(id, body string) Write {
		return Write{Scope: "loc1", Entity: "contacts/" + id, MergeKey: "k " + id, Body: []byte(body), Send: st.send(id, nil)}
	}
	release := clk.Now().Add(time.Second)
	// A's three updates, 0, 500 and 800 ms in: each past the 25 ms linger, none past the
	// 1 s hold of the first.
	a := submitInOrder(t, b, put("A", `{"x":1}`))
	waitUntil(t, "the loop asleep until A's release", func() bool { return clk.timersAt(release) > 0 })
	clk.Advance(500 * time.Millisecond)
	a = append(a, submitInOrder(t, b, put("A", `{"y":2}`))...)
	clk.Advance(300 * time.Millisecond)
	a = append(a, submitInOrder(t, b, put("A", `{"x":3}`))...)

	// A write that cannot merge (no MergeKey: a create, a delete) is not held: it goes
	// after its own linger while A waits.
	cAt := clk.Now()
	c := submitInOrder(t, b, Write{Scope: "loc1", Entity: "contacts/C", Body: []byte(`{}`), Send: st.send("C", nil)})
	waitUntil(t, "C's linger timer armed", func() bool { return clk.armed(cAt.Add(25 * time.Millisecond)) })
	clk.Advance(25 * time.Millisecond)
	if got := <-lim.asks; got != 1 {
		t.Fatalf("asked for %d tokens for the unmergeable write, want 1", got)
	}
	n := clk.timersAt(release)
	lim.gate <- struct{}{}
	if r := receive(t, c[0]); r.err != nil || r.info.Size != 1 {
		t.Fatalf("unmergeable write: %+v %v", r.info, r.err)
	}
	// Once C's group is out, the loop sleeps until A's release again, having asked nothing.
	waitUntil(t, "the loop asleep until A's release after C", func() bool { return clk.timersAt(release) > n })
	if len(lim.asks) != 0 {
		t.Fatal("A's held updates asked for a token before their release")
	}

	clk.Advance(release.Sub(clk.Now()))
	if got := <-lim.asks; got != 1 {
		t.Fatalf("asked for %d tokens for A's updates, want 1", got)
	}
	lim.gate <- struct{}{}
	for i, ch := range a {
		if r := receive(t, ch); r.err != nil || r.info.Merged != 3 {
			t.Errorf("A's update %d: %+v %v, want merged=3", i, r.info, r.err)
		}
	}

	// Close does not wait for a release.
	d := submitInOrder(t, b, put("D", `{"z":1}`))
	done := make(chan struct{})
	go func() { closeBatcher(t, b); close(done) }()
	if got := <-lim.asks; got != 1 {
		t.Fatalf("asked for %d tokens on Close, want 1", got)
	}
	lim.gate <- struct{}{}
	if r := receive(t, d[0]); r.err != nil {
		t.Fatalf("held write on Close: %v", r.err)
	}
	<-done

	var bodies []string
	for _, r := range st.recorded() {
		bodies = append(bodies, r.id+" "+string(r.body))
	}
	want := []string{`C {}`, `A {"x":3,"y":2}`, `D {"z":1}`}
	if !slices.Equal(bodies, want) {
		t.Errorf("upstream received %q, want %q", bodies, want)
	}
}
