package batcher

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ghlproxy/ghlproxy/ratelimit"
)

// The loop of one scope: when a group asks for its tokens, and what happens to writes
// that wait too long.

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
		ready, held := b.ready(b.plan(s.queue), now)
		if len(ready) == 0 { // every call is held for coalescing
			b.mu.Unlock()
			select {
			case <-s.wake:
			case <-b.cfg.After(held.Sub(now)):
			}
			continue
		}
		head := b.head(ready, now)
		calls, writes := len(head), 0
		for _, ws := range head {
			writes += len(ws)
		}
		due := head[0][0].at.Add(b.cfg.Linger)
		if writes < b.cfg.Max && calls < b.cfg.Min && !b.closed && now.Before(due) {
			if !held.IsZero() && held.Before(due) {
				due = held
			}
			b.mu.Unlock()
			select {
			case <-s.wake:
			case <-b.cfg.After(due.Sub(now)):
			}
			continue
		}
		askers := make([]*pending, 0, writes) // oldest ready first
		for _, ws := range head {
			askers = append(askers, ws...)
		}
		// The app's lane while any app write waits in this scope, even behind the head:
		// the head came first, and the app's write must not wait for background tokens.
		lane := ratelimit.Background
		if b.appWaiting(s) {
			lane = ratelimit.Interactive
		}
		ctx, cancelCause := context.WithCancelCause(b.base)
		cancel := func() { cancelCause(nil) }
		if b.cfg.MaxWait > 0 {
			// Bounded by the oldest write's time left: Close's cancel still reaches it.
			var stop context.CancelFunc
			ctx, stop = context.WithTimeout(ctx, b.left(askers[0], now))
			cancel = func() { stop(); cancelCause(nil) }
		}
		s.askCancel, s.askBackground = cancelCause, lane == ratelimit.Background
		b.mu.Unlock()

		var grant ratelimit.Grant
		var err error
		granted := calls
		if b.lim != nil {
			grant, err = b.lim.Wait(ctx, s.key, calls, lane)
		} else {
			granted = b.cfg.Max // no limiter: whatever the head holds by now goes
		}
		preempted := errors.Is(context.Cause(ctx), errPreempted)
		cancel()

		b.mu.Lock()
		s.askCancel, s.askBackground = nil, false
		if err != nil && preempted && b.base.Err() == nil {
			// Nothing was granted: plan again with the app's write, in the app's lane.
			b.mu.Unlock()
			continue
		}
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

// appWaiting reports whether an app write (not Background) is in s's queue. Caller holds
// b.mu.
func (b *Batcher) appWaiting(s *scope) bool {
	for _, p := range s.queue {
		if !p.w.Background {
			return true
		}
	}
	return false
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
