package luapipe

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/ghlproxy/ghlproxy/internal/redistest"
)

// names records the name of every command a client sends.
type names struct {
	mu  sync.Mutex
	got []string
}

func (n *names) DialHook(next redis.DialHook) redis.DialHook { return next }
func (n *names) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		n.add(cmd)
		return next(ctx, cmd)
	}
}
func (n *names) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, c := range cmds {
			n.add(c)
		}
		return next(ctx, cmds)
	}
}
func (n *names) add(c redis.Cmder) {
	if c.Name() == "hello" || c.Name() == "client" {
		return // a new connection's handshake
	}
	n.mu.Lock()
	n.got = append(n.got, c.Name())
	n.mu.Unlock()
}
func (n *names) take() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	g := n.got
	n.got = nil
	return g
}

var echo = redis.NewScript(`return KEYS[1] .. '=' .. ARGV[1]`)

// A Redis without the script cached answers the first pipeline once by EVALSHA (NOSCRIPT)
// and once by EVAL; every later pipeline is EVALSHA alone, and the answers are the script's
// either way.
func TestRunsBySHAAndLoadsOnNoScript(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	ctx := context.Background()
	if err := rdb.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	n := &names{}
	rdb.AddHook(n)
	for round, want := range [][]string{
		{"evalsha", "evalsha", "evalsha", "eval", "eval", "eval"},
		{"evalsha", "evalsha", "evalsha"},
	} {
		p := New(rdb)
		cmds := []*redis.Cmd{p.Run(ctx, echo, []string{"a"}, 1), p.Run(ctx, echo, []string{"b"}, 2), p.Run(ctx, echo, []string{"c"}, 3)}
		if err := p.Exec(ctx); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		for i, c := range cmds {
			if v, err := c.Text(); err != nil || v != string(rune('a'+i))+"="+string(rune('1'+i)) {
				t.Errorf("round %d, run %d: %q %v", round, i, v, err)
			}
		}
		if got := n.take(); !slices.Equal(got, want) {
			t.Errorf("round %d sent %v, want %v", round, got, want)
		}
	}
	// A run that fails for another reason reports its error and is not sent again.
	p := New(rdb)
	bad := redis.NewScript(`return redis.call('INCR', KEYS[1])`)
	if err := rdb.Set(ctx, "text", "x", 0).Err(); err != nil {
		t.Fatal(err)
	}
	_ = bad.Load(ctx, rdb)
	n.take()
	cmd := p.Run(ctx, bad, []string{"text"})
	if err := p.Exec(ctx); err == nil || cmd.Err() == nil {
		t.Fatalf("INCR of a string: Exec %v, run %v; want both to fail", err, cmd.Err())
	}
	if got := n.take(); len(got) != 1 {
		t.Errorf("a failing run was sent %v, want once", got)
	}
}

// Steps runs the steps of several stages in one command, each on its own KEYS and ARGV as
// if it ran alone, and hands each its reply; an error in a step fails the run, and every
// step's Done gets the error.
func TestStepsShareOneRun(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	ctx := context.Background()
	n := &names{}
	rdb.AddHook(n)
	var got [2]any
	var errs [2]error
	set := Step{
		Name: "test.set", Defs: "local function join(a, b) return a .. '=' .. b end",
		Body: "redis.call('SET', KEYS[1], ARGV[1]); return {join(KEYS[1], ARGV[1]), #KEYS, #ARGV}",
		Keys: []string{"k1"}, Args: []any{"v1"},
		Done: func(r any, err error) { got[0], errs[0] = r, err },
	}
	get := Step{
		Name: "test.get",
		Body: "return {redis.call('GET', KEYS[2]) or 'none', KEYS[1], ARGV[1], ARGV[2], #KEYS, #ARGV}",
		Keys: []string{"k1", "k2"}, Args: []any{"a", "b"},
		Done: func(r any, err error) { got[1], errs[1] = r, err },
	}
	if err := rdb.Set(ctx, "k2", "two", 0).Err(); err != nil {
		t.Fatal(err)
	}
	for round := range 2 {
		n.take()
		if err := Steps(ctx, rdb, set, get); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		// One command a run: EVALSHA, and the script's text once, the first time.
		wantCmds := []string{"evalsha"}
		if round == 0 {
			wantCmds = []string{"evalsha", "eval"}
		}
		if c := n.take(); !slices.Equal(c, wantCmds) {
			t.Errorf("round %d sent %v, want %v", round, c, wantCmds)
		}
		if errs[0] != nil || errs[1] != nil {
			t.Fatalf("round %d: Done got %v", round, errs)
		}
		want := [2]string{"[k1=v1 1 1]", "[two k1 a b 2 2]"}
		for i := range got {
			if s := fmt.Sprint(got[i]); s != want[i] {
				t.Errorf("round %d, step %d replied %s, want %s", round, i, s, want[i])
			}
		}
		if v := rdb.Get(ctx, "k1").Val(); v != "v1" {
			t.Errorf("round %d: the first step's write: %q", round, v)
		}
	}

	// A step that returns nothing still has its place in the replies.
	quiet := Step{Name: "test.quiet", Body: "redis.call('SET', KEYS[1], ARGV[1])", Keys: []string{"k3"}, Args: []any{"q"},
		Done: func(r any, err error) { got[0], errs[0] = r, err }}
	got[1] = nil
	if err := Steps(ctx, rdb, quiet, get); err != nil {
		t.Fatalf("a step that returns nothing: %v", err)
	}
	if errs[0] != nil || got[0] != nil || fmt.Sprint(got[1]) != "[two k1 a b 2 2]" {
		t.Fatalf("a step that returns nothing, then another: %v %v, %v", got[0], errs[0], got[1])
	}

	fail := Step{Name: "test.fail", Body: "return redis.call('INCR', KEYS[1])", Keys: []string{"k1"},
		Done: func(r any, err error) { got[1], errs[1] = r, err }}
	errs = [2]error{}
	if err := Steps(ctx, rdb, set, fail); err == nil {
		t.Fatal("a step's error did not fail the run")
	}
	if errs[0] == nil || errs[1] == nil {
		t.Fatalf("after a failed run, Done got %v: want the error in both", errs)
	}
}
