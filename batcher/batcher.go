// Package batcher groups writes per scope into batches of batch.min to batch.max behind one
// rate-limit grant, keeps writes to one entity in arrival order, and merges consecutive
// partial updates of one entity where the result is provably the same.
//
// How a group forms. Each scope with queued writes has one loop goroutine. It looks at the
// head of the scope's queue (the oldest writes, at most Max of them) and asks the limiter
// for one token per upstream call those writes need (after merging) as soon as one of these
// holds:
//   - the head holds Max writes;
//   - the head needs at least Min upstream calls (merged writes need no token of their own,
//     so a burst of updates to one contact keeps collecting until Max or the linger);
//   - the oldest write has waited Linger (a lone write never waits longer than that before
//     it asks for its token);
//   - the batcher is closing.
//
// The grant arrives when the scope's bucket has the tokens. Writes keep joining the queue
// while the loop waits, and the group is cut only when the grant arrives: its first n calls
// (n = tokens granted) go out; a joiner that merged into one of them rides along for free,
// a joiner that needs a call of its own stays at the head of the queue for the next group.
// So under a full bucket groups grow towards Max and merge more, and with tokens to spare a
// group goes out as soon as it holds Min calls.
//
// Sending. The calls of one group go upstream concurrently, each in its own goroutine,
// except calls for the same Entity: those run one after another in arrival order, within a
// group and across groups (a per-entity tail links each call to the previous call of its
// entity, which it waits for before it sends).
//
// Failures. A write is either sent exactly once, or its caller gets an error before it was
// sent: a caller whose ctx ends while its write is queued (also while the group waits for
// its grant) gets ctx.Err() and the write is dropped from the queue; a limiter error (a
// *ratelimit.RejectedError after ratelimit.max_wait) answers the writes the group asked for,
// and nothing of it is sent.
//
// The wait bound. A write waits in the batcher's queue (behind the groups ahead of it, one
// grant at a time per scope) and then in the limiter, and the limiter's MaxWait only sees the
// second part. So Config.MaxWait bounds the whole wait, Submit to grant: a group asks the
// limiter with a deadline at its oldest write's time left, and a write whose time is up is
// answered with a *ratelimit.RejectedError and dropped from the queue unsent, whether it is
// found so before its group asks or the limiter's wait ran into that deadline. When the
// limiter refuses a group, the writes that cannot make it (time left below the refusal's
// RetryAfter, and always the oldest, whose time set the bound) get the refusal; the others
// stay at the head of the queue and ask again. Once a group is cut, its writes are sent whatever happens
// to their callers: Send runs on context.WithoutCancel of the caller's ctx, so a client
// hanging up cannot abort a write half-way (GHL may or may not have applied it); Send must
// bound itself (the proxy's round trip has its own upstream timeout). Submit then waits for
// the answer even if its ctx ended. Nothing is ever resent: a 429 or a timeout from GHL is
// the caller's answer.
package batcher

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ghlproxy/ghlproxy/metrics"
	"github.com/ghlproxy/ghlproxy/ratelimit"
	"github.com/ghlproxy/ghlproxy/upstream"
)

// Write is one accepted write.
type Write struct {
	// Scope is the rate-limit scope key (identity.Credential.ScopeKey): writes group per scope.
	Scope string
	// Entity orders writes: writes with the same non-empty Entity reach upstream in arrival
	// order and never concurrently. Empty means no ordering constraint.
	Entity string
	// MergeKey, when non-empty, lets consecutive writes with the same MergeKey in one group
	// merge into one call (partial updates of one entity with one credential and Version).
	// Merging also needs a non-empty Entity, Config.Merge and JSON-object bodies.
	MergeKey string
	// Body is the request body (JSON when MergeKey is set).
	Body []byte
	// Send performs the upstream call with the given body (the merged body when merged). It
	// is called at most once per Write or merged run, after the group's grant, on a context
	// that is not cancelled when the caller's is: Send must bound its own duration.
	Send func(ctx context.Context, body []byte) (*upstream.Response, error)
}

