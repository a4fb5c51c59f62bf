package ratelimit

import (
	"context"
	"errors"
	"math"
	"time"
)

// Waiting for a token: the interactive path reserves its slot in one decision and sleeps
// once; background and warm requests queue locally and ask when they are at the head.

// Wait takes n tokens of scope (the credential's ScopeKey, already hashed) for a request of
// priority p, queueing up to MaxWait (or ctx's deadline, if sooner). It returns
// *RejectedError when the tokens cannot be had in time — decided up front from the queue,
// not after waiting — and ctx.Err() when ctx ends first. A reserved token is not returned
// when ctx ends during the wait.
func (l *Limiter) Wait(ctx context.Context, scopeKey string, n int, p Priority) (Grant, error) {
	if n < 1 {
		n = 1
	}
	if p < Interactive || p > Warm {
		p = Background // not a lane: never ahead of the app's requests
	}
	if err := ctx.Err(); err != nil {
		return Grant{}, err
	}
	s := l.scope(scopeKey)
	start := l.cfg.Now()
	cost, refused := l.pace(s, p, start)
	if refused {
		return Grant{}, l.dailyRejection(s)
	}
	w := &wait{l: l, s: s, ctx: ctx, start: start, n: n, cost: cost, p: p, maxWait: l.cfg.MaxWait}
	if dl, ok := ctx.Deadline(); ok {
		w.maxWait = min(w.maxWait, time.Until(dl)) // deadlines are on the real clock
	}
	if d, ok := ctx.Value(maxWaitKey{}).(time.Duration); ok {
		w.maxWait = min(w.maxWait, d)
	}
	defer w.done()
	var g Grant
	var err error
	if p == Interactive {
		g, err = w.reserve(start)
	} else {
		g, err = w.queue()
	}
	if err == nil {
		l.waitHist[p].Observe(g.Waited.Seconds())
	}
	return g, err
}

// wait is one call of Wait.
type wait struct {
	l       *Limiter
	s       *scope
	ctx     context.Context
	start   time.Time
	n       int
	cost    float64 // tokens each of the n costs: 1, more when the day is paced (pacing.go)
	p       Priority
	maxWait time.Duration
	queued  bool
	entry   *queueEntry
}

// markQueued counts the request as waiting (queue depth, in all and in its lane) from its
// first sleep on.
func (w *wait) markQueued() {
	if !w.queued {
		w.queued = true
		w.l.m.QueueDepth.WithLabelValues("ratelimit").Inc()
		w.l.laneDepth[w.p].Inc()
		w.s.waiting[w.p].Add(1)
	}
}

func (w *wait) done() {
	if w.queued {
		w.l.m.QueueDepth.WithLabelValues("ratelimit").Dec()
		w.l.laneDepth[w.p].Dec()
		w.s.waiting[w.p].Add(-1)
	}
	if w.entry != nil {
		w.s.dequeue(w.entry)
	}
}

func (w *wait) args(mode int, maxWait time.Duration) takeArgs {
	return takeArgs{
		n: float64(w.n) * w.cost, mode: mode, maxWait: float64(maxWait.Microseconds()),
		warmReserve: w.l.warmReserve(w.s), dailyReserve: float64(w.l.cfg.DailyReserve),
	}
}

func (w *wait) elapsed() time.Duration { return w.l.cfg.Now().Sub(w.start) }

// reserve is the interactive path: one decision that grants now or reserves a future slot,
// then one sleep. If GHL pauses the scope (429, Remaining 0) while the request sleeps and its
// slot lies inside the pause, the slot was planned on a budget GHL just contradicted: it asks
// the bucket again and lands after the pause, behind what the bucket already promised, one
// emission interval after the previous waiter. Nothing is given back: the pause already
// emptied the bucket up to its end, which swallowed the voided slots (giving them back as
// well let every waiter of the pause take the same slot, its end, and all leave at once).
// A slot after the pause's end still holds.
//
// now is when the request asks (its start, or later after a pause); a reservation made, it
// leaves the local queue (if it was in one) so the next waiter can ask.
func (w *wait) reserve(now time.Time) (Grant, error) {
	for {
		_, paused := w.s.pause()
		d, fb := w.l.take(w.ctx, w.s, w.args(modeReserve, w.maxWait-now.Sub(w.start)), now)
		if !d.granted {
			return Grant{}, w.l.rejection(d, micros(d.wait))
		}
		w.leaveQueue()
		if d.wait <= 0 {
			return Grant{Waited: now.Sub(w.start), Remaining: tokensLeft(d.tokens), Fallback: fb}, nil
		}
		// The slot on the local clock, from before the call: with Redis it is a little later,
		// so a slot near a pause's end counts as inside it.
		slot := now.Add(micros(d.wait))
		again, err := w.sleepReserved(micros(d.wait), slot, paused)
		if err != nil {
			return Grant{}, err
		}
		if !again {
			return Grant{Waited: w.elapsed(), Remaining: tokensLeft(d.tokens), Fallback: fb}, nil
		}
		now = w.l.cfg.Now()
	}
}

