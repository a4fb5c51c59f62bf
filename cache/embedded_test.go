package cache

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ghlproxy/ghlproxy/internal/identity"
)

func TestEmbeddedSetGetInvalidate(t *testing.T) {
	clk := newClock()
	c := newReplica(t, nil, Config{Now: clk.Now})
	alice, bob := credOf("alice"), credOf("bob")
	k := fp("GET /contacts/1 alice")
	p := Policy{TTL: time.Minute, Tags: []string{"s1:contact:1", "s1:contacts"}, Route: "/contacts/{contactId}"}

	if e := mustGet(t, c, k, alice); e != nil {
		t.Fatalf("empty store answered %q", body(e))
	}
	mustSet(t, c, k, alice, answer(`{"contact":{"id":"1"}}`, clk.Now()), p)
	if got := body(mustGet(t, c, k, alice)); got != `{"contact":{"id":"1"}}` {
		t.Fatalf("get after set = %s", got)
	}
	if e := mustGet(t, c, k, bob); e != nil {
		t.Fatalf("another credential got %q for the same key", body(e))
	}
	if err := c.Invalidate(context.Background(), []string{"s1:contacts"}); err != nil {
		t.Fatal(err)
	}
	if e := mustGet(t, c, k, alice); e != nil {
		t.Fatalf("invalidated entry still served: %q", body(e))
	}
	st := c.Stats()
	if st.LocalHits != 1 || st.Misses != 3 || st.Entries != 0 {
		t.Fatalf("stats = %+v", st)
	}
}

func TestStaleWindows(t *testing.T) {
	clk := newClock()
	c := newReplica(t, nil, Config{Now: clk.Now})
	alice := credOf("alice")
	k := fp("stale")
	start := clk.Now()
	mustSet(t, c, k, alice, answer("v", start), Policy{TTL: 10 * time.Second, StaleWhileRevalidate: 20 * time.Second, StaleIfError: time.Minute})
	checkWindows(t, c, k, alice, clk, start)
}

// checkWindows walks the fake clock through an entry stored at start with TTL 10 s, SWR 20 s
// and SIE 60 s.
func checkWindows(t *testing.T, c *replica, k string, cred *identity.Credential, clk *clock, start time.Time) {
	t.Helper()
	steps := []struct {
		at         time.Duration
		hit, fresh bool
		swr, ifErr bool
	}{
		{5 * time.Second, true, true, true, true},
		{15 * time.Second, true, false, true, true},
		{45 * time.Second, true, false, false, true},
		{70 * time.Second, false, false, false, false},
	}
	for _, s := range steps {
		clk.Advance(start.Add(s.at).Sub(clk.Now()))
		now := clk.Now()
		e := mustGet(t, c, k, cred)
		if (e != nil) != s.hit {
			t.Fatalf("at +%s: hit=%v, want %v", s.at, e != nil, s.hit)
		}
		if e == nil {
			continue
		}
		if e.Fresh(now) != s.fresh || now.Before(e.StaleWhileRevalidate) != s.swr || now.Before(e.StaleIfError) != s.ifErr {
			t.Fatalf("at +%s: fresh=%v swr=%v sie=%v, want %v %v %v", s.at, e.Fresh(now), now.Before(e.StaleWhileRevalidate),
				now.Before(e.StaleIfError), s.fresh, s.swr, s.ifErr)
		}
		if !e.Stored.Equal(start) {
			t.Fatalf("stored = %s, want %s", e.Stored, start)
		}
	}
}

func TestEmbeddedMemoryBound(t *testing.T) {
	clk := newClock()
	const bound = 64 << 10
	c := newReplica(t, nil, Config{Now: clk.Now, MemoryBytes: bound})
	alice := credOf("alice")
	big := strings.Repeat("x", 4<<10)
	for i := range 200 {
		mustSet(t, c, fp("k"+string(rune('a'+i%26))+string(rune('a'+i/26))), alice, answer(big, clk.Now()), Policy{TTL: time.Hour})
	}
	c.local.c.CleanUp()
	st := c.Stats()
	if st.Bytes > bound || st.Bytes < bound/2 {
		t.Fatalf("bytes = %d, want within (%d/2, %d]", st.Bytes, bound, bound)
	}
	if st.Evictions < 150 {
		t.Fatalf("evictions = %d after 200 entries of 4 KiB in 64 KiB", st.Evictions)
	}
	if got := testutil.ToFloat64(c.m.CacheEvictions); got != float64(st.Evictions) {
		t.Fatalf("cache_evictions_total = %v, stats say %d", got, st.Evictions)
	}
	if got := testutil.ToFloat64(c.m.CacheBytes); got != float64(st.Bytes) {
		t.Fatalf("cache_bytes = %v, stats say %d", got, st.Bytes)
	}
	if got := testutil.ToFloat64(c.m.CacheEntries); got != float64(st.Entries) || st.Entries == 0 {
		t.Fatalf("cache_entries = %v, stats say %d", got, st.Entries)
	}
}

func TestEmbeddedPurge(t *testing.T) {
	clk := newClock()
	c := newReplica(t, nil, Config{Now: clk.Now})
	testPurge(t, c, c, clk)
}

