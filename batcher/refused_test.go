package batcher

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ghlproxy/ghlproxy/internal/upstream"
)

// TestRefusedBulkGoesAlone: GHL refuses a bulk tag call as a whole with a 4xx. That may be
// any one write's doing, so each write is sent alone with its own Send, in order, and
// every caller gets its own answer; nobody gets the bulk call's refusal.
func TestRefusedBulkGoesAlone(t *testing.T) {
	b := New(Config{Min: 3, Max: 3, Linger: time.Hour, Bulk: true}, openBucket(), nil, nil)
	var mu sync.Mutex
	var singles []string
	bulks := 0
	refusal := &upstream.Response{Status: http.StatusBadRequest, Body: []byte(`{"message":"contact B is not in this location"}`)}
	w := func(id string) Write {
		return Write{Scope: "s", Entity: "contacts/" + id, Body: []byte(`{"tags":["t"]}`),
			Send: func(context.Context, []byte) (*upstream.Response, error) {
				mu.Lock()
				singles = append(singles, id)
				mu.Unlock()
				if id == "B" {
					return &upstream.Response{Status: http.StatusNotFound, Body: []byte(`{"message":"Contact not found"}`)}, nil
				}
				return &upstream.Response{Status: http.StatusCreated, Body: []byte(`{"tags":["t"]}`)}, nil
			},
			Bulk: &Bulk{Key: "k", ID: id, Send: func(context.Context, []string) ([]*upstream.Response, error) {
				bulks++
				return nil, &BulkRefused{Resp: refusal}
			}}}
	}
	chs := submitInOrder(t, b, w("A"), w("B"), w("C"))
	want := map[int]int{0: 201, 1: 404, 2: 201}
	for i, ch := range chs {
		r := receive(t, ch)
		if r.err != nil || r.resp == nil || r.resp.Status != want[i] {
			t.Errorf("write %d: %+v; want its own %d", i, r, want[i])
		}
		if r.info.Bulk != 0 || r.info.Merged != 1 {
			t.Errorf("write %d: info %+v; want it sent alone", i, r.info)
		}
	}
	closeBatcher(t, b)
	if bulks != 1 || strings.Join(singles, ",") != "A,B,C" {
		t.Fatalf("%d bulk calls, singles %v; want one bulk call, then A, B, C alone in order", bulks, singles)
	}
}

// TestRefusedBulkKeepsCredentialErrors: a 401, 403 or 429 of the bulk call is the
// credential's or the budget's, the same for every write: it is every caller's answer,
// and nothing is sent alone.
func TestRefusedBulkKeepsCredentialErrors(t *testing.T) {
	for _, status := range []int{401, 403, 429, 502} {
		b := New(Config{Min: 2, Max: 2, Linger: time.Hour, Bulk: true}, openBucket(), nil, nil)
		refusal := &upstream.Response{Status: status}
		w := func(id string) Write {
			return Write{Scope: "s", Entity: "contacts/" + id, Body: []byte(`{"tags":["t"]}`),
				Send: func(context.Context, []byte) (*upstream.Response, error) {
					t.Errorf("status %d: a write was sent alone", status)
					return refusal, nil
				},
				Bulk: &Bulk{Key: "k", ID: id, Send: func(context.Context, []string) ([]*upstream.Response, error) {
					return nil, &BulkRefused{Resp: refusal}
				}}}
		}
		for _, ch := range submitInOrder(t, b, w("A"), w("B")) {
			if r := receive(t, ch); r.err != nil || r.resp != refusal {
				t.Errorf("status %d: got %+v, want the bulk call's answer", status, r)
			}
		}
		closeBatcher(t, b)
	}
}

// TestMergedWritesButTheLastAreSuperseded: of a merged call that succeeded, every caller
// but the last is told a later write of its entity rode with it.
func TestMergedWritesButTheLastAreSuperseded(t *testing.T) {
	st := newStand(t)
	b := New(Config{Min: 3, Max: 3, Linger: time.Hour, Merge: true}, openBucket(), nil, nil)
	w := func(body string) Write {
		return Write{Scope: "loc1", Entity: "contacts/A", MergeKey: "k", Body: []byte(body), Send: st.send("A", nil)}
	}
	chs := submitInOrder(t, b, w(`{"dnd":true}`), w(`{"dnd":false}`), w(`{"firstName":"Al"}`))
	for i, ch := range chs {
		r := receive(t, ch)
		if r.err != nil || r.info.Merged != 3 {
			t.Fatalf("write %d: %+v; want the merged call's answer", i, r)
		}
		if want := i < 2; r.info.Superseded != want {
			t.Errorf("write %d: Superseded %v, want %v", i, r.info.Superseded, want)
		}
	}
	closeBatcher(t, b)
}

// TestMergedCallOutlivesItsFirstWrite: the first write of a merged call cannot be sent (its
// caller left; Sending fails): the call goes with the others' fields, led by the next
// write, and every other caller gets its answer.
func TestMergedCallOutlivesItsFirstWrite(t *testing.T) {
	st := newStand(t)
	b := New(Config{Min: 3, Max: 3, Linger: time.Hour, Merge: true}, openBucket(), nil, nil)
	gone := errors.New("caller left")
	w := func(body string, sending func() error) Write {
		return Write{Scope: "loc1", Entity: "contacts/A", MergeKey: "k", Body: []byte(body), Send: st.send("A", nil), Sending: sending}
	}
	chs := submitInOrder(t, b,
		w(`{"a":1}`, func() error { return gone }),
		w(`{"b":2}`, nil),
		w(`{"c":3}`, nil))
	if r := receive(t, chs[0]); !errors.Is(r.err, gone) {
		t.Fatalf("the write that could not be marked: %+v, want its Sending error", r)
	}
	for i, ch := range chs[1:] {
		if r := receive(t, ch); r.err != nil || r.info.Merged != 2 {
			t.Fatalf("write %d: %+v; want the merged call of the two left", i+1, r)
		}
	}
	closeBatcher(t, b)
	calls := st.recorded()
	if len(calls) != 1 || string(calls[0].body) != `{"b":2,"c":3}` {
		t.Fatalf("upstream calls %d, body %s; want one call without the first write's field", len(calls), calls[0].body)
	}
}
