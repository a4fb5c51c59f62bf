// Package dedupe folds identical requests: concurrent ones share one upstream call, and for
// a window after it finished later ones get its stored answer — across every replica that
// shares the store. GHL has no idempotency keys, so this is what makes client retries of
// writes safe.
//
// Within a replica, callers of one key share an in-process call (no Redis round trip per
// waiter) and recent answers are replayed from a byte-bounded in-process store — but for
// answers the cache holds (Attempt.Cached), which the fold keeps no copy of. Across
// replicas, Redis holds a lease-style marker for the call in flight, the stored answers and
// the invalidation index; replicas learn that a call finished, or that a write made
// replays wrong, through one pub/sub subscription per Fold.
//
// Names: the package is named for its configuration (dedupe.*) and its header
// (X-Ghlproxy-Dedupe: shared or replay), which users and the chart depend on; what it builds
// is a Fold, the README's word for what it does (folding identical requests), as in
// X-Ghlproxy-No-Fold. One concept, the config's name for the package, the README's for the
// type.
package dedupe

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/ghlproxy/ghlproxy/internal/luapipe"
	"github.com/ghlproxy/ghlproxy/internal/metrics"
	"github.com/ghlproxy/ghlproxy/internal/pending"
	"github.com/ghlproxy/ghlproxy/internal/upstream"
)

// Outcome says how a call to Do was answered.
type Outcome uint8

const (
	// Leader made the upstream call itself.
	Leader Outcome = iota
	// Shared joined a call in flight (X-Ghlproxy-Dedupe: shared).
	Shared
	// Replay got the stored answer of a call that finished within the window
	// (X-Ghlproxy-Dedupe: replay).
	Replay
)

func (o Outcome) String() string {
	switch o {
	case Shared:
		return "shared"
	case Replay:
		return "replay"
	}
	return "leader"
}

// Options describe one foldable call.
type Options struct {
	// Window is how long the answer is replayed after the call finished. 0 uses
	// Config.Window; a negative window shares only concurrent calls.
	Window time.Duration
	// Write marks calls that change state upstream: a waiter never takes over a write
	// unless the leader provably never sent it.
	Write bool
	// Tags are the invalidation tags of the call (scope-prefixed): a read's, or a write's
	// entity tags. A Forget of one of them drops the replay of the call's answer, on every
	// replica: a write made a read's answer wrong, and a later write to the same entity
	// makes an earlier write's retry a new intent (dnd on, off, on: the third is sent). A
	// call in flight when the Forget comes is not replayed either — a read that may have
	// read before the write, or a write already sent, whose order against the other is
	// unknown — except the call the Forget comes from (Forget's except).
	Tags []string
	// SentByFetch says that fetch calls Attempt.MarkSent itself right before the request
	// leaves for upstream (after queueing for the rate limiter or a batch). When false, a
	// write counts as sent from the moment fetch starts: safe, but a leader that dies
	// while still queued then fails its waiters instead of letting one of them take over.
	SentByFetch bool
	// FromCache loads the answer of a call whose fetch said the cache holds it
	// (Attempt.Cached), for a waiter on another replica; false when the cache no longer
	// holds it (an invalidation dropped it), and the waiter then makes the call itself.
	// nil: such a waiter always does.
	FromCache func(ctx context.Context) (*upstream.Response, bool)
	// Key seals what this call leaves in Redis (identity.Credential.EncKey): the fold key
	// already includes the credential's hash, so every caller that can fold with this call
	// holds the same key, and a reader of Redis sees no GHL data. Required with Redis: a
	// call without a Key folds within this replica only and leaves nothing in Redis.
	Key *[32]byte
}

// ReplayWriteServerErrors decides what a write answered 5xx leaves behind. A 502 or 504 on
// a POST may or may not have been applied upstream, and a client retry of it is exactly the
// duplicate GHL cannot prevent; so the answer is replayed for the window like any other,
// and a client can only retry a genuinely failed write once the window is over (or with a
// changed body, or with X-Ghlproxy-No-Fold). Reads answered 5xx are never replayed: a retry
// after a 502 reaches upstream again.
const ReplayWriteServerErrors = true

