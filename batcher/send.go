package batcher

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/ghlproxy/ghlproxy/internal/metrics"
	"github.com/ghlproxy/ghlproxy/internal/upstream"
	"github.com/ghlproxy/ghlproxy/ratelimit"
)

// Sending: a group's calls upstream, in entity order; bulk and merged calls, and their
// refusals split into single writes.

// group is the calls one grant of tokens sends.
type group struct {
	info  Info
	calls []*upstreamCall
}

// upstreamCall is one call to GHL carrying one write, a merged run of one entity's writes,
// or a bulk call's writes.
type upstreamCall struct {
	writes   []*pending        // guarded by Batcher.mu until started
	entities []string          // distinct, in order: one, or a bulk call's
	after    []<-chan struct{} // the entities' previous calls
	started  bool              // writes fixed: nothing may merge in any more
	done     chan struct{}
}

// accepts says w may merge into c: c has not started and is a merging run of w's entity
// and MergeKey. Caller holds b.mu.
func (c *upstreamCall) accepts(p *pending) bool {
	first := c.writes[0]
	return !c.started && first.fields != nil && first.w.Entity == p.w.Entity && first.w.MergeKey == p.w.MergeKey
}

// cut takes the first n calls of s's queue out of it as one group and links each call
// behind its entities' previous calls. Caller holds b.mu.
func (b *Batcher) cut(s *scope, n int, waited time.Duration) *group {
	planned, _ := b.ready(b.plan(s.queue), b.cfg.Now())
	planned = planned[:min(n, len(planned), b.cfg.Max)]
	g := &group{info: Info{ID: b.idPrefix + strconv.FormatUint(b.seq.Add(1), 16), Waited: waited}}
	for _, ws := range planned {
		c := &upstreamCall{writes: ws, done: make(chan struct{})}
		for _, p := range ws {
			if e := p.w.Entity; e != "" && !slices.Contains(c.entities, e) {
				if t := b.tails[e]; t != nil {
					c.after = append(c.after, t.done)
				}
				b.tails[e] = c
				c.entities = append(c.entities, e)
			}
			p.queued = false
		}
		g.info.Size += len(ws)
		g.calls = append(g.calls, c)
	}
	if g.info.Size > 0 {
		s.queue = slices.DeleteFunc(s.queue, func(p *pending) bool { return !p.queued })
		b.m.QueueDepth.WithLabelValues("batch").Sub(float64(g.info.Size))
		b.wg.Add(len(g.calls))
	}
	return g
}

func (b *Batcher) launch(g *group) {
	if len(g.calls) == 0 {
		return // every write of the grant was cancelled meanwhile; its tokens are spent
	}
	b.m.BatchSize.Observe(float64(g.info.Size))
	b.log.Debug("batch", "id", g.info.ID, "size", g.info.Size, "calls", len(g.calls), "waited", g.info.Waited)
	for _, c := range g.calls {
		go b.send(g.info, c)
	}
}

func (b *Batcher) send(info Info, c *upstreamCall) {
	defer b.wg.Done()
	for _, prev := range c.after {
		<-prev
	}
	b.mu.Lock()
	c.started = true
	ws := c.writes
	b.mu.Unlock()

	// Every write the call carries is marked sent before it goes, its first included: a
	// write whose caller left may not be sent, and then the next one leads the call.
	ws = b.marked(ws)
	if len(ws) == 0 {
		b.finished(c)
		return
	}
	first := ws[0]
	ctx, stop := b.sendContext(first.ctx)
	defer stop()
	var answers []result
	switch {
	case len(ws) > 1 && first.fields == nil: // a bulk call: merging writes have fields
		answers = b.sendBulk(ctx, info, ws)
	case len(ws) > 1:
		answers = b.sendMerged(ctx, info, ws)
	default:
		resp, err := first.w.Send(ctx, first.w.Body)
		info.Merged = 1
		answers = []result{{resp: resp, info: info, err: err}}
	}
	for i, p := range ws {
		p.done <- answers[i]
	}
	b.finished(c)
}

// finished lets the entities' next calls go.
func (b *Batcher) finished(c *upstreamCall) {
	b.mu.Lock()
	for _, e := range c.entities {
		if b.tails[e] == c {
			delete(b.tails, e)
		}
	}
	b.mu.Unlock()
	close(c.done)
}

// sendContext is the context a call is sent on: not its callers' (a client hanging up must
// not abort a write half-way), but ended when Close's deadline passes, so that shutdown
// takes one grace period even for calls GHL is slow to answer.
func (b *Batcher) sendContext(parent context.Context) (context.Context, func()) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(parent))
	stop := context.AfterFunc(b.base, cancel)
	return ctx, func() { stop(); cancel() }
}

