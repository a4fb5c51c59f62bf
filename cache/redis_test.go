package cache

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ghlproxy/ghlproxy/internal/redistest"
)

// twoReplicas starts a Redis and two caches on it. The Redis timeout is generous: tests run
// under -race on a shared machine, and only the outage tests measure it.
func twoReplicas(t *testing.T, clk *clock) (a, b *replica, rdb *redis.Client, srv *redistest.Server) {
	return twoReplicasTimeout(t, clk, 2*time.Second)
}

func twoReplicasTimeout(t *testing.T, clk *clock, timeout time.Duration) (a, b *replica, rdb *redis.Client, srv *redistest.Server) {
	t.Helper()
	srv = redistest.Start(t)
	cfg := Config{Now: clk.Now, RedisTimeout: timeout}
	a = newReplica(t, newClient(t, srv.Addr()), cfg)
	b = newReplica(t, newClient(t, srv.Addr()), cfg)
	return a, b, newClient(t, srv.Addr()), srv
}

func TestReplicasShareEntries(t *testing.T) {
	clk := newClock()
	a, b, _, _ := twoReplicas(t, clk)
	alice, bob := credOf("alice"), credOf("bob")
	k := fp("GET /contacts/1 alice")
	mustSet(t, a, k, alice, answer(`{"id":"1"}`, clk.Now()), Policy{TTL: time.Minute, Tags: []string{"s:contact:1"}})

	if got := body(mustGet(t, b, k, alice)); got != `{"id":"1"}` {
		t.Fatalf("replica B: %s", got)
	}
	if st := b.Stats(); st.RedisHits != 1 || st.Entries != 1 {
		t.Fatalf("replica B after a Redis hit: %+v", st)
	}
	if got := body(mustGet(t, b, k, alice)); got != `{"id":"1"}` {
		t.Fatalf("replica B again: %s", got)
	}
	if st := b.Stats(); st.LocalHits != 1 || st.RedisHits != 1 {
		t.Fatalf("second get on B did not come from process memory: %+v", st)
	}
	if e := mustGet(t, b, k, bob); e != nil {
		t.Fatalf("another credential got %q", body(e))
	}
	if e := mustGet(t, a, k, bob); e != nil {
		t.Fatalf("another credential got %q from the writer's process memory", body(e))
	}
}

func TestInvalidateAcrossReplicas(t *testing.T) {
	clk := newClock()
	a, b, _, _ := twoReplicas(t, clk)
	ctx := context.Background()
	alice := credOf("alice")
	k := fp("GET /contacts/1 alice")
	mustSet(t, a, k, alice, answer("v1", clk.Now()), Policy{TTL: time.Minute, Tags: []string{"s:contact:1"}})
	mustGet(t, b, k, alice) // B now holds it in process
	mustGet(t, b, k, alice)
	if b.Stats().LocalHits != 1 {
		t.Fatal("B does not serve from process memory")
	}

	from := b.w.mark()
	if err := a.Invalidate(ctx, []string{"s:contact:1"}); err != nil {
		t.Fatal(err)
	}
	b.w.waitFor(t, from, b.cfg.CoherenceBound, "invalidation on B", func(e event) bool { return e.kind == msgIDs && e.replica == a.replica })
	if e := mustGet(t, b, k, alice); e != nil {
		t.Fatalf("B serves an invalidated entry: %q", body(e))
	}
	if e := mustGet(t, a, k, alice); e != nil {
		t.Fatalf("A serves an invalidated entry: %q", body(e))
	}
}

// A Redis that refuses the tombstones (maxmemory reached under noeviction) still takes the
// notice: the invalidation fails (and is retried), but the other replicas stop serving
// their in-process copies at once rather than until their coherence bound.
func TestFullRedisInvalidationStillNotifies(t *testing.T) {
	clk := newClock()
	a, b, _, srv := twoReplicas(t, clk)
	alice := credOf("alice")
	k := fp("GET /contacts/1 alice")
	mustSet(t, a, k, alice, answer("v1", clk.Now()), Policy{TTL: time.Minute, Tags: []string{"s:contact:1"}})
	mustGet(t, b, k, alice)
	mustGet(t, b, k, alice)
	if b.Stats().LocalHits != 1 {
		t.Fatal("B does not serve from process memory")
	}
	if _, err := srv.Do("CONFIG", "SET", "maxmemory", "1"); err != nil {
		t.Fatal(err)
	}
	from := b.w.mark()
	if err := a.Invalidate(context.Background(), []string{"s:contact:1"}); err == nil {
		t.Fatal("invalidation on a full Redis reported no error")
	}
	b.w.waitFor(t, from, b.cfg.CoherenceBound, "the notice on B", func(e event) bool { return e.kind == msgIDs && e.replica == a.replica })
	mustGet(t, b, k, alice)
	if n := b.Stats().LocalHits; n != 1 {
		t.Fatalf("B served its in-process copy after the notice (%d local hits)", n)
	}
}

