// Package luapipe runs Lua scripts in one pipeline by SHA. A script's first run on a Redis
// that does not have it cached (a new server, a restart, a failover, a Cluster node added)
// answers NOSCRIPT; Script.Run then falls back on EVAL, but inside a pipeline the answer
// comes only with Exec. Pipe sends every run as EVALSHA and sends again, as EVAL (which
// caches the script), just the runs that met NOSCRIPT: the script's text is sent only while
// Redis lacks it, not on every run (docs/architecture.md, "What a request costs Redis").
package luapipe

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// Pipe is one pipeline of script runs. Not safe for concurrent use.
type Pipe struct {
	rdb  redis.UniversalClient
	pipe redis.Pipeliner
	runs []run
}

type run struct {
	s    *redis.Script
	keys []string
	args []any
	cmd  *redis.Cmd
}

// New starts a pipeline on rdb.
func New(rdb redis.UniversalClient) *Pipe { return &Pipe{rdb: rdb, pipe: rdb.Pipeline()} }

// Run queues one run of s. The command it returns holds the run's answer after Exec.
func (p *Pipe) Run(ctx context.Context, s *redis.Script, keys []string, args ...any) *redis.Cmd {
	cmd := s.EvalSha(ctx, p.pipe, keys, args...)
	p.runs = append(p.runs, run{s: s, keys: keys, args: args, cmd: cmd})
	return cmd
}

// Len is the number of runs queued.
func (p *Pipe) Len() int { return len(p.runs) }

// Exec sends the pipeline, then the runs that met NOSCRIPT again as EVAL, and returns the
// first error of any run (as redis.Pipeliner.Exec does).
func (p *Pipe) Exec(ctx context.Context) error {
	if len(p.runs) == 0 {
		return nil
	}
	_, err := p.pipe.Exec(ctx)
	if err == nil {
		return nil
	}
	type redo struct{ orig, again *redis.Cmd }
	var redos []redo
	retry := p.rdb.Pipeline()
	for _, r := range p.runs {
		if redis.HasErrorPrefix(r.cmd.Err(), "NOSCRIPT") {
			redos = append(redos, redo{r.cmd, r.s.Eval(ctx, retry, r.keys, r.args...)})
		}
	}
	if len(redos) == 0 {
		return err
	}
	_, _ = retry.Exec(ctx)
	for _, r := range redos {
		r.orig.SetVal(r.again.Val())
		r.orig.SetErr(r.again.Err())
	}
	for _, r := range p.runs {
		if e := r.cmd.Err(); e != nil {
			return e
		}
	}
	return nil
}

// OneScript reports whether one script may touch keys of different hash tags on rdb: on a
// single Redis (alone or behind Sentinel) every key is on the one server, so the work of
// several tags goes in one run; a Cluster (or a Ring) splits keys by slot, so there a run
// touches one hash tag only.
func OneScript(rdb redis.UniversalClient) bool {
	_, single := rdb.(*redis.Client)
	return single
}

// A Step is one stage's part of a script run that several stages share (Steps), on a single
// Redis: one round trip and one command for work that would take one of each per stage.
// Steps runs the steps in order, in one atomic run.
type Step struct {
	// Name identifies the step's code: steps of the same Name have the same Defs and Body,
	// so that the script composed of them is built once and then runs by SHA.
	Name string
	// Defs are the Lua definitions (local functions) Body uses. They are in scope of every
	// later step too: their names must differ from other steps'.
	Defs string
	// Body is the step as the body of a Lua function of its own KEYS and ARGV, which hide
	// the run's: it reads its keys and arguments as if it ran alone, and what it returns is
	// its reply (nothing, or nil, reaches Done as nil). A function of Defs that reads KEYS
	// must take them as a parameter.
	Body string
	Keys []string
	Args []any
	// Client is the client the step's stage works on: a stage may run another's step only
	// on the same one (the same Redis).
	Client redis.UniversalClient
	// Done, when set, is called once the run is over, with the step's reply, or with the
	// run's error.
	Done func(reply any, err error)
}

var composed sync.Map // the steps' names, joined -> *redis.Script

// Steps runs steps in one script run, in order, and hands each step's reply (or the run's
// error) to its Done. Only on a single Redis (OneScript): the steps' keys may be in any slot.
// An error of a step fails the run at that step: what the steps before it wrote stays, as in
// any script, and every step's Done gets the error.
func Steps(ctx context.Context, rdb redis.UniversalClient, steps ...Step) error {
	names := make([]string, len(steps))
	for i, s := range steps {
		names[i] = s.Name
	}
	id := strings.Join(names, "\x00")
	sc, ok := composed.Load(id)
	if !ok {
		sc, _ = composed.LoadOrStore(id, redis.NewScript(compose(steps)))
	}
	var keys []string
	args := make([]any, 0, 2*len(steps))
	for _, s := range steps {
		keys = append(keys, s.Keys...)
		args = append(args, len(s.Keys), len(s.Args))
	}
	for _, s := range steps {
		args = append(args, s.Args...)
	}
	reply, err := sc.(*redis.Script).Run(ctx, rdb, keys, args...).Slice()
	if err == nil && len(reply) != len(steps) {
		err = fmt.Errorf("luapipe: %d replies for %d steps", len(reply), len(steps))
	}
	for i, s := range steps {
		if s.Done == nil {
			continue
		}
		if err != nil {
			s.Done(nil, err)
		} else {
			s.Done(reply[i], nil)
		}
	}
	return err
}

// compose writes the script of steps: each step's function, then a loop that gives each its
// part of KEYS and ARGV (ARGV starts with each step's key and argument counts).
func compose(steps []Step) string {
	var b strings.Builder
	fns := make([]string, len(steps))
	for i, s := range steps {
		fns[i] = fmt.Sprintf("step%d", i+1)
		fmt.Fprintf(&b, "%s\nlocal function %s(KEYS, ARGV)\n%s\nend\n", s.Defs, fns[i], s.Body)
	}
	fmt.Fprintf(&b, `
local function part(t, from, n)
  local o = {}
  for i = 1, n do o[i] = t[from + i] end
  return o
end
local out, k, a = {}, 0, %d
for i, f in ipairs({%s}) do
  local nk, na = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local r = f(part(KEYS, k, nk), part(ARGV, a, na))
  if r == nil then r = false end -- a hole would cut the replies short
  out[i] = r
  k, a = k + nk, a + na
end
return out`, 2*len(steps), strings.Join(fns, ", "))
	return b.String()
}
