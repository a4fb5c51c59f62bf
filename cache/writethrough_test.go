package cache

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ghlproxy/ghlproxy/internal/upstream"
)

// A write's answer stored as a read's (SetAfter): the write's own invalidation does not
// refuse it — Set does, which is why write-through needs SetAfter — but any other change of
// the record does: an invalidation after the write's, one found by it that came within the
// race window before the write was sent, and one of a tag the write did not drop. other is
// the replica the other changes come through (the same one on the embedded store).
func testSetAfter(t *testing.T, c, other *replica, clk *clock) {
	t.Helper()
	ctx := context.Background()
	alice := credOf("alice")
	p := Policy{TTL: time.Minute, Tags: []string{"s:contact:1", "s:contact:*"}}
	dropped := []string{"s:contact:1", "s:contacts"} // what the write invalidates
	later := func() { clk.Advance(5 * time.Second) } // past every earlier tombstone's race window
	// The write's answer, arriving now for a write sent at sent.
	answered := func(body string, sent time.Time) *upstream.Response {
		r := answer(body, clk.Now())
		r.Sent = sent
		return r
	}
	later()
	sent := clk.Now()
	clk.Advance(100 * time.Millisecond)
	resp := answered("after the write", sent)
	inv, err := c.InvalidateOwn(ctx, dropped)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Set(ctx, fp("wt"), alice, resp, p); !errors.Is(err, ErrInvalidated) {
		t.Fatalf("Set after the write's own invalidation: %v, want ErrInvalidated", err)
	}
	if err := c.SetAfter(ctx, fp("wt"), alice, resp, p, inv); err != nil {
		t.Fatalf("SetAfter: %v", err)
	}
	if got := body(mustGet(t, other, fp("wt"), alice)); got != "after the write" {
		t.Fatalf("read after write-through: %s", got)
	}

	cases := []struct {
		name   string
		before []string // invalidated through other after the write was sent, before its own
		after  []string // invalidated through other after the write's own, in the same ms
	}{
		{"another change after the write's invalidation", nil, []string{"s:contact:1"}},
		{"another change between the write and its invalidation", []string{"s:contact:1"}, nil},
		{"a tag the write does not drop", []string{"s:contact:*"}, nil},
	}
	for i, tc := range cases {
		later()
		key := fp("wt case " + tc.name)
		sent := clk.Now()
		clk.Advance(50 * time.Millisecond)
		if tc.before != nil {
			if err := other.Invalidate(ctx, tc.before); err != nil {
				t.Fatal(err)
			}
		}
		clk.Advance(50 * time.Millisecond)
		resp := answered("case", sent)
		inv, err := c.InvalidateOwn(ctx, dropped)
		if err != nil {
			t.Fatal(err)
		}
		if tc.after != nil {
			if err := other.Invalidate(ctx, tc.after); err != nil { // same ms: tombstones still grow
				t.Fatal(err)
			}
		}
		if err := c.SetAfter(ctx, key, alice, resp, p, inv); !errors.Is(err, ErrInvalidated) {
			t.Errorf("case %d, %s: SetAfter %v, want ErrInvalidated", i, tc.name, err)
		}
		if e := mustGet(t, other, key, alice); e != nil {
			t.Errorf("case %d, %s: served %q", i, tc.name, body(e))
		}
	}
}

func TestEmbeddedSetAfter(t *testing.T) {
	clk := newClock()
	c := newReplica(t, nil, Config{Now: clk.Now, RaceWindow: 2 * time.Second})
	testSetAfter(t, c, c, clk)
}

func TestRedisSetAfter(t *testing.T) {
	clk := newClock()
	a, b, _, _ := twoReplicas(t, clk)
	testSetAfter(t, a, b, clk)
}