func TestOverwriteAcrossReplicas(t *testing.T) {
	clk := newClock()
	a, b, _, _ := twoReplicas(t, clk)
	alice := credOf("alice")
	k := fp("GET /contacts/1 alice")
	p := Policy{TTL: time.Minute, Tags: []string{"s:contact:1"}}
	mustSet(t, a, k, alice, answer("v1", clk.Now()), p)
	mustGet(t, b, k, alice)

	from := b.w.mark()
	mustSet(t, a, k, alice, answer("v2", clk.Now()), p)
	b.w.waitFor(t, from, b.cfg.CoherenceBound, "overwrite on B", func(e event) bool { return e.kind == msgKeys && e.replica == a.replica })
	if got := body(mustGet(t, b, k, alice)); got != "v2" {
		t.Fatalf("B after an overwrite through A: %s", got)
	}
}

func TestRedisPurge(t *testing.T) {
	clk := newClock()
	a, b, _, _ := twoReplicas(t, clk)
	testPurge(t, a, b, clk)
}

func TestRedisWriteRace(t *testing.T) {
	clk := newClock()
	a, b, _, _ := twoReplicas(t, clk)
	testWriteRace(t, a, clk)
	// The refusal is Redis's decision, so it holds for a replica that did not invalidate.
	clk.Advance(5 * time.Second)
	read := clk.Now()
	if err := a.Invalidate(context.Background(), []string{"s:contact:77"}); err != nil {
		t.Fatal(err)
	}
	if err := b.Set(context.Background(), fp("race b"), credOf("bob"), answer("old", read), Policy{TTL: time.Minute, Tags: []string{"s:contact:77"}}); err != ErrInvalidated {
		t.Fatalf("set on B of an answer read before A's invalidation: %v", err)
	}
}

func TestRedisStaleWindows(t *testing.T) {
	clk := newClock()
	a, b, rdb, _ := twoReplicas(t, clk)
	alice := credOf("alice")
	k := fp("stale")
	start := clk.Now()
	mustSet(t, a, k, alice, answer("v", start), Policy{TTL: 10 * time.Second, StaleWhileRevalidate: 20 * time.Second, StaleIfError: time.Minute})
	ttl, err := rdb.PTTL(context.Background(), a.keys.entry(k)).Result()
	if err != nil {
		t.Fatal(err)
	}
	if ttl < 69*time.Second || ttl > 71*time.Second {
		t.Fatalf("redis TTL = %s, want TTL + longest stale window = 70s", ttl)
	}
	checkWindows(t, b, k, alice, clk, start)
}

// TestEncryptionAtRest scans everything the cache wrote to Redis for the body, the token and
// the ids, and checks that a sealed value opens only for its credential and its key.
func TestEncryptionAtRest(t *testing.T) {
	clk := newClock()
	a, b, rdb, _ := twoReplicas(t, clk)
	ctx := context.Background()
	const token = "tok-very-secret-4242"
	alice, mallory := credOf(token), credOf("mallory")
	secrets := []string{"alice@example.com", "Alice Wonder", token, "contact-ve9EPM428h", "/contacts/{contactId}", "loc-XYZ123"}
	k := fp("GET /contacts/contact-ve9EPM428h")
	mustSet(t, a, k, alice, answer(`{"contact":{"id":"contact-ve9EPM428h","email":"alice@example.com","name":"Alice Wonder"}}`, clk.Now()),
		Policy{TTL: time.Minute, Route: "/contacts/{contactId}", Tags: []string{"loc-XYZ123:contact:contact-ve9EPM428h", "loc-XYZ123:contacts"}})

	keys, err := rdb.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) < 4 {
		t.Fatalf("keys = %v, want the entry and its indexes", keys)
	}
	var dump bytes.Buffer
	for _, key := range keys {
		dump.WriteString(key + "\n")
		switch typ := rdb.Type(ctx, key).Val(); typ {
		case "string":
			dump.WriteString(rdb.Get(ctx, key).Val())
		case "zset":
			dump.WriteString(strings.Join(rdb.ZRange(ctx, key, 0, -1).Val(), "\n"))
		default:
			t.Fatalf("unexpected %s at %s", typ, key)
		}
	}
	for _, s := range secrets {
		if bytes.Contains(dump.Bytes(), []byte(s)) {
			t.Errorf("Redis holds %q in plain text", s)
		}
	}
	if bytes.Contains(dump.Bytes(), alice.EncKey[:]) {
		t.Error("Redis holds the encryption key")
	}

	if e := mustGet(t, b, k, mallory); e != nil {
		t.Fatalf("another credential read the entry: %q", body(e))
	}
	sealed, err := rdb.Get(ctx, a.keys.entry(k)).Bytes()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := open(&mallory.EncKey, k, sealed); err == nil {
		t.Fatal("the value opens with another credential's key")
	}
	if _, err := open(&alice.EncKey, k, sealed); err != nil {
		t.Fatalf("the value does not open with its own key: %v", err)
	}
	// Moved under another fingerprint of the same credential, the value does not open.
	other := fp("GET /contacts/other")
	if err := rdb.Set(ctx, a.keys.entry(other), sealed, time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	if e := mustGet(t, b, other, alice); e != nil {
		t.Fatalf("a value moved to another key was served: %q", body(e))
	}
}

