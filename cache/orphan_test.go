package cache

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ghlproxy/ghlproxy/internal/poll"
	"github.com/ghlproxy/ghlproxy/internal/redistest"
)

// TestStoreWithLostReplyLeavesNoOrphan: the soak run found cache hits served for up to the
// TTL after a write had invalidated their contact, on entries stored while Redis answered
// past redis.timeout. The entry's SET was applied but its reply came too late, so Set gave
// up before indexing it under its tags, and no invalidation could ever reach it. Set now
// hands such an entry to a loop that deletes it once Redis answers again.
func TestStoreWithLostReplyLeavesNoOrphan(t *testing.T) {
	srv := redistest.Start(t)
	k := fp("GET /contacts/1 alice")
	ek := (keyspace{prefix: "ghlproxy"}).entry(k)
	px := redistest.StartStallProxy(t, srv.Addr(), ek)
	clk := newClock()
	c := newReplica(t, newClient(t, px.Addr()), Config{Now: clk.Now, RedisTimeout: 200 * time.Millisecond})
	alice := credOf("alice")
	// Scripts loaded (EVALSHA finds them) and a connection or two in the pool, as on a
	// replica that has been serving.
	mustSet(t, c, fp("warm-up"), alice, answer(`{}`, clk.Now()), Policy{TTL: time.Hour, Tags: []string{"s:contact:0"}})

	err := c.Set(context.Background(), k, alice, answer(`{"id":"1"}`, clk.Now()), Policy{TTL: time.Hour, Tags: []string{"s:contact:1"}})
	if err == nil {
		t.Fatal("a store whose reply never came: no error")
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("want a timeout, got %v", err)
	}
	// The scenario: Redis ran the SET (its reply is what got lost), and the entry is queued
	// for deletion until a DEL's reply comes back. The DEL itself reaches Redis even now.
	if stats, err := srv.Do("INFO", "commandstats"); err != nil || !strings.Contains(stats, "cmdstat_set:calls=2,") {
		t.Fatalf("Redis did not run the SET (%v): nothing to test\n%s", err, stats)
	}
	if !c.orphans.Any([]string{ek}) {
		t.Fatal("the entry whose store timed out was not queued for deletion")
	}
	px.Release()
	poll.Until(t, 10*time.Second, "the unindexed entry deleted", func() bool {
		n, err := srv.Do("EXISTS", ek)
		return err == nil && n == "0"
	})
	// The DEL ran in Redis while its reply was held back, so the entry can be gone before
	// the loop has a confirmed delete: the queue empties on its next try.
	poll.Until(t, 10*time.Second, "no orphan left queued once Redis confirms a delete", func() bool {
		return c.orphans.Len() == 0
	})
}

// TestInvalidateWithLostReplyIsRetried: an invalidation whose reply does not come back in
// time (Redis ran the first step; the caller saw a timeout) is retried until Redis confirms
// it, and meanwhile the replica does not take the invalidated entry from Redis. Before, the
// first step also emptied the index, so the entries it listed were out of reach for good.
func TestInvalidateWithLostReplyIsRetried(t *testing.T) {
	srv := redistest.Start(t)
	const tag = "s:contact:1"
	px := redistest.StartStallProxy(t, srv.Addr(), (keyspace{prefix: "ghlproxy"}).index(tagID(kindTag, tag)))
	clk := newClock()
	cfg := Config{Now: clk.Now, RedisTimeout: 200 * time.Millisecond}
	a := newReplica(t, newClient(t, px.Addr()), cfg) // behind the proxy
	b := newReplica(t, newClient(t, srv.Addr()), cfg)
	alice := credOf("alice")
	k := fp("GET /contacts/1 alice")
	ek := a.keys.entry(k)
	mustSet(t, b, k, alice, answer(`{"id":"1","v":1}`, clk.Now()), Policy{TTL: time.Hour, Tags: []string{tag}})

	if err := a.Invalidate(context.Background(), []string{tag}); err == nil {
		t.Fatal("an invalidation whose reply never came: no error")
	}
	if n, err := srv.Do("EXISTS", ek); err != nil || n != "1" {
		t.Fatalf("EXISTS entry = %q, %v: the invalidation went through after all, nothing to test", n, err)
	}
	if e := mustGet(t, a, k, alice); e != nil {
		t.Fatalf("the invalidating replica took the entry from Redis while its invalidation was pending: %q", body(e))
	}

	px.Release()
	poll.Until(t, 10*time.Second, "the invalidated entry deleted from Redis", func() bool {
		n, err := srv.Do("EXISTS", ek)
		return err == nil && n == "0"
	})
	poll.Until(t, 10*time.Second, "the other replica's copy dropped", func() bool {
		return mustGet(t, b, k, alice) == nil
	})
	// The other replica hears of the retried invalidation before the retry has noted its
	// own success.
	poll.Until(t, 10*time.Second, "no invalidation left pending once Redis confirmed", func() bool {
		return a.undropped.Len() == 0
	})
}