// Info describes the group a write went out in, for X-Ghlproxy-Batch.
type Info struct {
	ID   string
	Size int // writes in the group, before merging
	// Merged is how many writes the caller's upstream call carried: 1 unmerged, k > 1 when
	// k writes were merged into one call (all k callers got that call's answer).
	Merged int
	// Waited is how long the group waited for its rate-limit grant (X-Ghlproxy-Queue-Ms).
	Waited time.Duration
}

// Limiter hands out rate-limit tokens; *ratelimit.Limiter satisfies it. Wait blocks until n
// tokens of scope are granted, or returns an error (*ratelimit.RejectedError past the wait
// bound) having granted nothing.
type Limiter interface {
	Wait(ctx context.Context, scope string, n int, p ratelimit.Priority) (ratelimit.Grant, error)
}

// Config tunes grouping. Zero values take the defaults.
type Config struct {
	// Min is how many upstream calls a group needs before it asks for its grant without
	// waiting for Linger (batch.min, default 3).
	Min int
	// Max is the most writes in one group (batch.max, default 5).
	Max int
	// Linger is the longest the oldest queued write of a scope waits before its group asks
	// for tokens, however small the group (batch.linger, default 25ms).
	Linger time.Duration
	// Merge lets consecutive writes with one MergeKey within a group become one call.
	Merge bool
	// MaxQueue bounds the writes queued per scope (not yet sent); past it Submit fails at
	// once with ErrQueueFull instead of letting memory and latency grow. Default 1000.
	MaxQueue int
	// MaxWait bounds a write's whole wait for its grant, queue included
	// (ratelimit.max_wait); past it the write gets a *ratelimit.RejectedError, unsent. Zero:
	// no bound of the batcher's own, only the limiter's per ask.
	MaxWait time.Duration

	// Now and After are the clock; nil means the real one. Tests substitute a fake to stage
	// the linger deterministically.
	Now   func() time.Time
	After func(time.Duration) <-chan time.Time
}

// Defaults for the zero Config.
const (
	DefaultMin      = 3
	DefaultMax      = 5
	DefaultLinger   = 25 * time.Millisecond
	DefaultMaxQueue = 1000
)

var (
	// ErrClosed is returned by Submit after Close, and (wrapped) to writes Close had to drop
	// unsent because its deadline passed while they waited for a grant.
	ErrClosed = errors.New("batcher: closed, the write was not sent")
	// ErrQueueFull is returned (wrapped) by Submit when the scope already holds MaxQueue
	// writes; nothing was sent. The proxy answers it with a GHL-shaped 503.
	ErrQueueFull = errors.New("batcher: write queue full, the write was not sent")
)

// expiredRetry is the Retry-After of a write refused by the batcher's own bound, when the
// limiter gave no refusal to take one from: the limiter's emission interval is not known
// here, and the 429's Retry-After is whole seconds anyway.
const expiredRetry = time.Second

// Batcher groups writes. Construct with New; safe for concurrent use.
type Batcher struct {
	cfg Config
	lim Limiter
	m   *metrics.Metrics
	log *slog.Logger

	// base is the context of limiter waits; cancelled when Close's deadline passes.
	base   context.Context
	cancel context.CancelFunc

	idPrefix string
	seq      atomic.Uint64

	mu     sync.Mutex
	closed bool
	scopes map[string]*scope
	// tails holds, per entity, a channel closed when the last call cut for that entity has
	// finished: the next call of the entity waits for it.
	tails map[string]chan struct{}
	// wg counts scope loops and calls in flight; Close waits for it.
	wg sync.WaitGroup

	arrived int // writes ever queued (tests wait on it to fix an arrival order)
	// enqueued, when set (tests), is called under the lock as a write joins its queue: the
	// arrival order that per-entity ordering and merging follow.
	enqueued func(Write)
}

type scope struct {
	key   string
	queue []*pending // arrival order, not yet cut into a group
	wake  chan struct{}
	// askCancel cancels the loop's outstanding limiter wait (nil when none): used when every
	// write it was for has been cancelled.
	askCancel context.CancelFunc
}

type pending struct {
	w      Write
	ctx    context.Context
	at     time.Time
	fields map[string]json.RawMessage // non-nil when the write may merge
	queued bool                       // still in its scope's queue (guarded by Batcher.mu)
	done   chan result                // buffered: the one answer
}