// TestRedisDown: with Redis gone, calls fail within RedisTimeout, and in-process entries are
// served until the heartbeat lease runs out, never after.
func TestRedisDown(t *testing.T) {
	clk := newClock()
	a, _, _, srv := twoReplicasTimeout(t, clk, 200*time.Millisecond)
	ctx := context.Background()
	alice := credOf("alice")
	k := fp("hot")
	mustSet(t, a, k, alice, answer("hot", clk.Now()), Policy{TTL: time.Hour})

	srv.Stop()
	if got := body(mustGet(t, a, k, alice)); got != "hot" {
		t.Fatalf("in-process entry within the bound: %s", got)
	}
	for name, call := range map[string]func() error{
		"get":        func() error { _, err := a.Get(ctx, fp("cold"), alice); return err },
		"set":        func() error { return a.Set(ctx, fp("cold"), alice, answer("x", clk.Now()), Policy{TTL: time.Hour}) },
		"invalidate": func() error { return a.Invalidate(ctx, []string{"t"}) },
	} {
		start := time.Now()
		err := call()
		if err == nil {
			t.Fatalf("%s with Redis down: no error", name)
		}
		if d := time.Since(start); d > 2*a.cfg.RedisTimeout {
			t.Fatalf("%s with Redis down took %s, RedisTimeout %s", name, d, a.cfg.RedisTimeout)
		}
	}
	if a.Stats().RedisUp {
		t.Fatal("stats report Redis up")
	}
	clk.Advance(a.cfg.CoherenceBound + time.Millisecond)
	if a.Stats().Coherent {
		t.Fatal("still coherent past the bound with no heartbeat")
	}
	if e, err := a.Get(ctx, k, alice); err == nil || e != nil {
		t.Fatalf("past the bound: entry %q, err %v; want no in-process answer and an error", body(e), err)
	}

	// Back: the replica resubscribes, clears what it held and serves again.
	from := a.w.mark()
	srv.Restart()
	a.w.waitFor(t, from, 10*time.Second, "resubscription", func(e event) bool { return e.kind == "subscribed" })
	a.waitCoherent(t)
	if a.Stats().Entries != 0 {
		t.Fatal("in-process layer kept entries across a lost subscription")
	}
	mustSet(t, a, k, alice, answer("hot2", clk.Now()), Policy{TTL: time.Hour})
	if got := body(mustGet(t, a, k, alice)); got != "hot2" {
		t.Fatalf("after restart: %s", got)
	}
}