// testPurge stores entries through a and checks each kind of purge through a, as seen by b.
func testPurge(t *testing.T, a, b *replica, clk *clock) {
	t.Helper()
	ctx := context.Background()
	alice, bob := credOf("alice"), credOf("bob")
	set := func() {
		for _, cr := range []string{"alice", "bob"} {
			cred := credOf(cr)
			mustSet(t, a, fp(cr+"c1"), cred, answer(cr+" contact 1", clk.Now()), Policy{TTL: time.Minute, Route: "/contacts/{contactId}", Tags: []string{"s:contact:1"}})
			mustSet(t, a, fp(cr+"c2"), cred, answer(cr+" contact 2", clk.Now()), Policy{TTL: time.Minute, Route: "/contacts/{contactId}", Tags: []string{"s:contact:2"}})
			mustSet(t, a, fp(cr+"s"), cred, answer(cr+" search", clk.Now()), Policy{TTL: time.Minute, Route: "/contacts/search", Tags: []string{"s:contacts"}})
		}
	}
	// Stores after a purge must not be refused as racing with it.
	later := func() { clk.Advance(a.cfg.RaceWindow + time.Second) }
	present := func(cr, k string) bool {
		t.Helper()
		return mustGet(t, b, fp(cr+k), credOf(cr)) != nil
	}
	cases := []struct {
		name string
		sel  Selector
		n    int
		gone []string // cred+key
	}{
		{"route", Selector{Route: "/contacts/{contactId}"}, 4, []string{"alicec1", "alicec2", "bobc1", "bobc2"}},
		{"tag", Selector{Tag: "s:contact:2"}, 2, []string{"alicec2", "bobc2"}},
		{"credential", Selector{CredHash: bob.Hash}, 3, []string{"bobc1", "bobc2", "bobs"}},
		{"all", Selector{All: true}, 6, []string{"alicec1", "alicec2", "alices", "bobc1", "bobc2", "bobs"}},
	}
	_ = alice
	for _, tc := range cases {
		later()
		set()
		for _, cr := range []string{"alice", "bob"} {
			for _, k := range []string{"c1", "c2", "s"} {
				if !present(cr, k) {
					t.Fatalf("%s: %s%s missing before the purge", tc.name, cr, k)
				}
			}
		}
		from := b.w.mark()
		n, err := a.Purge(ctx, tc.sel)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if n != tc.n {
			t.Fatalf("%s: purged %d, want %d", tc.name, n, tc.n)
		}
		if a != b {
			b.w.waitFor(t, from, a.cfg.CoherenceBound, tc.name+" purge message", func(e event) bool { return e.replica == a.replica })
		}
		gone := map[string]bool{}
		for _, g := range tc.gone {
			gone[g] = true
		}
		for _, cr := range []string{"alice", "bob"} {
			for _, k := range []string{"c1", "c2", "s"} {
				if present(cr, k) == gone[cr+k] {
					t.Fatalf("%s: %s%s present=%v after the purge", tc.name, cr, k, !gone[cr+k])
				}
			}
		}
	}
	if _, err := a.Purge(ctx, Selector{}); err == nil {
		t.Fatal("empty selector accepted")
	}
	if _, err := a.Purge(ctx, Selector{Route: "x", Tag: "y"}); err == nil {
		t.Fatal("two selectors accepted")
	}
}

// TestWriteRace: an answer GHL gave before a write, stored after the write's invalidation,
// is refused; one fetched well after is stored.
func TestEmbeddedWriteRace(t *testing.T) {
	clk := newClock()
	c := newReplica(t, nil, Config{Now: clk.Now, RaceWindow: 2 * time.Second})
	testWriteRace(t, c, clk)
}

func testWriteRace(t *testing.T, c *replica, clk *clock) {
	t.Helper()
	ctx := context.Background()
	alice := credOf("alice")
	k := fp("race")
	p := Policy{TTL: time.Minute, Tags: []string{"s:contact:9"}}
	read := clk.Now()
	clk.Advance(500 * time.Millisecond)
	if err := c.Invalidate(ctx, []string{"s:contact:9"}); err != nil {
		t.Fatal(err)
	}
	clk.Advance(100 * time.Millisecond)
	if err := c.Set(ctx, k, alice, answer("old", read), p); !errors.Is(err, ErrInvalidated) {
		t.Fatalf("set of an answer read before the invalidation: err = %v, want ErrInvalidated", err)
	}
	if e := mustGet(t, c, k, alice); e != nil {
		t.Fatalf("refused answer served: %q", body(e))
	}
	// Other tags are not affected.
	mustSet(t, c, fp("other"), alice, answer("other", read), Policy{TTL: time.Minute, Tags: []string{"s:contact:10"}})
	// A slow read: sent before the write, answered well past the race window after it.
	// GHL may have read the contact at any time after the request left.
	slow := answer("slow", clk.Now().Add(5*time.Second))
	slow.Sent = read
	clk.Advance(5 * time.Second)
	if err := c.Set(ctx, k, alice, slow, p); !errors.Is(err, ErrInvalidated) {
		t.Fatalf("set of a slow answer sent before the invalidation: err = %v, want ErrInvalidated", err)
	}
	mustSet(t, c, k, alice, answer("new", clk.Now()), p)
	if got := body(mustGet(t, c, k, alice)); got != "new" {
		t.Fatalf("get = %s, want new", got)
	}
}