// Config tunes a Fold. Zero fields take the defaults named.
type Config struct {
	// Window is the default replay window (30s); Options.Window overrides it per call.
	Window time.Duration
	// WaitBound is how long a caller waits for a call led by another replica before it
	// gets a *WaitError (35s): longer than an upstream call can take.
	WaitBound time.Duration
	// CallTimeout bounds the leader's fetch, which runs detached from every caller's
	// context (30s). Keep it below WaitBound.
	CallTimeout time.Duration
	// LeaseTTL is the lifetime of the in-flight marker in Redis, renewed by the leader
	// while it runs (3s). A dead leader is noticed within about twice this.
	LeaseTTL time.Duration
	// Prefix starts every Redis key and channel ("ghlproxy").
	Prefix string
	// MaxEntryBytes: answers with a bigger body are shared with concurrent callers but
	// not stored for replay (1 MiB).
	MaxEntryBytes int
	// LocalBytes bounds the bodies held by the in-process replay store (64 MiB).
	LocalBytes int
}

// DefaultWindow is Config.Window's default, and dedupe.window's.
const DefaultWindow = 30 * time.Second

func (c *Config) defaults() error {
	if c.Window == 0 {
		c.Window = DefaultWindow
	}
	if c.WaitBound == 0 {
		c.WaitBound = 35 * time.Second
	}
	if c.CallTimeout == 0 {
		c.CallTimeout = 30 * time.Second
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = 3 * time.Second
	}
	if c.Prefix == "" {
		c.Prefix = "ghlproxy"
	}
	if c.MaxEntryBytes == 0 {
		c.MaxEntryBytes = 1 << 20
	}
	if c.LocalBytes == 0 {
		c.LocalBytes = 64 << 20
	}
	switch {
	case c.Window < 0:
		return fmt.Errorf("dedupe.window: must not be negative, got %s", c.Window)
	case c.LeaseTTL < 10*time.Millisecond:
		return fmt.Errorf("dedupe: lease TTL %s is too short (at least 10ms)", c.LeaseTTL)
	case c.WaitBound < 0 || c.CallTimeout < 0:
		return errors.New("dedupe: wait bound and call timeout must not be negative")
	}
	return nil
}

// Fold folds identical calls. It is safe for concurrent use.
type Fold struct {
	cfg   Config
	rdb   redis.UniversalClient // nil: in-process only
	log   *slog.Logger
	saved prometheus.Counter
	now   func() time.Time // seam for the in-process replay clock

	// oneScript: one script run may touch several hash tags (luapipe.OneScript).
	oneScript bool

	mu     sync.Mutex
	calls  map[string]*call // in flight on this replica
	replay store            // recent answers, in process

	ps      *redis.PubSub
	closing chan struct{}
	bg      sync.WaitGroup // dispatcher and calls in flight
	once    sync.Once

	scripts scripts
	killed  chan struct{} // test seam: leaders abandon their lease as if the process died

	// Tags whose Forget Redis has not confirmed, each until its replays must be gone
	// anyway; retried by forgetLoop. Calls carrying one bypass Redis meanwhile.
	unforgot   *pending.Set
	forgetWake chan struct{}
	// The excepts of those Forgets by tag, each with the number of failed Forgets that
	// named it (guarded by mu), so that a retry spares exactly the writes the first attempt
	// spared.
	unforgotExcept map[string]map[string]int

	// Names this Fold in its Forget notices, so it skips its own: it forgot locally
	// before and after the tombstones went in, and an echo arriving later would only spoil
	// reads begun after the write returned.
	origin string

	forgets atomic.Int64 // Forgets heard from other replicas: a test seam

	// stopped ends every fetch at once when Shutdown's deadline passes (abort).
	stopped context.Context
	abort   context.CancelFunc
}

