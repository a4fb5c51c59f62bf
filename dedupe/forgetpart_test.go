package dedupe

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/ghlproxy/ghlproxy/internal/luapipe"
	"github.com/ghlproxy/ghlproxy/internal/redistest"
	"github.com/ghlproxy/ghlproxy/internal/upstream"
)

// scriptRuns counts the scripts a client runs.
type scriptRuns struct{ n atomic.Int64 }

func (s *scriptRuns) DialHook(next redis.DialHook) redis.DialHook { return next }
func (s *scriptRuns) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() == "evalsha" || cmd.Name() == "eval" {
			s.n.Add(1)
		}
		return next(ctx, cmd)
	}
}
func (s *scriptRuns) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// A Forget whose step another stage runs in its own script run (the cache's invalidation,
// here a stand-in step before it) drops the replays on every replica, and finish sends
// nothing more: one command for both stages. finish without the step run does the work
// itself.
func TestForgetPartRunsInAnotherStagesRun(t *testing.T) {
	s := redistest.Start(t)
	rdb := redisClient(t, s)
	runs := &scriptRuns{}
	rdb.(*redis.Client).AddHook(runs)
	a, _ := newFold(t, testConfig(), rdb)
	b, _ := newFold(t, testConfig(), rdb)
	var calls atomic.Int64
	fetch := func(context.Context, *Attempt) (*upstream.Response, error) {
		calls.Add(1)
		return &upstream.Response{Status: 200, Body: []byte("answer")}, nil
	}
	read := Options{Key: &testKey, Tags: []string{"t1"}}
	ctx := context.Background()
	other := luapipe.Step{Name: "test.other", Body: "redis.call('SET', KEYS[1], ARGV[1]); return 1", Keys: []string{"other"}, Args: []any{"ran"}}
	for _, runStep := range []bool{true, false} {
		if _, out, err := a.Do(ctx, "r", read, fetch); err != nil || out != Leader {
			t.Fatalf("first read: %v %v", out, err)
		}
		if _, out, err := b.Do(ctx, "r", read, fetch); err != nil || out != Replay {
			t.Fatalf("before the forget, the other replica: %v %v, want a replay", out, err)
		}
		step, finish := b.ForgetPart(read.Tags, "")
		if step.Client != rdb {
			t.Fatalf("the step names client %v, want the fold's", step.Client)
		}
		if runStep {
			if err := luapipe.Steps(ctx, rdb, other, step); err != nil {
				t.Fatal(err)
			}
		}
		before := runs.n.Load()
		if err := finish(ctx); err != nil {
			t.Fatal(err)
		}
		if n := runs.n.Load() - before; runStep && n != 0 || !runStep && n == 0 {
			t.Fatalf("step run by another stage: %v; finish ran %d scripts", runStep, n)
		}
		waitFor(t, "the forget notice on the other replica", func() bool { return !localReplay(a, "r") })
		n := calls.Load()
		if _, out, err := a.Do(ctx, "r", read, fetch); err != nil || out != Leader || calls.Load() != n+1 {
			t.Fatalf("after the forget (step run by another stage: %v): %v %v, want a call of its own", runStep, out, err)
		}
		if err := b.Forget(ctx, read.Tags, ""); err != nil { // a clean slate for the next round
			t.Fatal(err)
		}
		waitFor(t, "the clean slate", func() bool { return !localReplay(a, "r") })
	}
	if v, _ := s.Do("GET", "other"); v != "ran" {
		t.Fatalf("the other stage's step did not run: %q", v)
	}
}

// A Forget that Redis refuses (full, under noeviction) still reaches the other replicas'
// in-process replays through its notice, and the write's caller gets the error.
func TestRefusedForgetStillNotifies(t *testing.T) {
	s := redistest.Start(t, "--maxmemory-policy", "noeviction")
	a, _ := newFold(t, testConfig(), redisClient(t, s))
	b, _ := newFold(t, testConfig(), redisClient(t, s))
	fetch := func(context.Context, *Attempt) (*upstream.Response, error) {
		return &upstream.Response{Status: 200, Body: []byte("answer")}, nil
	}
	read := Options{Key: &testKey, Tags: []string{"t1"}}
	ctx := context.Background()
	if _, out, err := a.Do(ctx, "r", read, fetch); err != nil || out != Leader {
		t.Fatalf("read: %v %v", out, err)
	}
	if !localReplay(a, "r") {
		t.Fatal("no replay in process to forget: the test would pass without the notice")
	}
	if _, err := s.Do("CONFIG", "SET", "maxmemory", "1"); err != nil {
		t.Fatal(err)
	}
	if err := b.Forget(ctx, read.Tags, ""); err == nil {
		t.Fatal("a full Redis took the Forget: the test proves nothing")
	}
	waitFor(t, "the other replica to drop its replay", func() bool { return !localReplay(a, "r") })
}