type result struct {
	resp *upstream.Response
	info Info
	err  error
}

// New returns a Batcher. lim may be nil (no rate limiting); m and log may be nil.
func New(cfg Config, lim Limiter, m *metrics.Metrics, log *slog.Logger) *Batcher {
	if cfg.Min <= 0 {
		cfg.Min = DefaultMin
	}
	if cfg.Max <= 0 {
		cfg.Max = DefaultMax
	}
	if cfg.Max < cfg.Min {
		cfg.Max = cfg.Min
	}
	if cfg.Linger <= 0 {
		cfg.Linger = DefaultLinger
	}
	if cfg.MaxQueue <= 0 {
		cfg.MaxQueue = DefaultMaxQueue
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.After == nil {
		cfg.After = time.After
	}
	if m == nil {
		m = metrics.New()
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var p [3]byte
	_, _ = rand.Read(p[:])
	b := &Batcher{
		cfg: cfg, lim: lim, m: m, log: log,
		idPrefix: hex.EncodeToString(p[:]) + "-",
		scopes:   make(map[string]*scope),
		tails:    make(map[string]chan struct{}),
	}
	b.base, b.cancel = context.WithCancel(context.Background())
	return b
}

// Submit queues w, waits for its group and returns the upstream answer of w's call (the
// merged call's answer when w was merged) with the group's Info. It returns an error without
// sending w when the batcher is closed (ErrClosed), the scope's queue is full (ErrQueueFull),
// ctx ends while w is queued (ctx.Err()), or the limiter refuses the group's grant. Once w is
// cut into a group it is sent, and Submit returns its answer even if ctx has ended.
func (b *Batcher) Submit(ctx context.Context, w Write) (*upstream.Response, Info, error) {
	if w.Send == nil {
		return nil, Info{}, errors.New("batcher: Write.Send is nil")
	}
	if err := ctx.Err(); err != nil {
		return nil, Info{}, err
	}
	p := &pending{w: w, ctx: ctx, done: make(chan result, 1)}
	if b.cfg.Merge && w.MergeKey != "" && w.Entity != "" {
		p.fields = jsonObject(w.Body)
	}

	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, Info{}, ErrClosed
	}
	s := b.scopes[w.Scope]
	if s == nil {
		s = &scope{key: w.Scope, wake: make(chan struct{}, 1)}
		b.scopes[w.Scope] = s
		b.wg.Add(1)
		go b.run(s)
	}
	if len(s.queue) >= b.cfg.MaxQueue {
		b.mu.Unlock()
		return nil, Info{}, fmt.Errorf("%w: %d writes already queued for this scope (batch max_queue)", ErrQueueFull, b.cfg.MaxQueue)
	}
	p.at = b.cfg.Now()
	p.queued = true
	s.queue = append(s.queue, p)
	b.m.QueueDepth.WithLabelValues("batch").Inc()
	b.arrived++
	if b.enqueued != nil {
		b.enqueued(w)
	}
	b.mu.Unlock()
	wake(s)

	select {
	case r := <-p.done:
		return r.resp, r.info, r.err
	case <-ctx.Done():
	}
	b.mu.Lock()
	if p.queued {
		b.dequeue(s, p)
		if len(s.queue) == 0 && s.askCancel != nil {
			s.askCancel()
		}
		b.mu.Unlock()
		wake(s)
		return nil, Info{}, ctx.Err()
	}
	b.mu.Unlock()
	// Cut into a group: it will be (or was) sent; the answer is the caller's.
	r := <-p.done
	return r.resp, r.info, r.err
}

// Close stops taking writes (Submit returns ErrClosed), flushes what is queued without
// waiting for the linger, and returns when every caller has been answered. If ctx ends
// first, writes still waiting for a grant are answered with an error wrapping ErrClosed
// (nothing of them was sent); calls already upstream run to their answer regardless, and
// Close returns ctx.Err().
func (b *Batcher) Close(ctx context.Context) error {
	b.mu.Lock()
	b.closed = true
	for _, s := range b.scopes {
		wake(s)
	}
	b.mu.Unlock()

	done := make(chan struct{})
	go func() { b.wg.Wait(); close(done) }()
	select {
	case <-done:
		b.cancel()
		return nil
	case <-ctx.Done():
		b.cancel()
		return ctx.Err()
	}
}

func wake(s *scope) {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// dequeue removes p from s's queue. Caller holds b.mu.
func (b *Batcher) dequeue(s *scope, p *pending) {
	for i, q := range s.queue {
		if q == p {
			s.queue = append(s.queue[:i], s.queue[i+1:]...)
			break
		}
	}
	p.queued = false
	b.m.QueueDepth.WithLabelValues("batch").Dec()
}

// run is the loop of one scope: it lives while the scope has queued writes.
func (b *Batcher) run(s *scope) {
	defer b.wg.Done()
	for {
		b.mu.Lock()
		if len(s.queue) == 0 {
			delete(b.scopes, s.key)
			b.mu.Unlock()
			return
		}
		now := b.cfg.Now()
		if b.expire(s, now) {
			b.mu.Unlock()
			continue
		}
		head := s.queue[:min(len(s.queue), b.cfg.Max)]
		calls := len(b.plan(head))
		due := s.queue[0].at.Add(b.cfg.Linger)
		if len(head) < b.cfg.Max && calls < b.cfg.Min && !b.closed && now.Before(due) {
			b.mu.Unlock()
			select {
			case <-s.wake:
			case <-b.cfg.After(due.Sub(now)):
			}
			continue
		}
		askers := append([]*pending(nil), head...)
		ctx, cancel := context.WithCancel(b.base)
		if b.cfg.MaxWait > 0 {
			// Bounded by the oldest write's time left: Close's cancel still reaches it.
			ctx, cancel = context.WithTimeout(b.base, b.left(askers[0], now))
		}
		s.askCancel = cancel
		b.mu.Unlock()

		var grant ratelimit.Grant
		var err error
		granted := calls
		if b.lim != nil {
			grant, err = b.lim.Wait(ctx, s.key, calls, ratelimit.Batch)
		} else {
			granted = b.cfg.Max // no limiter: whatever the head holds by now goes
		}
		cancel()

		b.mu.Lock()
		s.askCancel = nil
		if err != nil {
			var rej *ratelimit.RejectedError
			switch {
			case b.base.Err() != nil:
				err = fmt.Errorf("shutdown deadline passed while the write waited for a rate-limit token: %w", ErrClosed)
			case b.cfg.MaxWait > 0 && errors.As(err, &rej):
				b.refuse(s, askers, rej, rej.RetryAfter)
				b.mu.Unlock()
				continue
			case b.cfg.MaxWait > 0 && errors.Is(err, context.DeadlineExceeded) && errors.Is(ctx.Err(), context.DeadlineExceeded):
				// The deadline set above: the oldest write's time is up. Never the caller's
				// context.DeadlineExceeded: it is the sidecar's 429.
				b.refuse(s, askers, &ratelimit.RejectedError{RetryAfter: expiredRetry}, 0)
				b.mu.Unlock()
				continue
			}
			for _, p := range askers {
				if p.queued {
					b.dequeue(s, p)
					p.done <- result{err: err}
				}
			}
			b.mu.Unlock()
			continue
		}
		g := b.cut(s, granted, grant.Waited)
		b.mu.Unlock()
		b.launch(g)
	}
}

// left is how long p may still wait for its grant under MaxWait (<= 0: its time is up).
func (b *Batcher) left(p *pending, now time.Time) time.Duration {
	return p.at.Add(b.cfg.MaxWait).Sub(now)
}

// expire answers the writes at the front of s's queue whose time is up (they are in arrival
// order) with a RejectedError and drops them unsent; it reports whether it dropped any.
// Caller holds b.mu.
func (b *Batcher) expire(s *scope, now time.Time) bool {
	if b.cfg.MaxWait <= 0 {
		return false
	}
	dropped := false
	for len(s.queue) > 0 && b.left(s.queue[0], now) <= 0 {
		p := s.queue[0]
		b.dequeue(s, p)
		p.done <- result{err: &ratelimit.RejectedError{RetryAfter: expiredRetry}}
		dropped = true
	}
	return dropped
}

// refuse answers rej to the askers still queued whose time left is at most need (they
// cannot wait until the tokens would be free), and always to the oldest one, whose time
// bounded the ask; the others stay queued and their next group asks again. Caller holds b.mu.
func (b *Batcher) refuse(s *scope, askers []*pending, rej *ratelimit.RejectedError, need time.Duration) {
	now := b.cfg.Now()
	for i, p := range askers {
		if p.queued && (i == 0 || b.left(p, now) <= need) {
			b.dequeue(s, p)
			p.done <- result{err: rej}
		}
	}
}

// plan splits head (in arrival order) into upstream calls: a write merges into its entity's
// latest call when both may merge and share a MergeKey, else it starts a call. Caller holds
// b.mu.
func (b *Batcher) plan(head []*pending) [][]*pending {
	var calls [][]*pending
	var last map[string]int
	for _, p := range head {
		if p.fields != nil {
			if i, ok := last[p.w.Entity]; ok {
				first := calls[i][0]
				if first.fields != nil && first.w.MergeKey == p.w.MergeKey {
					calls[i] = append(calls[i], p)
					continue
				}
			}
		}
		calls = append(calls, []*pending{p})
		if p.w.Entity != "" {
			if last == nil {
				last = make(map[string]int)
			}
			last[p.w.Entity] = len(calls) - 1
		}
	}
	return calls
}

type group struct {
	info  Info
	calls []*call
}

type call struct {
	writes []*pending
	after  <-chan struct{} // the entity's previous call; nil: none
	done   chan struct{}
}

// cut takes the first n calls of s's head out of the queue as one group and links each call
// behind its entity's previous call. Caller holds b.mu.
func (b *Batcher) cut(s *scope, n int, waited time.Duration) *group {
	planned := b.plan(s.queue[:min(len(s.queue), b.cfg.Max)])
	planned = planned[:min(n, len(planned))]
	g := &group{info: Info{ID: b.idPrefix + strconv.FormatUint(b.seq.Add(1), 16), Waited: waited}}
	for _, ws := range planned {
		c := &call{writes: ws, done: make(chan struct{})}
		if e := ws[0].w.Entity; e != "" {
			c.after = b.tails[e]
			b.tails[e] = c.done
		}
		for _, p := range ws {
			b.dequeue(s, p)
		}
		g.info.Size += len(ws)
		g.calls = append(g.calls, c)
	}
	if len(g.calls) > 0 {
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

func (b *Batcher) send(info Info, c *call) {
	defer b.wg.Done()
	if c.after != nil {
		<-c.after
	}
	first := c.writes[0]
	body := first.w.Body
	if len(c.writes) > 1 {
		body = merge(c.writes)
		b.m.UpstreamSaved.WithLabelValues(metrics.SavedMerge).Add(float64(len(c.writes) - 1))
	}
	resp, err := first.w.Send(context.WithoutCancel(first.ctx), body)
	info.Merged = len(c.writes)
	for _, p := range c.writes {
		p.done <- result{resp: resp, info: info, err: err}
	}
	b.mu.Lock()
	e := first.w.Entity
	if b.tails[e] == c.done {
		delete(b.tails, e)
	}
	b.mu.Unlock()
	close(c.done)
}

// jsonObject returns body's top-level fields when body is one JSON object, else nil.
func jsonObject(body []byte) map[string]json.RawMessage {
	t := bytes.TrimLeft(body, " \t\r\n")
	if len(t) == 0 || t[0] != '{' {
		return nil
	}
	var f map[string]json.RawMessage
	if json.Unmarshal(body, &f) != nil || f == nil {
		return nil
	}
	return f
}

// merge applies the writes' fields in order, later wins, values replaced whole: what GHL's
// partial update (PUT) does with them one after another.
func merge(ws []*pending) []byte {
	out := make(map[string]json.RawMessage, len(ws[0].fields))
	for _, p := range ws {
		for k, v := range p.fields {
			out[k] = v
		}
	}
	body, err := json.Marshal(out)
	if err != nil { // cannot happen: every value is valid JSON from Unmarshal
		panic("batcher: re-encoding merged fields: " + err.Error())
	}
	return body
}