// New builds a Fold. With rdb nil it folds within this process only (embedded mode); with
// a client it folds across every replica sharing that Redis (single node, Sentinel or
// Cluster: every multi-key operation stays within one hash slot). m may be nil.
func New(cfg Config, rdb redis.UniversalClient, m *metrics.Metrics, log *slog.Logger) (*Fold, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f := &Fold{
		cfg:     cfg,
		rdb:     rdb,
		log:     log.With("component", "dedupe"),
		saved:   prometheus.NewCounter(prometheus.CounterOpts{Name: "unregistered"}),
		now:     time.Now,
		calls:   make(map[string]*call),
		replay:  newStore(cfg.LocalBytes),
		closing: make(chan struct{}),
		killed:  make(chan struct{}),

		oneScript: rdb != nil && luapipe.OneScript(rdb),

		unforgot:       pending.New(nil),
		forgetWake:     make(chan struct{}, 1),
		unforgotExcept: make(map[string]map[string]int),
		origin:         newToken(),
	}
	f.stopped, f.abort = context.WithCancel(context.Background())
	if m != nil {
		f.saved = m.UpstreamSaved.WithLabelValues(metrics.SavedDedupe)
		f.unforgot = pending.New(m.InvalidationsPending.WithLabelValues("fold"))
	}
	if rdb != nil {
		f.scripts = newScripts()
		f.subscribe()
		f.bg.Add(1)
		go f.forgetLoop()
	}
	return f, nil
}

// call is one fold in flight on this replica: every local caller of the key waits on done.
type call struct {
	key   string
	opt   Options
	fetch Fetch
	start time.Time
	wake  chan struct{} // pub/sub: a call of this key finished somewhere, look again
	// looked is closed once the call has first looked in Redis (coordinate): a test seam,
	// so that a test orders a Forget after a waiter found the leader.
	looked chan struct{}

	// Guarded by Fold.mu: a Forget of one of the call's tags arrived while it ran, so its
	// answer may predate the write and must not be replayed.
	forgotten bool
	// Guarded by Fold.mu: the callers on this replica still waiting for the call, and the
	// mark of the current attempt at it (see Attempt.abandon).
	waiters int
	sent    *Attempt

	done    chan struct{}
	resp    *upstream.Response
	err     error
	outcome Outcome // of the caller that started the call
}

// Do runs fetch once for all identical calls of key: concurrent ones share its answer, and
// ones within the window after it finished get it replayed. key is a fingerprint (no
// secrets: it names Redis keys).
//
// The fetch runs on a context detached from every caller (context.WithoutCancel plus
// Config.CallTimeout), so a caller who hangs up does not cancel it for the others, and its
// answer is still stored for their retries. Each caller, the first included, stops waiting
// when its own ctx ends and gets ctx.Err().
//
// The returned Response is shared by every caller and the replay store: nobody may modify
// it. Errors other than ctx.Err() and fetch's own: *WaitError, *LeaderLostError,
// *UnconfirmedError.
func (f *Fold) Do(ctx context.Context, key string, o Options, fetch Fetch) (*upstream.Response, Outcome, error) {
	f.mu.Lock()
	if e, ok := f.replay.get(key, f.now()); ok && f.replaysLocally(o) {
		resp, err := e.resp, e.err
		f.mu.Unlock()
		if err == nil {
			f.saved.Inc()
		}
		return resp, Replay, err
	}
	c, joined := f.calls[key]
	if joined && c.sent != nil && c.sent.abandoned() {
		joined = false // its callers left; it sends nothing and answers nobody
	}
	if joined && c.forgotten {
		// A write landed while that call ran: its answer may predate the write, and this
		// caller began after it. A new call takes the key; the old one still answers its
		// own callers.
		joined = false
	}
	if !joined {
		c = &call{key: key, opt: o, fetch: fetch, start: f.now(), wake: make(chan struct{}, 1), looked: make(chan struct{}), done: make(chan struct{})}
		f.calls[key] = c
		f.bg.Add(1)
		go f.run(context.WithoutCancel(ctx), c)
	}
	c.waiters++
	f.mu.Unlock()

	select {
	case <-c.done:
	case <-ctx.Done():
		f.leave(c)
		return nil, Shared, ctx.Err()
	}
	out := c.outcome
	if joined && out == Leader {
		out = Shared
	}
	if out != Leader && c.err == nil {
		f.saved.Inc()
	}
	return c.resp, out, c.err
}

