// Package luapipe runs Lua scripts in one pipeline by SHA. A script's first run on a Redis
// that does not have it cached (a new server, a restart, a failover, a Cluster node added)
// answers NOSCRIPT; Script.Run then falls back on EVAL, but inside a pipeline the answer
// comes only with Exec. Pipe sends every run as EVALSHA and sends again, as EVAL (which
// caches the script), just the runs that met NOSCRIPT: the script's text is sent only while
// Redis lacks it, not on every run (docs/architecture.md, "What a request costs Redis").
package luapipe

import (
	"context"

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
