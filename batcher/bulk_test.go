package batcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/ghlproxy/ghlproxy/internal/metrics"
	"github.com/ghlproxy/ghlproxy/internal/upstream"
)

func tagAdd(st *stand, id string, tags ...string) Write {
	return Write{Scope: "loc1", Entity: "contacts/" + id, Body: mustJSONBytes(map[string]any{"tags": tags}),
		Send: st.tagSend(id), Bulk: st.bulkTag(id, tags...)}
}

func tagsOf(t *testing.T, r answer) []string {
	t.Helper()
	var out struct{ Tags []string }
	if r.err != nil || r.resp == nil || json.Unmarshal(r.resp.Body, &out) != nil {
		t.Fatalf("answer %v %v", r.resp, r.err)
	}
	return out.Tags
}

// TestBulkTagAdds: 12 tag adds of one tag set to distinct contacts go out as ceil(12/5) = 3
// bulk calls of one token each; every caller gets its own contact's tags, and the final
// state is what 12 single adds give.
func TestBulkTagAdds(t *testing.T) {
	const n = 12
	st := newStand(t)
	lim := gatedBucket()
	m := metrics.New()
	b := New(Config{Min: 3, Max: 5, Linger: time.Hour, Bulk: true}, lim, m, nil)
	var chs []<-chan answer
	for i := range n {
		id := fmt.Sprintf("c%02d", i)
		st.mu.Lock()
		st.state[id] = map[string]json.RawMessage{"tags": json.RawMessage(fmt.Sprintf(`["own%d"]`, i))}
		st.mu.Unlock()
		chs = append(chs, submitInOrder(t, b, tagAdd(st, id, "vip", "synced"))...)
		if i%5 == 4 { // a bulk call of 5 writes is one call: the group asks for one token
			if got := <-lim.asks; got != 1 {
				t.Fatalf("asked for %d tokens, want 1", got)
			}
			lim.gate <- struct{}{}
		}
	}
	go func() { // Close flushes the last two: one more bulk call, one token
		for range lim.asks {
			lim.gate <- struct{}{}
		}
	}()
	closeBatcher(t, b)
	close(lim.asks)
	for i, ch := range chs {
		r := receive(t, ch)
		want := []string{fmt.Sprintf("own%d", i), "vip", "synced"}
		if got := tagsOf(t, r); !slices.Equal(got, want) {
			t.Errorf("write %d: tags %v, want %v", i, got, want)
		}
		if wantBulk := map[bool]int{true: 5, false: 2}[i < 10]; r.info.Bulk != wantBulk || r.info.Merged != 1 {
			t.Errorf("write %d: info %+v, want bulk=%d", i, r.info, wantBulk)
		}
	}
	calls := st.recorded()
	if len(calls) != 3 {
		t.Fatalf("%d upstream calls, want 3 bulk calls", len(calls))
	}
	for _, c := range calls {
		if c.id != "bulk" {
			t.Errorf("call %s %s, want bulk calls only", c.id, c.body)
		}
	}
	if saved := value(m.UpstreamSaved.WithLabelValues(metrics.SavedBulk)); saved != n-3 {
		t.Errorf("saved by bulk = %v, want %d", saved, n-3)
	}
}

// TestBulkKeepsEntityOrder: a tag add never joins a bulk call that would send it before an
// earlier write of its contact. Arrival: tag B, PUT A, tag A, tag C. B and C share a bulk
// call; A's tag add cannot join it (that call comes before PUT A), so it goes after PUT A.
// And a contact's tag add may join a bulk call that comes after the contact's earlier write:
// that call then waits for it.
func TestBulkKeepsEntityOrder(t *testing.T) {
	st := newStand(t)
	b := New(Config{Min: 10, Max: 5, Linger: time.Hour, Bulk: true}, openBucket(), nil, nil)
	put := func(id string) Write {
		return Write{Scope: "loc1", Entity: "contacts/" + id, Body: []byte(`{"tags":["reset"]}`), Send: st.send(id, nil)}
	}
	chs := submitInOrder(t, b, tagAdd(st, "B", "t"), put("A"), tagAdd(st, "A", "t"), tagAdd(st, "C", "t"),
		put("D"), tagAdd(st, "E", "u"), tagAdd(st, "D", "u"))
	closeBatcher(t, b)
	for i, ch := range chs {
		if r := receive(t, ch); r.err != nil || r.resp.Status/100 != 2 {
			t.Fatalf("write %d: %v %v", i, r.resp, r.err)
		}
	}
	var order []string
	byID := map[string]record{}
	for _, c := range st.recorded() {
		order = append(order, c.id+" "+string(c.body))
		byID[c.id+string(c.body)] = c
	}
	t.Logf("upstream: %q", order)
	if got := st.contact("A"); string(got["tags"]) != `["reset","t"]` {
		t.Errorf("A's tags %s, want the PUT then the tag add", got["tags"])
	}
	if got := st.contact("D"); string(got["tags"]) != `["reset","u"]` {
		t.Errorf("D's tags %s, want the PUT then the tag add", got["tags"])
	}
	if _, ok := byID[`bulk{"contacts":["B","C"],"locationId":"loc1","tags":["t"]}`]; !ok {
		t.Errorf("B and C not in one bulk call: %q", order)
	}
	if _, ok := byID[`bulk{"contacts":["E","D"],"locationId":"loc1","tags":["u"]}`]; !ok {
		t.Errorf("E and D not in one bulk call: %q", order)
	}
	if len(st.overlaps) != 0 {
		t.Errorf("concurrent calls for %v", st.overlaps)
	}
}

