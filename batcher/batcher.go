// Package batcher groups writes per scope into batches of batch.min to batch.max behind one
// rate-limit grant, keeps writes to one entity in arrival order, merges consecutive
// partial updates of one entity where the result is provably the same, and sends writes
// that share a bulk endpoint as one bulk call.
//
// Calls. The scope's queue (arrival order) is planned into upstream calls: a write merges
// into its entity's latest queued call when both may merge and share a MergeKey, wherever
// that call is in the queue (nothing of the entity lies between them, so the merged body is
// the writes applied in order); a bulk write joins the earliest bulk call of its Bulk.Key
// that has room (at most Max writes), does not hold its entity and comes after its entity's
// latest call; any other write starts a call. A call's position is its first write's.
//
// How a group forms. Each scope with queued writes has one loop goroutine. It looks at the
// head of the plan (the first Max calls, less a trailing bulk call that still has room and
// linger left) and asks the limiter for one token per call as soon as one of these holds:
//   - the head holds Max writes;
//   - the head needs at least Min upstream calls (merged and bulked writes need no token of
//     their own, so a burst of updates to one contact keeps collecting until Max or the
//     linger);
//   - the oldest write has waited Linger (a lone write never waits longer than that before
//     it asks for its token);
//   - the batcher is closing.
//
// Coalescing (Config.Coalesce, off by default) holds a call of mergeable writes until its
// first write has waited Coalesce, so that an entity's updates arriving over that time
// merge into one call; later calls of a held entity are held with it (order), other
// entities' calls are not held. It trades the callers' latency for upstream calls.
//
// The grant arrives when the scope's bucket has the tokens. Writes keep joining the queue
// while the loop waits, and the group is cut only when the grant arrives: its first n calls
// (n = tokens granted) go out; a joiner that merged into one of them rides along for free,
// a joiner that needs a call of its own stays in the queue for the next group. So under a
// full bucket the queue grows and merges more, and with tokens to spare a group goes out as
// soon as it holds Min calls.
//
// A write whose entity's latest call is cut but has not started (it waits for the entity's
// call before it, still upstream) and that may merge with it joins that call directly: it
// takes no token and waits no longer than it would have anyway.
//
// Sending. The calls of one group go upstream concurrently, each in its own goroutine,
// except calls for the same Entity: those run one after another in arrival order, within a
// group and across groups (a per-entity tail links each call to the previous call of its
// entity, which it waits for before it sends; a bulk call waits for those of all its
// entities). A bulk call of k writes gets k answers from Bulk.Send, one per caller.
//
// Refusals. A merged or bulk call that GHL refuses with a 4xx (not 401, 403 or 429, which
// are the credential's or the budget's) may have been refused for one write's sake — an
// email another contact has, an id GHL does not know. Its writes then go upstream one by
// one, in arrival order, each behind a token of its own, and each caller gets its own
// answer: nobody gets the combined call's refusal. Of a merged call that succeeded, every
// caller but the last is told it was superseded (Info.Superseded).
//
// Failures. A write is either sent exactly once, or its caller gets an error before it was
// sent, marked upstream.ErrNotSent where it had been marked sent (every write of a call is
// marked sent through its Sending hook right before the call goes, and left out unsent if
// that fails): a caller whose ctx ends while its write is queued (also while the group
// waits for its grant) gets ctx.Err() and the write is dropped from the queue; a limiter
// error (a *ratelimit.RejectedError after ratelimit.max_wait) answers the writes the group
// asked for, and nothing of it is sent. Close's deadline ends the calls still upstream.
//
// The wait bound. A write waits in the batcher's queue (behind the groups ahead of it, one
// grant at a time per scope) and then in the limiter, and the limiter's MaxWait only sees the
// second part. So Config.MaxWait bounds the whole wait, Submit to grant: a group asks the
// limiter with a deadline at its oldest write's time left, and a write whose time is up is
// answered with a *ratelimit.RejectedError and dropped from the queue unsent, whether it is
// found so before its group asks or the limiter's wait ran into that deadline. When the
// limiter refuses a group, the writes that cannot make it (time left below the refusal's
// RetryAfter, and always the oldest, whose time set the bound) get the refusal; the others
// stay at the head of the queue and ask again. Once a group is cut, its writes are sent
// whatever happens to their callers: Send runs on context.WithoutCancel of the caller's ctx
// (ended only when Close's deadline passes), so a client hanging up cannot abort a write
// half-way (GHL may or may not have applied it); Send must bound itself (the proxy's round
// trip has its own upstream timeout). Submit then waits for the answer even if its ctx
// ended. Nothing is ever resent: a 429 or a timeout from GHL is the caller's answer; a
// refused combined call is split (above), each write sent for the first time alone.
package batcher