// leave is a caller of c giving up. When it was the last one on this replica and nothing
// has been sent yet, the call is abandoned: its fetch stops (a read queued for a token
// spends none, a queued write leaves the batcher unsent), and later callers start a new
// call. With Redis, waiters on other replicas then take the call over.
func (f *Fold) leave(c *call) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c.waiters--
	if c.waiters > 0 || c.sent == nil || !c.sent.abandon() {
		return
	}
	if f.calls[c.key] == c {
		delete(f.calls, c.key)
	}
}

func (f *Fold) run(ctx context.Context, c *call) {
	defer f.bg.Done()
	if f.rdb == nil {
		sent := f.newMark(c)
		resp, err := f.fetch(ctx, c, sent)
		k := f.keep(c, resp, err, sent)
		f.finish(c, resp, err, Leader, k, f.now().Add(f.window(c.opt)))
		return
	}
	if c.opt.Key == nil || f.unforgot.Any(c.opt.Tags) {
		// Nothing unsealed goes into Redis. And a write on this replica could not
		// invalidate these tags in Redis yet: what Redis holds for them may predate it.
		f.leadLocal(ctx, c)
		return
	}
	f.coordinate(ctx, c)
}

// newMark starts the mark of an attempt at c. A call all of whose callers left before it
// got here is abandoned at once.
func (f *Fold) newMark(c *call) *Attempt {
	s := &Attempt{}
	f.mu.Lock()
	c.sent = s
	if c.opt.Write {
		c.forgotten = false // a write about to lead: only Forgets after it is sent count
	}
	if c.waiters == 0 && s.abandon() && f.calls[c.key] == c {
		delete(f.calls, c.key)
	}
	f.mu.Unlock()
	return s
}

// fetch runs the caller's fetch on the detached context, handing it the attempt sent.
func (f *Fold) fetch(ctx context.Context, c *call, sent *Attempt) (resp *upstream.Response, err error) {
	ctx, cancel := context.WithTimeout(ctx, f.cfg.CallTimeout)
	defer cancel()
	defer context.AfterFunc(f.stopped, cancel)() // Shutdown's deadline ends it too
	f.mu.Lock()
	sent.cancel = cancel // read by abandon, under f.mu
	f.mu.Unlock()
	if sent.abandoned() {
		return nil, errAbandoned
	}
	defer func() {
		if p := recover(); p != nil {
			resp, err = nil, fmt.Errorf("dedupe: fetch panicked: %v", p)
		}
	}()
	if c.opt.Write && !c.opt.SentByFetch {
		if err := sent.MarkSent(); err != nil {
			return nil, err
		}
	}
	resp, err = c.fetch(ctx, sent)
	if err == nil && resp == nil {
		err = errors.New("dedupe: fetch returned neither a response nor an error")
	}
	return resp, err
}

// what a finished call leaves for later identical calls
type keep uint8

const (
	keepNothing     keep = iota // shared with concurrent callers only
	keepAnswer                  // replayed for the window
	keepUnconfirmed             // a sent write without an answer: replays get *UnconfirmedError
	keepCached                  // the cache holds the answer (Attempt.Cached): nothing kept here
)

// keep decides what a finished call leaves for replay; see ReplayWriteServerErrors.
func (f *Fold) keep(c *call, resp *upstream.Response, err error, sent *Attempt) keep {
	if err == nil && sent.cached.Load() {
		return keepCached // the cache answers later calls, whatever the window
	}
	if f.window(c.opt) <= 0 {
		return keepNothing
	}
	if err != nil {
		// Marked sent, but the error says it never left (a merged call's write sent alone
		// found no token): its retries are new, not "may have been applied".
		if c.opt.Write && sent.sent() && !errors.Is(err, upstream.ErrNotSent) {
			return keepUnconfirmed
		}
		return keepNothing
	}
	switch {
	case sent.noReplay.Load():
		return keepNothing
	case resp.Status == 401 || resp.Status == 403 || resp.Status == 429:
		return keepNothing // the caller may fix its token or wait; a retry must reach upstream
	case len(resp.Header["Set-Cookie"]) > 0:
		return keepNothing
	case len(resp.Body) > f.cfg.MaxEntryBytes:
		return keepNothing
	case resp.Status >= 500 && !(c.opt.Write && ReplayWriteServerErrors):
		return keepNothing
	}
	return keepAnswer
}

