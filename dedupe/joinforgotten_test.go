package dedupe

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/ghlproxy/ghlproxy/internal/redistest"
	"github.com/ghlproxy/ghlproxy/internal/upstream"
)

// A read that begins after a write was acknowledged must not get the answer of a call of
// the same key that was already in flight when the write landed: GHL may have read the
// contact before the write. Reads waiting seconds for a token (a busy location) made such
// joins common. Callers already waiting still share that answer (they began before the
// write); a caller arriving after the Forget waits for the call to end and then leads a
// new one — on the replica leading the old call and on the others.
func TestReadAfterForgetDoesNotJoinCallFromBefore(t *testing.T) {
	for _, mode := range []string{"embedded", "redis, same replica", "redis, other replica"} {
		t.Run(mode, func(t *testing.T) {
			var a, b *Fold
			if mode == "embedded" {
				a, _ = newFold(t, testConfig(), nil)
				b = a
			} else {
				rdb := redisClient(t, redistest.Start(t))
				a, _ = newFold(t, testConfig(), rdb)
				b = a
				if mode == "redis, other replica" {
					b, _ = newFold(t, testConfig(), rdb)
				}
			}
			holds := [2]chan struct{}{make(chan struct{}), make(chan struct{})}
			started := make(chan struct{})
			var release sync.Once
			releaseAll := func() { release.Do(func() { close(holds[0]); close(holds[1]) }) }
			t.Cleanup(releaseAll) // registered after newFold's: runs before the Folds close
			var calls atomic.Int64
			fetch := func(ctx context.Context, at *Attempt) (*upstream.Response, error) {
				n := calls.Add(1)
				if n == 1 {
					close(started)
				}
				if n <= 2 {
					<-holds[n-1]
				}
				return &upstream.Response{Status: 200, Body: fmt.Appendf(nil, "answer %d", n)}, nil
			}
			callOf := func(f *Fold) *call {
				f.mu.Lock()
				defer f.mu.Unlock()
				return f.calls["k"]
			}
			read := Options{Key: &testKey, Tags: []string{"t1"}}
			ctx := context.Background()
			first := goDo(ctx, a, "k", read, fetch)
			<-started
			before := callOf(b) // nil on another replica
			if err := a.Forget(ctx, []string{"t1"}, ""); err != nil {
				t.Fatal(err)
			}
			if b != a {
				waitFor(t, "b to hear of the Forget", func() bool { return b.forgets.Load() > 0 })
			}
			after := goDo(ctx, b, "k", read, fetch)
			waitFor(t, "the later read in a call of its own", func() bool {
				c := callOf(b)
				return c != nil && c != before
			})
			releaseAll()
			if r := <-first; r.err != nil || string(r.resp.Body) != "answer 1" {
				t.Fatalf("the read from before the write: %v %v", r.out, r.err)
			}
			if r := <-after; r.err != nil || string(r.resp.Body) != "answer 2" {
				t.Fatalf("a read begun after the write got %q (%v %v), fetched before the write", r.resp.Body, r.out, r.err)
			}
		})
	}
}
