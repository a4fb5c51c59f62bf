package dedupe

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/ghlproxy/ghlproxy/internal/luapipe"
	"github.com/ghlproxy/ghlproxy/internal/redistest"
	"github.com/ghlproxy/ghlproxy/internal/upstream"
)

// leaderThenWaiter starts a call of key on a and, once its fetch has begun (started), the
// same call on b; it returns when b's call has found a's marker in Redis, so that the fetch
// decides when both answer.
func leaderThenWaiter(t *testing.T, a, b *Fold, key string, o Options, fetch Fetch, started <-chan struct{}) (leader, waiter <-chan result) {
	t.Helper()
	leader = goDo(context.Background(), a, key, o, fetch)
	<-started
	waiter = goDo(context.Background(), b, key, o, fetch)
	waitFor(t, "the waiter", func() bool { return inFlight(b, key) })
	waitLooked(t, b, key)
	return leader, waiter
}

// held stands in for the cache a fetch stores its answer in: what FromCache finds.
type held struct {
	mu      sync.Mutex
	resp    map[string]*upstream.Response
	dropped bool // an invalidation emptied it: FromCache finds nothing
	loads   atomic.Int64
}

func (h *held) fromCache(key string) func(context.Context) (*upstream.Response, bool) {
	return func(context.Context) (*upstream.Response, bool) {
		h.loads.Add(1)
		h.mu.Lock()
		defer h.mu.Unlock()
		r, ok := h.resp[key]
		return r, ok && !h.dropped
	}
}

// An answer the cache took (Attempt.Cached) is stored once, by the cache: the fold's record
// in Redis names the call and holds no answer, the fold keeps no copy in process, a waiter on
// another replica takes the answer from the cache, and a later identical call is the cache's
// to answer, not the fold's to replay. When the cache no longer holds it, the waiter makes
// the call itself.
func TestCachedAnswerIsStoredOnce(t *testing.T) {
	s := redistest.Start(t)
	rdb := redisClient(t, s)
	a, _ := newFold(t, testConfig(), rdb)
	b, _ := newFold(t, testConfig(), rdb)
	cache := &held{resp: map[string]*upstream.Response{}}
	const key = "k"
	var calls atomic.Int64
	var hold chan struct{}
	started := make(chan struct{}, 4)
	fetch := func(ctx context.Context, at *Attempt) (*upstream.Response, error) {
		n := calls.Add(1)
		started <- struct{}{}
		<-hold
		r := &upstream.Response{Status: 200, Body: fmt.Appendf(nil, "answer %d", n)}
		cache.mu.Lock()
		cache.resp[key] = r
		cache.mu.Unlock()
		at.Cached()
		return r, nil
	}
	o := Options{Key: &testKey, Tags: []string{"t1"}, FromCache: cache.fromCache(key)}

	hold = make(chan struct{})
	leader, waiter := leaderThenWaiter(t, a, b, key, o, fetch, started)
	close(hold)
	if r := <-leader; r.err != nil || r.out != Leader || string(r.resp.Body) != "answer 1" {
		t.Fatalf("leader: %v %v", r.out, r.err)
	}
	if r := <-waiter; r.err != nil || r.out != Shared || string(r.resp.Body) != "answer 1" {
		t.Fatalf("waiter on the other replica: %v %v, want the leader's answer, shared", r.out, r.err)
	}
	if n := cache.loads.Load(); n != 1 {
		t.Fatalf("the waiter loaded from the cache %d times, want 1", n)
	}
	rec, err := s.Do("GET", "ghlproxy:{fold:"+key+"}:result")
	if err != nil {
		t.Fatal(err)
	}
	if len(rec) != 1+tokenLen || rec[0] != recCached {
		t.Fatalf("the fold's record is %q (%d bytes), want %q and the leader's token: no answer", rec, len(rec), string(rune(recCached)))
	}
	if localReplay(a, key) || localReplay(b, key) {
		t.Fatal("a replica keeps a copy of an answer the cache holds")
	}

	// A later identical call is not replayed by the fold: the proxy looks in the cache
	// first, and here, with no cache in front, the call goes upstream again.
	hold = make(chan struct{})
	close(hold)
	if r, out, err := b.Do(context.Background(), key, o, fetch); err != nil || out != Leader || string(r.Body) != "answer 2" {
		t.Fatalf("later call: %v %v, want a call of its own", out, err)
	}
	<-started

	// The cache lost the answer (an invalidation) before the waiter loaded it: the waiter
	// makes the call itself rather than fail or wait.
	hold = make(chan struct{})
	leader, waiter = leaderThenWaiter(t, a, b, key, o, fetch, started)
	cache.mu.Lock()
	cache.dropped = true
	cache.mu.Unlock()
	close(hold)
	if r := <-leader; r.err != nil || r.out != Leader || string(r.resp.Body) != "answer 3" {
		t.Fatalf("leader: %v %v", r.out, r.err)
	}
	if r := <-waiter; r.err != nil || r.out != Leader || string(r.resp.Body) != "answer 4" {
		t.Fatalf("waiter whose answer the cache lost: %v %v, want a call of its own", r.out, r.err)
	}
}

