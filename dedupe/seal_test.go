package dedupe

import (
	"context"
	"strings"
	"testing"

	"github.com/ghlproxy/ghlproxy/internal/redistest"
)

// TestRecordsSealedInRedis: with Options.Key, what a call leaves in Redis does not show its
// answer, and another replica holding the same key replays it intact.
func TestRecordsSealedInRedis(t *testing.T) {
	s := redistest.Start(t)
	rdb := redisClient(t, s)
	g := newGHL(t)
	a, _ := newFold(t, testConfig(), rdb)
	b, _ := newFold(t, testConfig(), redisClient(t, s))
	var key [32]byte
	key[0] = 42
	o := Options{Write: true, SentByFetch: true, Key: &key}
	ctx := context.Background()

	first, out, err := a.Do(ctx, "sealed-key", o, g.create)
	if err != nil || out != Leader {
		t.Fatalf("leader: %v %v", out, err)
	}
	keys, err := rdb.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, k := range keys {
		v, err := rdb.Get(ctx, k).Result()
		if err != nil {
			continue // sets and other types hold no answers
		}
		if strings.Contains(k, ":result") {
			found = true
		}
		if strings.Contains(v, `"contact"`) || strings.Contains(v, "c-1") {
			t.Fatalf("Redis key %s holds the answer in the clear: %q", k, v)
		}
	}
	if !found {
		t.Fatalf("no :result record in Redis (keys %v): the test checked nothing", keys)
	}
	replay, out, err := b.Do(ctx, "sealed-key", o, g.create)
	if err != nil || out != Replay || string(replay.Body) != string(first.Body) {
		t.Fatalf("replay on another replica = %v %q, %v; want replay of %q", out, replay.Body, err, first.Body)
	}
	if n := g.creates.Load(); n != 1 {
		t.Fatalf("upstream saw %d creates, want 1", n)
	}
}