var errPaused = errors.New("ratelimit: scope paused")

// sleepReserved sleeps until a reserved slot; again reports that a pause announced meanwhile
// covers the slot.
func (w *wait) sleepReserved(d time.Duration, slot time.Time, paused <-chan struct{}) (again bool, err error) {
	w.markQueued()
	ctx, cancel := context.WithCancelCause(w.ctx)
	defer cancel(nil)
	go func() {
		for {
			select {
			case <-paused:
			case <-ctx.Done():
				return
			}
			var end time.Time
			end, paused = w.s.pause()
			if slot.Before(end.Add(pauseSlack)) {
				cancel(errPaused)
				return
			}
		}
	}()
	if err := w.l.sleep(ctx, d); err != nil {
		if w.ctx.Err() == nil && context.Cause(ctx) == errPaused {
			return true, nil
		}
		return false, err
	}
	return false, nil
}

// queue is the background and warm path: the replica's background and warm requests of the
// scope line up locally (background first, then arrival order), and only the head asks the
// bucket, which grants only tokens that are free now; otherwise the head sleeps for as long
// as the bucket says and asks again. Interactive reservations therefore always go first:
// background work never delays the app's own requests, and under a demand above the budget
// it is refused at its wait bound rather than served before them.
func (w *wait) queue() (Grant, error) {
	if w.p == Warm {
		if dr := w.s.dailyRemaining(); dr >= 0 && dr < float64(w.l.cfg.DailyReserve) {
			return Grant{}, w.l.dailyRejection(w.s)
		}
	}
	w.entry = w.s.enqueue(w.p)
	mode := modeOf(w.p)
	for {
		if err := w.awaitHead(); err != nil {
			return Grant{}, err
		}
		now := w.l.cfg.Now()
		d, fb := w.l.take(w.ctx, w.s, w.args(mode, 0), now)
		if d.dailyRefused {
			return Grant{}, w.l.dailyRejection(w.s)
		}
		if d.granted {
			if d.wait > 0 { // a group larger than the burst reserved its slot
				w.markQueued()
				if err := w.l.sleep(w.ctx, micros(d.wait)); err != nil {
					return Grant{}, err
				}
			}
			return Grant{Waited: w.elapsed(), Remaining: tokensLeft(d.tokens), Fallback: fb}, nil
		}
		retry := micros(d.wait)
		if w.elapsed()+retry > w.maxWait {
			return Grant{}, w.l.rejection(d, retry)
		}
		w.markQueued()
		if err := w.l.sleep(w.ctx, retry); err != nil {
			return Grant{}, err
		}
	}
}

// leaveQueue takes the request out of the scope's local queue (background and warm) once it
// holds a reservation: the next waiter need not wait for its slot to pass.
func (w *wait) leaveQueue() {
	if w.entry != nil {
		w.s.dequeue(w.entry)
		w.entry = nil
	}
}

// awaitHead blocks until the request is first in its scope's local queue.
func (w *wait) awaitHead() error {
	for {
		head, changed := w.s.isHead(w.entry)
		if head {
			return nil
		}
		w.markQueued()
		left := w.maxWait - w.elapsed()
		if left <= 0 {
			return w.l.rejection(decision{eff: w.l.effectiveOf(w.s)}, time.Duration(float64(w.n)*w.l.effectiveOf(w.s).T)*time.Microsecond)
		}
		t := time.NewTimer(left)
		select {
		case <-changed:
			t.Stop()
		case <-t.C:
		case <-w.ctx.Done():
			t.Stop()
			return w.ctx.Err()
		}
	}
}

// pauseSlack: pause ends closer than this are the same pause, seen a round trip apart.
const pauseSlack = 5 * time.Millisecond

func tokensLeft(t float64) int { return max(0, int(math.Floor(t))) }

// micro is t on the buckets' µs scale.
func micro(t time.Time) float64 { return float64(t.UnixNano()) / 1e3 }

func micros(us float64) time.Duration {
	return time.Duration(math.Ceil(us)) * time.Microsecond
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// rejection builds the sidecar's 429 from a decision: GHL's learned window when known,
// else what the bucket allows per GHL's default window.
func (l *Limiter) rejection(d decision, retry time.Duration) *RejectedError {
	e := &RejectedError{RetryAfter: retry, Remaining: tokensLeft(d.tokens), Interval: GHLWindow}
	if d.lmax > 0 && d.lint > 0 {
		e.Limit, e.Interval = int(d.lmax), time.Duration(d.lint)*time.Millisecond
	} else if d.eff.T > 0 {
		e.Limit = int(d.eff.burst + float64(GHLWindow.Microseconds())/d.eff.T)
	}
	return e
}

// dailyRetry is the Retry-After of a warm request refused by the daily reserve: GHL does not
// say when its day resets, so the warming loop just tries again later.
const dailyRetry = time.Minute

func (l *Limiter) dailyRejection(s *scope) *RejectedError {
	e := l.rejection(decision{eff: l.effectiveOf(s)}, dailyRetry)
	return e
}