// Without Redis an answer the cache took is shared with the callers of its call and not kept
// for replay either.
func TestCachedAnswerEmbedded(t *testing.T) {
	f, _ := newFold(t, testConfig(), nil)
	var calls atomic.Int64
	fetch := func(ctx context.Context, at *Attempt) (*upstream.Response, error) {
		calls.Add(1)
		at.Cached()
		return &upstream.Response{Status: 200, Body: []byte("answer")}, nil
	}
	for i := range 2 {
		if _, out, err := f.Do(context.Background(), "k", Options{}, fetch); err != nil || out != Leader {
			t.Fatalf("call %d: %v %v", i, out, err)
		}
		if localReplay(f, "k") {
			t.Fatalf("call %d: the fold keeps a copy of an answer the cache holds", i)
		}
	}
	if n := calls.Load(); n != 2 {
		t.Fatalf("%d fetches, want 2: the fold replays nothing the cache holds", n)
	}
}

// finishes counts the fold finishes a client sends: scripts run on a call's :result key
// (the lease renewals a leader sends meanwhile run on its lock alone), a script Redis does
// not have cached twice (EVALSHA, then EVAL).
type finishes struct{ n atomic.Int64 }

func (s *finishes) DialHook(next redis.DialHook) redis.DialHook { return next }
func (s *finishes) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if name := cmd.Name(); name == "evalsha" || name == "eval" {
			for _, a := range cmd.Args() {
				if k, ok := a.(string); ok && strings.HasSuffix(k, ":result") {
					s.n.Add(1)
					break
				}
			}
		}
		return next(ctx, cmd)
	}
}
func (s *finishes) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// The cache's store runs the fold's finish of a read as a step of its own run
// (Attempt.FinishStep): the waiter on another replica gets the leader's answer from the
// cache, and the leader sends no finish of its own. When that run fails (its reply may have
// been lost after it ran), the leader finishes the call itself and its answer is shared with
// the waiters but never replayed.
func TestFinishStepInTheStoresRun(t *testing.T) {
	s := redistest.Start(t)
	rdbA, rdbB := redisClient(t, s), redisClient(t, s)
	fin := &finishes{}
	rdbA.(*redis.Client).AddHook(fin)
	a, _ := newFold(t, testConfig(), rdbA)
	b, _ := newFold(t, testConfig(), rdbB)
	cache := &held{resp: map[string]*upstream.Response{}}
	const key = "k"
	o := Options{Key: &testKey, Tags: []string{"t1"}, FromCache: cache.fromCache(key)}
	for _, failed := range []bool{false, true} {
		hold, started := make(chan struct{}), make(chan struct{})
		var finishesAtStore int64
		fetch := func(ctx context.Context, at *Attempt) (*upstream.Response, error) {
			close(started)
			<-hold
			r := &upstream.Response{Status: 200, Body: fmt.Appendf(nil, "answer failed=%v", failed)}
			// The cache's store: its step, then the fold's finish, in one run.
			body := "redis.call('SET', KEYS[1], ARGV[1]); return 1"
			if failed {
				body = "return redis.call('INCR', 'not-a-number')" // fails the whole run
			}
			storeStep := luapipe.Step{Name: fmt.Sprint("test.store.", failed), Body: body, Keys: []string{"entry"}, Args: []any{"stored"}}
			finish := at.FinishStep()
			if finish.Client != rdbA {
				t.Errorf("FinishStep names client %v, want the leader's", finish.Client)
			}
			// The entry is in before the finish's notice, as the store's own step puts it.
			cache.mu.Lock()
			cache.resp[key] = r
			cache.mu.Unlock()
			if err := luapipe.Steps(ctx, rdbA, storeStep, finish); err == nil {
				at.Cached()
			} else {
				cache.mu.Lock()
				delete(cache.resp, key) // the run stored nothing
				cache.mu.Unlock()
			}
			finishesAtStore = fin.n.Load()
			return r, nil
		}
		if _, err := s.Do("FLUSHALL"); err != nil {
			t.Fatal(err)
		}
		_ = rdbA.Set(context.Background(), "not-a-number", "x", 0).Err()
		leader, waiter := leaderThenWaiter(t, a, b, key, o, fetch, started)
		close(hold)
		want := fmt.Sprintf("answer failed=%v", failed)
		if r := <-leader; r.err != nil || r.out != Leader || string(r.resp.Body) != want {
			t.Fatalf("failed=%v: leader %v %v", failed, r.out, r.err)
		}
		if r := <-waiter; r.err != nil || r.out != Shared || string(r.resp.Body) != want {
			t.Fatalf("failed=%v: waiter %v %v, want the leader's answer, shared", failed, r.out, r.err)
		}
		rec, err := s.Do("GET", "ghlproxy:{fold:"+key+"}:result")
		if err != nil {
			t.Fatal(err)
		}
		more := fin.n.Load() - finishesAtStore
		switch {
		case !failed && (more != 0 || len(rec) != 1+tokenLen || rec[0] != recCached):
			t.Fatalf("finished in the store's run: %d finishes after it, record %q", more, rec)
		case failed && (more == 0 || len(rec) == 0 || rec[0] != recShared):
			t.Fatalf("the store's run failed: %d finishes after it, record kind %q; want the leader's own, for the waiters only", more, rec[:min(1, len(rec))])
		}
		if localReplay(a, key) || localReplay(b, key) {
			t.Fatalf("failed=%v: a replica keeps a replay", failed)
		}
	}
}
