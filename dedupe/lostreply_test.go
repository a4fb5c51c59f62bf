package dedupe

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ghlproxy/ghlproxy/internal/redistest"
	"github.com/ghlproxy/ghlproxy/internal/upstream"
)

// TestForgetWithLostReplyIsRetried: a write's Forget whose Redis reply does not come back in
// time (as under the mixed benchmark's 2,500 clients, where the Redis store alone had stale
// reads). Before, Forget logged the error and gave up — and its first step had already
// emptied the tag's index in Redis, so the replays it listed stayed for the whole window on
// every replica. Now the index is kept, the Forget is retried until Redis confirms it, and
// the replica that made the write does not take replays of those tags from Redis meanwhile.
func TestForgetWithLostReplyIsRetried(t *testing.T) {
	s := redistest.Start(t)
	const tag = "scope:contact:1"
	var a *Fold // behind the proxy: its Forget's replies are held back
	b, _ := newFold(t, testConfig(), redisClient(t, s))
	px := redistest.StartStallProxy(t, s.Addr(), b.tagKey(tag))
	rdbA := redis.NewClient(&redis.Options{Addr: px.Addr(), ReadTimeout: 200 * time.Millisecond, ContextTimeoutEnabled: true})
	t.Cleanup(func() { rdbA.Close() })
	a, _ = newFold(t, testConfig(), rdbA)

	var calls atomic.Int64
	fetch := func(context.Context, *Attempt) (*upstream.Response, error) {
		return &upstream.Response{Status: 200, Body: fmt.Appendf(nil, "answer %d", calls.Add(1))}, nil
	}
	read := Options{Key: &testKey, Tags: []string{tag}}
	ctx := context.Background()
	if r, out, err := b.Do(ctx, "get-contact-1", read, fetch); err != nil || out != Leader || string(r.Body) != "answer 1" {
		t.Fatalf("first read on b: %v %v", out, err)
	}

	if err := a.Forget(ctx, []string{tag}, ""); err == nil {
		t.Fatal("a Forget whose reply never came: no error")
	}
	// The replica that made the write never replays what it could not invalidate.
	if r, out, err := a.Do(ctx, "get-contact-1", read, fetch); err != nil || out == Replay {
		t.Fatalf("a replayed %q from Redis while its Forget was unconfirmed (%v %v)", r.Body, out, err)
	}

	px.Release()
	// The retry tombstones the record in Redis and tells b to drop its in-process copy.
	waitFor(t, "no Forget left pending once Redis confirmed", func() bool { return a.unforgot.Len() == 0 })
	waitFor(t, "b's replay of the read from before the write dropped", func() bool { return !localReplay(b, "get-contact-1") })
	r, out, err := b.Do(ctx, "get-contact-1", read, fetch)
	if err != nil || out == Replay {
		t.Fatalf("after the retried Forget, b replayed %q (%v %v)", r.Body, out, err)
	}
}

// TestUnindexedReadIsNotReplayed: a read whose index entry Redis did not confirm is out of
// reach of a later Forget, so its answer goes to the callers of that call only.
func TestUnindexedReadIsNotReplayed(t *testing.T) {
	s := redistest.Start(t)
	const tag = "scope:contact:2"
	probe, _ := newFold(t, testConfig(), redisClient(t, s))
	px := redistest.StartStallProxy(t, s.Addr(), probe.tagKey(tag))
	rdb := redis.NewClient(&redis.Options{Addr: px.Addr(), ReadTimeout: 200 * time.Millisecond, ContextTimeoutEnabled: true})
	t.Cleanup(func() { rdb.Close() })
	a, _ := newFold(t, testConfig(), rdb)
	var calls atomic.Int64
	fetch := func(context.Context, *Attempt) (*upstream.Response, error) {
		return &upstream.Response{Status: 200, Body: fmt.Appendf(nil, "answer %d", calls.Add(1))}, nil
	}
	read := Options{Key: &testKey, Tags: []string{tag}}
	if _, out, err := a.Do(context.Background(), "get-contact-2", read, fetch); err != nil || out != Leader {
		t.Fatalf("first read: %v %v", out, err)
	}
	px.Release()
	if r, out, err := probe.Do(context.Background(), "get-contact-2", read, fetch); err != nil || out == Replay {
		t.Fatalf("another replica replayed %q, an answer no Forget could reach (%v %v)", r.Body, out, err)
	}
	if localReplay(a, "get-contact-2") {
		t.Fatal("the leader kept an answer no Forget could reach")
	}
}

// The acquire script run twice with one token (its first reply lost, the command sent again
// on a new connection, as go-redis does after a read timeout) makes the call the leader
// the second time too, instead of a waiter on its own marker for a whole lease.
func TestAcquireAgainFindsOwnMarker(t *testing.T) {
	s := redistest.Start(t)
	f, _ := newFold(t, testConfig(), redisClient(t, s))
	k := f.keysOf("create-1")
	keys := []string{k.lock, k.sent, k.result, k.forgot, f.tagKey("t")}
	const tok = "0123456789abcdef"
	for i := range 2 {
		res, err := f.scripts.acquire.Run(context.Background(), f.rdb, keys, tok, 1000, "1", "", "create-1", 5000).Slice()
		if err != nil || len(res) == 0 || res[0] != int64(0) {
			t.Fatalf("acquire %d: %v %v, want leader {0}", i+1, res, err)
		}
	}
	// Another call of the key still waits for it.
	res, err := f.scripts.acquire.Run(context.Background(), f.rdb, keys, "fedcba9876543210", 1000, "1", "", "create-1", 5000).Slice()
	if err != nil || len(res) == 0 || res[0] != int64(2) {
		t.Fatalf("another call's acquire: %v %v, want {2, marker}", res, err)
	}
}