// sendBulk makes the bulk call of ws, one answer per write. When GHL refuses the call as a
// whole with a 4xx, the refusal may be any one write's doing (a contact id it does not
// know): each write then goes alone, and each caller gets its own answer.
func (b *Batcher) sendBulk(ctx context.Context, info Info, ws []*pending) []result {
	ids := make([]string, len(ws))
	for i, p := range ws {
		ids[i] = p.w.Bulk.ID
	}
	resps, err := ws[0].w.Bulk.Send(ctx, ids)
	var refused *BulkRefused
	if errors.As(err, &refused) && splittable(refused.Resp) {
		return b.alone(info, ws)
	}
	if err == nil && len(resps) != len(ws) {
		err = fmt.Errorf("batcher: the bulk call answered %d answers for %d writes; they may have been applied", len(resps), len(ws))
	}
	b.m.UpstreamSaved.WithLabelValues(metrics.SavedBulk).Add(float64(len(ws) - 1))
	info.Merged, info.Bulk = 1, len(ws)
	answers := make([]result, len(ws))
	for i := range answers {
		switch {
		case refused != nil:
			answers[i] = result{resp: refused.Resp, info: info} // 401, 403, 429, 5xx: everyone's
		case err != nil:
			answers[i] = result{info: info, err: err}
		default:
			answers[i] = result{resp: resps[i], info: info}
		}
	}
	return answers
}

// sendMerged makes the merged call of ws. Its success is every caller's, and every caller
// but the last is told it was superseded. A 4xx may be any one write's doing (an email
// another contact has): each write then goes alone, in order, and each caller gets its own
// answer — nobody gets the merged call's refusal.
func (b *Batcher) sendMerged(ctx context.Context, info Info, ws []*pending) []result {
	resp, err := ws[0].w.Send(ctx, merge(ws))
	if err == nil && splittable(resp) {
		return b.alone(info, ws)
	}
	b.m.UpstreamSaved.WithLabelValues(metrics.SavedMerge).Add(float64(len(ws) - 1))
	info.Merged = len(ws)
	answers := make([]result, len(ws))
	for i := range answers {
		in := info
		in.Superseded = i < len(ws)-1
		answers[i] = result{resp: resp, info: in, err: err}
	}
	return answers
}

// splittable says a combined call's answer is a refusal that may be one write's doing:
// a 4xx other than 401 and 403 (the credential's, shared by every write of the call) and
// 429 (nothing was done; more calls would not help).
func splittable(resp *upstream.Response) bool {
	switch s := resp.Status; {
	case s < 400 || s > 499:
		return false
	case s == 401, s == 403, s == 429:
		return false
	}
	return true
}

// alone sends each write of a refused combined call by itself, in arrival order (they may
// share an entity), each behind a token of its own: the combined call spent one, and these
// are new calls. A write whose token cannot be had within MaxWait gets the limiter's error
// and is not sent (the error says so: upstream.ErrNotSent). Of a merged call's writes —
// one entity — every one that succeeded but the last is Superseded, as in a merged call:
// the last is the entity's latest.
func (b *Batcher) alone(info Info, ws []*pending) []result {
	answers := make([]result, len(ws))
	info.Merged, info.Bulk = 1, 0
	for i, p := range ws {
		ctx, stop := b.sendContext(p.ctx)
		answers[i] = b.sendAlone(ctx, info, p)
		stop()
	}
	if ws[0].fields != nil {
		last := -1
		for i, a := range answers {
			if a.err == nil && a.resp.Status/100 == 2 {
				if last >= 0 {
					answers[last].info.Superseded = true
				}
				last = i
			}
		}
	}
	return answers
}

func (b *Batcher) sendAlone(ctx context.Context, info Info, p *pending) result {
	if b.lim != nil {
		wctx, cancel := ctx, context.CancelFunc(func() {})
		if b.cfg.MaxWait > 0 {
			wctx, cancel = context.WithTimeout(ctx, b.cfg.MaxWait)
		}
		lane := ratelimit.Interactive
		if p.w.Background {
			lane = ratelimit.Background
		}
		_, err := b.lim.Wait(wctx, p.w.Scope, 1, lane)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			err = &ratelimit.RejectedError{RetryAfter: expiredRetry} // the bound set here
		}
		if err != nil {
			return result{err: fmt.Errorf("%w: %w", upstream.ErrNotSent, err)}
		}
	}
	resp, err := p.w.Send(ctx, p.w.Body)
	return result{resp: resp, info: info, err: err}
}

// marked calls Sending of every write of a call, answers those whose Sending fails with its
// error (they are not sent) and returns the rest.
func (b *Batcher) marked(ws []*pending) []*pending {
	out := ws[:0:0]
	for _, p := range ws {
		if p.w.Sending != nil {
			if err := p.w.Sending(); err != nil {
				p.done <- result{err: err}
				continue
			}
		}
		out = append(out, p)
	}
	return out
}
