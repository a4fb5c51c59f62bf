package dedupe

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ghlproxy/ghlproxy/internal/upstream"
)

// The peer for the fold's hot path: a mutex-guarded map lookup, the least any in-process
// replay store can cost.
func BenchmarkPeerMutexMapLookup(b *testing.B) {
	var mu sync.Mutex
	m := map[string]*upstream.Response{"fp-0123456789abcdef": {Status: 200}}
	b.ReportAllocs()
	for b.Loop() {
		mu.Lock()
		r := m["fp-0123456789abcdef"]
		mu.Unlock()
		if r == nil {
			b.Fatal("miss")
		}
	}
}

// A local replay hit: what a retry within the window costs on the replica that has it.
func BenchmarkDoReplayLocal(b *testing.B) {
	f, _ := newFold(b, testConfig(), nil)
	resp := &upstream.Response{Status: 200, Body: []byte(`{"contact":{"id":"c-1"}}`)}
	fetch := func(context.Context, *Attempt) (*upstream.Response, error) { return resp, nil }
	ctx := context.Background()
	f.Do(ctx, "fp-0123456789abcdef", Options{Key: &testKey}, fetch)
	b.ReportAllocs()
	for b.Loop() {
		if _, out, _ := f.Do(ctx, "fp-0123456789abcdef", Options{Key: &testKey}, fetch); out != Replay {
			b.Fatal(out)
		}
	}
}

// A call that leads, in process: the fold's cost on a miss, beyond the upstream call.
func BenchmarkDoLeaderLocal(b *testing.B) {
	cfg := testConfig()
	cfg.LocalBytes = 1 << 20 // keep the store small: every key is new
	f, _ := newFold(b, cfg, nil)
	resp := &upstream.Response{Status: 200, Body: []byte(`{"contact":{"id":"c-1"}}`)}
	fetch := func(context.Context, *Attempt) (*upstream.Response, error) { return resp, nil }
	ctx := context.Background()
	keys := make([]string, 4096)
	for i := range keys {
		keys[i] = "fp-" + strconv.Itoa(i)
	}
	i := 0
	b.ReportAllocs()
	for b.Loop() {
		i++
		// Every key's answer is dropped before the key comes round again (negative window).
		if _, out, _ := f.Do(ctx, keys[i%len(keys)], Options{Key: &testKey, Window: -1}, fetch); out != Leader {
			b.Fatal(out)
		}
	}
}

// The clock read every replay hit needs to check the window; on some virtual machines it
// is most of the hit's cost.
func BenchmarkPeerTimeNow(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_ = time.Now()
	}
}