import (
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

	"github.com/ghlproxy/ghlproxy/internal/metrics"
	"github.com/ghlproxy/ghlproxy/internal/upstream"
	"github.com/ghlproxy/ghlproxy/ratelimit"
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
	// Bulk, when non-nil (and Config.Bulk), lets this write go out in one bulk call with
	// other writes of the same Bulk.Key to other entities. Needs a non-empty Entity.
	Bulk *Bulk
	// Sending, when set, is called right before a call that carries this write goes
	// upstream, whichever write's Send makes it: the proxy records there that the write may
	// now be applied. An error takes the write out of the call unsent and its caller gets
	// the error; when that was the call's first write, the next one makes the call.
	Sending func() error
	// Background puts the write in the limiter's background lane (X-Ghlproxy-Priority:
	// background): a scope whose queued writes are all background asks only for tokens
	// nobody in the app's lane asks for. While any app write is queued the scope's groups
	// ask in the app's lane (the ones ahead of it came first), and an app write arriving
	// while a background group waits for its grant makes the loop ask again that way.
	Background bool
}

// Bulk describes the bulk call a write may share. Writes with one Key must differ only in
// the entity they write (same operation, credential, Version and arguments): the bulk call
// for their ids must then do what their single calls would have done, each on its entity.
type Bulk struct {
	Key string
	// ID is the write's entity in the bulk call (e.g. the contact id).
	ID string
	// Send makes one bulk call for ids (distinct, in arrival order) and returns one answer
	// per id, in the same order, each in the shape of the single call's answer; a
	// *BulkRefused when GHL answered the call as a whole with an error; any other error
	// answers every write of the call. Called instead of Write.Send, as Send is, when the
	// call carries two writes or more; a lone write goes out with its own Send.
	Send func(ctx context.Context, ids []string) ([]*upstream.Response, error)
}

// BulkRefused is what Bulk.Send returns when GHL answered the bulk call as a whole with a
// non-2xx status, so there is no answer per write to split out.
type BulkRefused struct{ Resp *upstream.Response }

func (e *BulkRefused) Error() string {
	return "batcher: GHL refused the bulk call with status " + strconv.Itoa(e.Resp.Status)
}

// Info describes the group a write went out in, for X-Ghlproxy-Batch.
type Info struct {
	ID   string
	Size int // writes in the group, before merging
	// Merged is how many writes the caller's upstream call carried: 1 unmerged, k > 1 when
	// k writes were merged into one call (all k callers got that call's answer).
	Merged int
	// Bulk is how many writes (one per entity) the caller's bulk call carried; 0 when the
	// write did not go out in a bulk call. Each caller got its own entity's answer.
	Bulk int
	// Superseded says a later write of the caller's entity rode in the same merged call:
	// the later one is the entity's latest, so the caller's answer should not be replayed
	// to a retry of this write (the retry is a new intent) and its invalidation is the
	// later one's.
	Superseded bool
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
	// Merge lets consecutive writes with one MergeKey of an entity become one call, while
	// the earlier one is queued or waits for its entity's previous call to finish.
	Merge bool
	// Bulk lets writes with one Write.Bulk.Key to distinct entities go out as one bulk call
	// of at most Max writes, taking one token.
	Bulk bool
	// Coalesce holds a call of mergeable writes (Merge on, a MergeKey) until its first
	// write has waited this long, so later updates of its entity merge into it
	// (batch.coalesce, default 0: held no longer than Linger). Keep it below MaxWait.
	Coalesce time.Duration
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
	// tails holds, per entity, the last call cut for that entity until it has finished: the
	// next call of the entity waits for it, and a write may merge into it while it waits
	// for the one before.
	tails map[string]*upstreamCall
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
	// askCancel cancels the loop's outstanding limiter wait (nil when none) with a cause:
	// errAskersGone when every write it was for has been cancelled, errPreempted when an
	// app write arrived while it asked in the background lane (askBackground).
	askCancel     context.CancelCauseFunc
	askBackground bool
}

var (
	errAskersGone = errors.New("batcher: every write of the ask is gone")
	errPreempted  = errors.New("batcher: an app write arrived while a background group asked")
)

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
		tails:    make(map[string]*upstreamCall),
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
	if c := b.tails[w.Entity]; p.fields != nil && c != nil && c.accepts(p) && !s.holds(w.Entity) {
		// The entity's latest call is cut but waits for the call before it: it has not
		// been sent, so w merges into it at no cost in tokens or delay (w would have to
		// wait for it anyway).
		c.writes = append(c.writes, p)
		b.arrived++
		if b.enqueued != nil {
			b.enqueued(w)
		}
		b.mu.Unlock()
		r := <-p.done
		return r.resp, r.info, r.err
	}
	if len(s.queue) >= b.cfg.MaxQueue {
		b.mu.Unlock()
		return nil, Info{}, fmt.Errorf("%w: %d writes already queued for this scope (batch max_queue)", ErrQueueFull, b.cfg.MaxQueue)
	}
	p.at = b.cfg.Now()
	p.queued = true
	s.queue = append(s.queue, p)
	b.m.QueueDepth.WithLabelValues("batch").Inc()
	if !w.Background && s.askBackground && s.askCancel != nil {
		s.askCancel(errPreempted) // the loop asks again, in the app's lane, with w in the group
	}
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
			s.askCancel(errAskersGone)
		}
		b.mu.Unlock()
		wake(s)
		return nil, Info{}, fmt.Errorf("%w: %w", upstream.ErrNotSent, ctx.Err())
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
