package ratelimit

import (
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// scope is what one replica knows about one rate-limit scope: the last decision (for Stats),
// GHL's learned limit, pause and daily count (replies of the shared bucket carry them, so
// every replica learns what any replica observed), and the local queue of background and warm
// requests.
type scope struct {
	name string
	key  string // Redis key
	lim  limits // configured

	waiting [len(Lanes)]atomic.Int64 // requests of this replica sleeping or queued, per lane
	// redisMu lets one call per scope and replica at a time go to Redis: the script on one
	// key runs serially there anyway, and a burst of concurrent calls would only queue in
	// the connection pool and time out together, looking like a Redis outage.
	redisMu sync.Mutex
	asking  atomic.Int64 // interactive requests of this replica at redisMu or in Redis (lease sizing)

	mu         sync.Mutex
	touched    time.Time
	tokens     float64
	eff        limits
	fallback   bool
	pauseUntil time.Time
	paused     chan struct{} // closed and replaced when a new pause is announced
	pauseNews  bool          // a pause was recorded and not yet announced
	lmax, lint float64
	dr, dl     float64
	// The last decision of the shared bucket this replica saw: its token level (negative:
	// reserved debt) at sharedAt. A fallback bucket starts from this replica's share of it.
	sharedTokens float64
	sharedAt     time.Time
	nextSeq      uint64
	queue        []*queueEntry // background before warm, then arrival order
	queueChange  chan struct{} // closed and replaced whenever the head may have changed
	lease        leaseState
	// GHL's daily count as this replica last read it in an answer of its own, and when
	// (pacing.go); -1 unread.
	paceDr float64
	paceAt time.Time
	// What this replica last told the shared bucket of GHL's headers, and when (news).
	toldObs observation
	toldAt  time.Time
}

type queueEntry struct {
	p   Priority
	seq uint64
}

func newScope(name, key string, lim limits) *scope {
	return &scope{name: name, key: key, lim: lim, eff: lim, tokens: lim.burst, dr: -1, dl: -1, paceDr: -1,
		queueChange: make(chan struct{}), paused: make(chan struct{})}
}

// update records a decision made at now.
func (s *scope) update(d decision, now time.Time, fallback bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.touched, s.tokens, s.eff, s.fallback = now, d.tokens, d.eff, fallback
	if !fallback {
		s.sharedTokens, s.sharedAt = d.tokens, now
		if d.lmax == 0 && s.toldObs.lmax > 0 {
			// The bucket forgot the limit this replica told it (Redis restarted or failed
			// over): everything is news again.
			s.toldAt = time.Time{}
		}
	}
	if d.pauseLeft > 0 {
		s.extendPause(now.Add(micros(d.pauseLeft)))
	}
	if d.lmax > 0 && d.lint > 0 {
		s.lmax, s.lint = d.lmax, d.lint
	}
	if d.dr >= 0 {
		s.dr = d.dr
	}
	if d.dl >= 0 {
		s.dl = d.dl
	}
	// The bucket has now made a decision knowing every pause recorded so far: only now may
	// sleeping waiters wake to reserve again, or they could reserve a slot inside the pause.
	if s.pauseNews {
		close(s.paused)
		s.paused = make(chan struct{})
		s.pauseNews = false
	}
}

// learn applies an upstream response locally at once, before (or without) the shared bucket.
func (s *scope) learn(o observation, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if o.remaining >= 0 && o.remaining < s.lease.tokens {
		// GHL's window has less left than the lease holds (other clients spent it).
		s.voidLease()
		s.lease.tokens = o.remaining
	}
	if o.lmax > 0 && o.lint > 0 {
		s.lmax, s.lint = o.lmax, o.lint
	}
	if o.pause {
		iv := s.lint
		if iv <= 0 {
			iv = o.pauseDefault
		}
		s.extendPause(now.Add(time.Duration(iv) * time.Millisecond))
	}
	if o.dr >= 0 {
		s.dr = o.dr
		s.paceDr, s.paceAt = o.dr, now
	}
	if o.dl >= 0 {
		s.dl = o.dl
	}
}

// dailyEvery: a replica tells the shared bucket GHL's daily count at most this often while
// nothing else is new: it falls by one a call, and a second of it is noise against 200,000.
const dailyEvery = time.Second

// news reports whether an upstream response tells the shared bucket something it does not
// know from this replica: a pause, another advertised limit, fewer remaining than the bucket
// holds (other clients spent GHL's window), or a daily count not told for dailyEvery. Every
// other response would leave the bucket as it is, and costs no round trip.
func (s *scope) news(o observation, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.toldObs
	switch {
	case s.toldAt.IsZero(), o.pause:
		return true
	case o.lmax > 0 && o.lint > 0 && (o.lmax != t.lmax || o.lint != t.lint):
		return true
	case o.remaining >= 0 && o.remaining < s.sharedLevel(now)+1:
		return true
	case (o.dr >= 0 || o.dl >= 0) && now.Sub(s.toldAt) >= dailyEvery:
		return true
	case o.dl >= 0 && o.dl != t.dl:
		return true
	}
	return false
}

// remember records what the shared bucket now knows from this replica.
func (s *scope) remember(o observation, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if o.lmax <= 0 || o.lint <= 0 {
		o.lmax, o.lint = s.toldObs.lmax, s.toldObs.lint
	}
	s.toldObs, s.toldAt = o, now
}

// sharedLevel is the shared bucket's level at now as this replica last saw it, refilled since
// (a fallback decision in between does not count: it was made on the local bucket). Called
// with mu held.
func (s *scope) sharedLevel(now time.Time) float64 {
	if s.eff.T <= 0 || s.sharedAt.IsZero() {
		return s.sharedTokens
	}
	return math.Min(s.eff.burst, s.sharedTokens+float64(now.Sub(s.sharedAt).Microseconds())/s.eff.T)
}

// tokensAt is the bucket's level at now as this replica last saw it, refilled since.
// Called with mu held.
func (s *scope) tokensAt(now time.Time) float64 {
	if s.eff.T <= 0 {
		return s.tokens
	}
	return math.Min(s.eff.burst, s.tokens+float64(now.Sub(s.touched).Microseconds())/s.eff.T)
}

// extendPause records a pause until the given instant; the next update announces it.
// Called with mu held. Only a pause that ends noticeably later than the known one is news:
// every reply during a pause repeats it, a round trip apart.
func (s *scope) extendPause(until time.Time) {
	if !until.After(s.pauseUntil.Add(pauseSlack)) {
		return
	}
	s.pauseUntil = until
	s.pauseNews = true
	s.voidLease() // planned on a budget GHL just contradicted
}

// pause is the end of the latest pause recorded and a channel closed when a new pause is
// announced, read together so that no announcement falls between them.
func (s *scope) pause() (until time.Time, announced <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pauseUntil, s.paused
}

// sync brings a local bucket up to what this replica knows about the scope: the learned
// limit, pause and daily count (replies of the shared bucket carry what any replica
// observed). For a fallback bucket of limits c it also returns the earliest tat the bucket
// may have: the last shared decision's token level, this replica's share of it, refilling at
// the share's rate since; ok is false when no shared decision was seen.
func (s *scope) sync(b *bucketState, c limits) (floor float64, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lmax > 0 && s.lint > 0 {
		b.lmax, b.lint = s.lmax, s.lint
	}
	if s.dr >= 0 {
		b.dr = s.dr
	}
	if s.dl >= 0 {
		b.dl = s.dl
	}
	if !s.pauseUntil.IsZero() {
		b.pause = max(b.pause, micro(s.pauseUntil)) // local clock in µs, the memStore's
	}
	if s.sharedAt.IsZero() {
		return 0, false
	}
	e := c.effective(b.lmax, b.lint)
	level := min(s.sharedTokens/max(1, c.share), e.burst)
	return micro(s.sharedAt) + (e.burst-level)*e.T, true
}

func (s *scope) dailyRemaining() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dr
}