func TestBulkOffSendsSingles(t *testing.T) {
	st := newStand(t)
	b := New(Config{Min: 3, Max: 5, Linger: time.Hour}, openBucket(), nil, nil)
	chs := submitInOrder(t, b, tagAdd(st, "A", "t"), tagAdd(st, "B", "t"), tagAdd(st, "C", "t"))
	for _, ch := range chs {
		if r := receive(t, ch); r.err != nil || r.info.Bulk != 0 {
			t.Fatalf("%+v %v", r.info, r.err)
		}
	}
	closeBatcher(t, b)
	for _, c := range st.recorded() {
		if c.id == "bulk" {
			t.Fatalf("bulk call %s with batch.bulk off", c.body)
		}
	}
	if n := len(st.recorded()); n != 3 {
		t.Fatalf("%d calls, want 3 singles", n)
	}
}

// TestBulkErrorAnswersEveryCaller: a failed bulk call is sent once and its error is every
// caller's answer; nothing is resent.
func TestBulkErrorAnswersEveryCaller(t *testing.T) {
	b := New(Config{Min: 3, Max: 3, Linger: time.Hour, Bulk: true}, openBucket(), nil, nil)
	boom := errors.New("connection reset")
	sent := 0
	w := func(id string) Write {
		return Write{Scope: "s", Entity: "contacts/" + id, Body: []byte(`{"tags":["t"]}`),
			Send: func(context.Context, []byte) (*upstream.Response, error) { t.Error("single send"); return nil, boom },
			Bulk: &Bulk{Key: "k", ID: id, Send: func(_ context.Context, ids []string) ([]*upstream.Response, error) {
				sent++
				return nil, boom
			}}}
	}
	for _, ch := range submitInOrder(t, b, w("A"), w("B"), w("C")) {
		if r := receive(t, ch); !errors.Is(r.err, boom) {
			t.Errorf("got %v, want the bulk call's error", r.err)
		}
	}
	closeBatcher(t, b)
	if sent != 1 {
		t.Fatalf("bulk call sent %d times, want once", sent)
	}
}

// TestMergeIntoWaitingCall: a write whose entity's latest call is cut but waits for the call
// before it (still upstream) merges into that waiting call: no token, no call of its own.
func TestMergeIntoWaitingCall(t *testing.T) {
	st := newStand(t)
	release := make(chan struct{})
	first := true
	st.hold = func(string) chan struct{} {
		if first {
			first = false
			return release
		}
		return nil
	}
	st.arrived = make(chan string, 10)
	lim := gatedBucket()
	m := metrics.New()
	b := New(Config{Min: 1, Max: 5, Linger: time.Hour, Merge: true}, lim, m, nil)
	w := func(body string) Write {
		return Write{Scope: "loc1", Entity: "contacts/A", MergeKey: "k", Body: []byte(body), Send: st.send("A", nil)}
	}
	a1 := submitInOrder(t, b, w(`{"a":1,"n":1}`))[0]
	<-lim.asks
	lim.gate <- struct{}{}
	<-st.arrived // a1 is upstream, held
	a2 := submitInOrder(t, b, w(`{"b":2,"n":2}`))[0]
	<-lim.asks
	lim.gate <- struct{}{} // a2 is cut and waits for a1
	waitUntil(t, "a2 cut", func() bool { return b.queued("loc1") == 0 })
	a3 := submitInOrder(t, b, w(`{"c":3,"n":3}`))[0]
	if n := b.queued("loc1"); n != 0 {
		t.Fatalf("a3 queued (%d), want it merged into a2's waiting call", n)
	}
	close(release)
	r1, r2, r3 := receive(t, a1), receive(t, a2), receive(t, a3)
	if r1.info.Merged != 1 || r2.info.Merged != 2 || r3.info.Merged != 2 || r2.info.ID != r3.info.ID {
		t.Errorf("infos %+v %+v %+v", r1.info, r2.info, r3.info)
	}
	closeBatcher(t, b)
	var bodies []string
	for _, c := range st.recorded() {
		bodies = append(bodies, string(c.body))
	}
	if want := []string{`{"a":1,"n":1}`, `{"b":2,"c":3,"n":3}`}; !slices.Equal(bodies, want) {
		t.Errorf("upstream got %q, want %q", bodies, want)
	}
	if len(lim.asks) != 0 {
		t.Errorf("a3 asked for a token")
	}
	if saved := value(m.UpstreamSaved.WithLabelValues(metrics.SavedMerge)); saved != 1 {
		t.Errorf("saved by merge %v, want 1", saved)
	}
}