func (f *Fold) window(o Options) time.Duration {
	if o.Window == 0 {
		return f.cfg.Window
	}
	return o.Window
}

// finish hands the answer to every local caller and, when it may be replayed, keeps it in
// process until expires — never past the Redis copy's expiry, so a replica never replays
// what the shared store already dropped.
func (f *Fold) finish(c *call, resp *upstream.Response, err error, out Outcome, k keep, expires time.Time) {
	f.mu.Lock()
	if f.calls[c.key] == c {
		delete(f.calls, c.key)
	}
	if f.now().Before(expires) && f.replaysLocally(c.opt) {
		switch {
		case k == keepAnswer && !c.forgotten:
			f.replay.put(c.key, resp, nil, c.opt.Tags, expires)
		case k == keepUnconfirmed:
			f.replay.put(c.key, nil, &UnconfirmedError{Cause: err.Error()}, nil, expires)
		}
	}
	f.mu.Unlock()
	c.resp, c.err, c.outcome = resp, err, out
	close(c.done)
}

// replaysLocally says whether a call may be answered from the in-process replay store. A
// write with Redis may not: a later write on another replica ends its replay, and this
// replica learns of that by a pub/sub notice that can trail the next request — so a
// write's retry asks Redis (one round trip, for a retry) rather than replay a copy.
func (f *Fold) replaysLocally(o Options) bool { return f.rdb == nil || !o.Write }

// forgetLocal drops in-process replays carrying any of tags and marks calls in flight with
// them, so an answer fetched before the write is shared but not replayed: every read, and
// every write already sent — but not the call of key except, whose own write this is. A
// write still queued goes upstream after the write that forgets, so its answer stays
// replayable.
func (f *Fold) forgetLocal(tags []string, except string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.replay.forget(tags)
	for key, c := range f.calls {
		if c.forgotten || key == except || !intersects(c.opt.Tags, tags) {
			continue
		}
		// A write not yet leading (waiting for a call on another replica) is forgotten too:
		// the answer it may take from Redis could predate this write. One that leads
		// clears the mark until it is sent (lead).
		if !c.opt.Write || c.sent == nil || c.sent.state.Load() >= markSending {
			c.forgotten = true
		}
	}
}

func intersects(a, b []string) bool {
	for _, x := range a {
		for _, y := range b {
			if x == y {
				return true
			}
		}
	}
	return false
}

// Forget drops the replays of calls carrying any of tags, on every replica: a write made
// them wrong (see Options.Tags). except is the fold key of the write that forgets, when it
// runs under Do itself: its own answer, stored once its fetch returns, stays replayable.
// Other replicas drop their in-process copies when the pub/sub message arrives
// (milliseconds). An error means Redis did not confirm it: it is retried in the background
// until Redis does, and this replica folds calls carrying those tags within itself
// meanwhile.
func (f *Fold) Forget(ctx context.Context, tags []string, except string) error {
	_, finish := f.ForgetPart(tags, except)
	return finish(ctx)
}

// ForgetPart is Forget, with its work in Redis offered as a step of a script run another
// stage makes for the same invalidation (cache.Cache.InvalidateOwn's also), so that on a
// single Redis both are one command. It forgets on this replica at once; finish completes
// the Forget and returns Forget's error: with the step's outcome when the step ran, else
// (the other stage did not run it: a Cluster, no Redis, another Redis) by doing the work
// in Redis on its own. Call finish once, after the other stage's run.
func (f *Fold) ForgetPart(tags []string, except string) (step luapipe.Step, finish func(context.Context) error) {
	if len(tags) == 0 {
		return step, func(context.Context) error { return nil }
	}
	f.forgetLocal(tags, except)
	if f.rdb == nil {
		return step, func(context.Context) error { return nil }
	}
	notice := forgetNotice(f.origin, except, tags)
	ran := false
	var runErr error
	if f.oneScript {
		step = f.forgetStep(tags, except, notice)
		step.Done = func(_ any, err error) { ran, runErr = true, err }
	}
	return step, func(ctx context.Context) error {
		var err error
		if ran {
			err = f.forgot(ctx, tags, except, notice, runErr)
		} else {
			err = f.forgetShared(ctx, tags, except)
		}
		if err != nil {
			f.retryForget(tags, except)
		}
		return err
	}
}