func (s *scope) idle(now time.Time, idle time.Duration) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queued() == 0 && len(s.queue) == 0 && now.Sub(s.touched) > idle
}

func (s *scope) enqueue(p Priority) *queueEntry {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nextSeq++
	e := &queueEntry{p: p, seq: s.nextSeq}
	i := len(s.queue)
	for i > 0 && s.queue[i-1].p > p {
		i--
	}
	s.queue = append(s.queue, nil)
	copy(s.queue[i+1:], s.queue[i:])
	s.queue[i] = e
	if i == 0 {
		s.signal()
	}
	return e
}

func (s *scope) dequeue(e *queueEntry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, q := range s.queue {
		if q == e {
			s.queue = append(s.queue[:i], s.queue[i+1:]...)
			if i == 0 {
				s.signal()
			}
			return
		}
	}
}

// signal wakes every queued request to look at the head again. Called with mu held.
func (s *scope) signal() {
	close(s.queueChange)
	s.queueChange = make(chan struct{})
}

// queued is the number of this replica's requests waiting in every lane.
func (s *scope) queued() int64 {
	var n int64
	for i := range s.waiting {
		n += s.waiting[i].Load()
	}
	return n
}

func (s *scope) isHead(e *queueEntry) (bool, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.queue) > 0 && s.queue[0] == e, s.queueChange
}

func (s *scope) stats(now time.Time, dailyLimit int) ScopeStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	eff := s.eff
	tokens := s.tokensAt(now)
	st := ScopeStats{
		Scope: s.name, Tokens: math.Round(tokens*100) / 100, Queue: int(s.queued()),
		QueueByLane:    map[string]int{},
		DailyRemaining: int(s.dr), DailyLimit: int(s.dl),
		LimitMax: int(s.lmax), LimitInterval: time.Duration(s.lint) * time.Millisecond,
		Burst: int(eff.burst), Fallback: s.fallback, Updated: s.touched,
	}
	for _, p := range Lanes {
		st.QueueByLane[p.String()] = int(s.waiting[p].Load())
	}
	if eff.T > 0 {
		st.Rate = 1e6 / eff.T
	}
	if s.dl < 0 {
		st.DailyLimit = dailyLimit
	}
	if s.dr < 0 {
		st.DailyRemaining = st.DailyLimit
	}
	if s.pauseUntil.After(now) {
		st.PausedUntil = s.pauseUntil
	}
	return st
}
