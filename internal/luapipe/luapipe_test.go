package luapipe

import (
	"context"
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