// TestRedisHung: a Redis that accepts connections but does not answer costs RedisTimeout.
func TestRedisHung(t *testing.T) {
	clk := newClock()
	a, _, _, srv := twoReplicasTimeout(t, clk, 200*time.Millisecond)
	if _, err := srv.Do("CLIENT", "PAUSE", "1500", "ALL"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := a.Get(context.Background(), fp("cold"), credOf("alice"))
	if err == nil {
		t.Fatal("get from a paused Redis: no error")
	}
	if d := time.Since(start); d > 2*a.cfg.RedisTimeout {
		t.Fatalf("get from a paused Redis took %s, RedisTimeout %s", d, a.cfg.RedisTimeout)
	}
}

func TestCluster(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	clk := newClock()
	client := func() *redis.ClusterClient {
		c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs(), ContextTimeoutEnabled: true})
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	cfg := Config{Now: clk.Now, RedisTimeout: time.Second}
	a := newReplica(t, client(), cfg)
	b := newReplica(t, client(), cfg)
	ctx := context.Background()
	alice := credOf("alice")

	// Many keys so that entries and indexes land on every node.
	for i := range 30 {
		k := fp("cluster" + string(rune('a'+i)))
		mustSet(t, a, k, alice, answer("v", clk.Now()), Policy{TTL: time.Minute, Tags: []string{"s:contacts", "s:contact:" + string(rune('a'+i))}, Route: "/contacts/{contactId}"})
		if got := body(mustGet(t, b, k, alice)); got != "v" {
			t.Fatalf("cluster get on B: %s", got)
		}
	}
	from := b.w.mark()
	if err := a.Invalidate(ctx, []string{"s:contacts"}); err != nil {
		t.Fatal(err)
	}
	b.w.waitFor(t, from, b.cfg.CoherenceBound, "cluster invalidation on B", func(e event) bool { return e.kind == msgIDs })
	for i := range 30 {
		if e := mustGet(t, b, fp("cluster"+string(rune('a'+i))), alice); e != nil {
			t.Fatalf("cluster: invalidated entry %d served", i)
		}
	}
	testPurge(t, a, b, clk)
}

// TestSilentSubscription: a Redis that stops answering without closing the connection (as
// one lost from the network does) makes in-process entries unservable within the bound, gets
// the subscription replaced once it has been silent, and the replica clears its in-process
// layer when it subscribes again.
func TestSilentSubscription(t *testing.T) {
	srv := redistest.Start(t)
	a := newReplica(t, newClient(t, srv.Addr()), Config{CoherenceBound: 100 * time.Millisecond, RedisTimeout: 2 * time.Second})
	alice := credOf("alice")
	k := fp("hot")
	mustSet(t, a, k, alice, answer("hot", time.Now()), Policy{TTL: time.Hour})
	if a.Stats().Entries != 1 || !a.Stats().Coherent {
		t.Fatalf("before: %+v", a.Stats())
	}
	from := a.w.mark()
	if _, err := srv.Do("CLIENT", "PAUSE", "1500", "ALL"); err != nil {
		t.Fatal(err)
	}
	a.w.waitFor(t, from, 3*time.Second, "replaced subscription", func(e event) bool { return e.kind == "replaced" })
	if a.Stats().Coherent {
		t.Fatal("coherent after the subscription was silent for 4 bounds")
	}
	a.w.waitFor(t, from, 10*time.Second, "resubscription", func(e event) bool { return e.kind == "subscribed" })
	a.waitCoherent(t)
	if n := a.Stats().Entries; n != 0 {
		t.Fatalf("in-process layer kept %d entries across a replaced subscription", n)
	}
	if got := body(mustGet(t, a, k, alice)); got != "hot" {
		t.Fatalf("from Redis after the pause: %s", got)
	}
}

// TestPeekHasNoSideEffects: /_ghlproxy/explain looks an entry up through Peek, which must
// not count as a hit or miss nor copy the entry into the in-process layer.
func TestPeekHasNoSideEffects(t *testing.T) {
	srv := redistest.Start(t)
	clk := newClock()
	a := newReplica(t, newClient(t, srv.Addr()), Config{Now: clk.Now})
	b := newReplica(t, newClient(t, srv.Addr()), Config{Now: clk.Now})
	alice := credOf("alice")
	k := fp("GET /contacts/5 alice")
	mustSet(t, b, k, alice, answer(`{"id":"5"}`, clk.Now()), Policy{TTL: time.Minute, Tags: []string{"s:contact:5"}})

	e, err := a.Peek(context.Background(), k, alice)
	if err != nil || e == nil || body(e) != `{"id":"5"}` {
		t.Fatalf("Peek = %v, %v", e, err)
	}
	if _, err := a.Peek(context.Background(), fp("nothing there"), alice); err != nil {
		t.Fatal(err)
	}
	if st := a.Stats(); st.LocalHits != 0 || st.RedisHits != 0 || st.Misses != 0 || st.Entries != 0 {
		t.Fatalf("after two Peeks: %+v, want nothing counted or copied", st)
	}
	mustGet(t, a, k, alice)
	if st := a.Stats(); st.RedisHits != 1 || st.LocalHits != 0 {
		t.Fatalf("the first Get after a Peek: %+v, want a Redis hit", st)
	}
}