// retryForget hands tags whose Forget failed to forgetLoop. A replay stored before the
// write lives at most CallTimeout (a fetch in flight) plus the window: past that there is
// nothing left to forget.
func (f *Fold) retryForget(tags []string, except string) {
	f.mu.Lock()
	for _, t := range tags {
		ex := f.unforgotExcept[t]
		if ex == nil {
			ex = make(map[string]int)
			f.unforgotExcept[t] = ex
		}
		ex[except]++
	}
	// Under mu with the excepts: redoForgets never sees an except without its tag pending.
	f.unforgot.Add(time.Now().Add(f.cfg.CallTimeout+f.cfg.Window), tags...)
	f.mu.Unlock()
	pending.Wake(f.forgetWake)
}

// forgetLoop re-runs unconfirmed Forgets: at once when one is handed over, then every
// LeaseTTL/3 while Redis keeps failing.
func (f *Fold) forgetLoop() {
	defer f.bg.Done()
	pending.Loop(f.closing, f.forgetWake, f.cfg.LeaseTTL/3, f.redoForgets)
}

// redoForgets retries the pending Forgets, one call per except they had; it reports
// whether any is left.
func (f *Fold) redoForgets() bool {
	items := f.unforgot.Due(time.Now())
	due := make(map[string]bool, len(items))
	for _, it := range items {
		due[it.Key] = true
	}
	type pair struct{ tag, except string }
	byExcept := map[string][]string{}
	counts := map[pair]int{}
	f.mu.Lock()
	for t, ex := range f.unforgotExcept {
		if !due[t] {
			if !f.unforgot.Any([]string{t}) {
				delete(f.unforgotExcept, t) // given up: its replays are gone anyway
			}
			continue // or added again since Due: the next round has it
		}
		for e, n := range ex {
			byExcept[e] = append(byExcept[e], t)
			counts[pair{t, e}] = n
		}
	}
	f.mu.Unlock()
	if len(items) == 0 {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), f.cfg.LeaseTTL)
	defer cancel()
	for except, tags := range byExcept {
		if err := f.forgetShared(ctx, tags, except); err != nil {
			f.log.Debug("retrying a fold invalidation Redis did not confirm", "tags", len(tags), "err", err)
			return true
		}
	}
	// Confirmed. A Forget of the same tag that failed meanwhile was added again: Done
	// keeps its tag and the count keeps its except, so the next round redoes it
	// (forgetting twice is harmless).
	f.mu.Lock()
	for p, n := range counts {
		if ex := f.unforgotExcept[p.tag]; ex != nil {
			if ex[p.except] -= n; ex[p.except] <= 0 {
				delete(ex, p.except)
			}
			if len(ex) == 0 {
				delete(f.unforgotExcept, p.tag)
			}
		}
	}
	f.mu.Unlock()
	f.unforgot.Done(items...)
	return f.unforgot.Len() > 0
}

// Close stops the subscription and waits for the calls in flight on this replica to
// finish, so their answers are stored for the other replicas: a call waiting for another
// replica gives up at once, a fetch runs to its end (bounded by what it calls: the
// batcher's and the transport's own bounds). Close the Redis client after Close.
func (f *Fold) Close() error { return f.Shutdown(context.Background()) }

// Shutdown is Close within ctx: when ctx ends first, the fetches still running are
// cancelled (their callers get an error, a write sent gets no answer and is replayed as
// "may have been applied"), and Shutdown returns once they have.
func (f *Fold) Shutdown(ctx context.Context) error {
	var err error
	f.once.Do(func() {
		close(f.closing)
		if f.ps != nil {
			err = f.ps.Close()
		}
		done := make(chan struct{})
		go func() { f.bg.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			f.abort()
			<-done
		}
	})
	return err
}

// kill makes this Fold behave like a replica killed with SIGKILL, for tests: leaders stop
// renewing their markers, never mark a write sent, and never store an answer.
func (f *Fold) kill() { close(f.killed) }