// TestMergeAcrossTheQueue: a write merges into its entity's queued write even when that
// write is beyond the head of the queue's first group, as long as nothing else of the
// entity is between.
func TestMergeAcrossTheQueue(t *testing.T) {
	st := newStand(t)
	lim := gatedBucket()
	b := New(Config{Min: 2, Max: 2, Linger: time.Hour, Merge: true}, lim, nil, nil)
	w := func(id, body string) Write {
		return Write{Scope: "loc1", Entity: "contacts/" + id, MergeKey: "k" + id, Body: []byte(body), Send: st.send(id, nil)}
	}
	chs := submitInOrder(t, b, w("A", `{"a":1}`), w("B", `{"b":1}`))
	if got := <-lim.asks; got != 2 {
		t.Fatalf("asked %d", got)
	}
	chs = append(chs, submitInOrder(t, b, w("C", `{"c":1}`), w("A", `{"a":2}`), w("C", `[1]`), w("C", `{"c":3}`))...)
	lim.gate <- struct{}{}
	go func() {
		for range lim.asks {
			lim.gate <- struct{}{}
		}
	}()
	closeBatcher(t, b)
	close(lim.asks)
	for i, ch := range chs {
		if r := receive(t, ch); r.err != nil {
			t.Fatalf("write %d: %v", i, r.err)
		}
	}
	got := map[string][]string{}
	for _, c := range st.recorded() {
		got[c.id] = append(got[c.id], string(c.body))
	}
	want := map[string][]string{"A": {`{"a":2}`}, "B": {`{"b":1}`}, "C": {`{"c":1}`, `[1]`, `{"c":3}`}}
	for id, bodies := range want {
		if !slices.Equal(got[id], bodies) {
			t.Errorf("%s got %q, want %q", id, got[id], bodies)
		}
	}
}

// TestSendingMarksCarriedWrites: a merged or bulk call calls Sending of every write it
// carries besides the one whose Send makes it; a write whose Sending fails is left out,
// unsent, with that error.
func TestSendingMarksCarriedWrites(t *testing.T) {
	lost := errors.New("lease lost")
	t.Run("merge", func(t *testing.T) {
		st := newStand(t)
		b := New(Config{Min: 3, Max: 3, Linger: time.Hour, Merge: true}, openBucket(), nil, nil)
		marks := make([]int, 3)
		w := func(i int) Write {
			return Write{Scope: "s", Entity: "contacts/A", MergeKey: "k", Body: fmt.Appendf(nil, `{"f%d":%d}`, i, i), Send: st.send("A", nil),
				Sending: func() error {
					marks[i]++
					if i == 1 {
						return lost
					}
					return nil
				}}
		}
		chs := submitInOrder(t, b, w(0), w(1), w(2))
		rs := []answer{receive(t, chs[0]), receive(t, chs[1]), receive(t, chs[2])}
		closeBatcher(t, b)
		if rs[0].err != nil || !errors.Is(rs[1].err, lost) || rs[2].err != nil || rs[0].info.Merged != 2 {
			t.Fatalf("answers %+v", rs)
		}
		if !slices.Equal(marks, []int{1, 1, 1}) {
			t.Errorf("Sending called %v times, want once for every write, the first included", marks)
		}
		if calls := st.recorded(); len(calls) != 1 || string(calls[0].body) != `{"f0":0,"f2":2}` {
			t.Errorf("upstream got %+v, want one call without the unmarked write", calls)
		}
	})
	t.Run("bulk", func(t *testing.T) {
		st := newStand(t)
		b := New(Config{Min: 3, Max: 3, Linger: time.Hour, Bulk: true}, openBucket(), nil, nil)
		w := func(id string, err error) Write {
			wr := tagAdd(st, id, "t")
			wr.Sending = func() error { return err }
			return wr
		}
		chs := submitInOrder(t, b, w("A", nil), w("B", lost), w("C", nil))
		rs := []answer{receive(t, chs[0]), receive(t, chs[1]), receive(t, chs[2])}
		closeBatcher(t, b)
		if rs[0].err != nil || !errors.Is(rs[1].err, lost) || rs[2].err != nil || rs[0].info.Bulk != 2 {
			t.Fatalf("answers %+v", rs)
		}
		if calls := st.recorded(); len(calls) != 1 || string(calls[0].body) != `{"contacts":["A","C"],"locationId":"loc1","tags":["t"]}` {
			t.Errorf("upstream got %+v, want one bulk call for A and C", calls)
		}
	})
}
