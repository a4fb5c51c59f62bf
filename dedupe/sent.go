package dedupe

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
)

type sentKey struct{}

// The states of a sentMark.
const (
	markPending   int32 = iota // nothing has left for upstream yet
	markSending                // mark is recording "sent" in Redis
	markSent                   // the request may have reached upstream
	markFailed                 // recording "sent" failed: the request must not be sent
	markAbandoned              // every caller left before it was sent: it never will be
)

// sentMark follows one leader's fetch: whether its request left for upstream, and whether
// its answer may be replayed. With Redis, mark writes the "sent" state into the shared
// marker before set returns.
type sentMark struct {
	mu    sync.Mutex // serialises set: the batcher may mark a merged write from its own goroutine
	state atomic.Int32
	err   error // of markFailed; written before the state
	mark  func() error
	// cancel ends the fetch's context; abandon calls it.
	cancel context.CancelFunc
	// noReplay: the fetch said its answer is for the callers of this call only.
	noReplay atomic.Bool
}

func (s *sentMark) set() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.state.CompareAndSwap(markPending, markSending) {
		switch s.state.Load() {
		case markFailed:
			return s.err
		case markAbandoned:
			return errAbandoned
		}
		return nil
	}
	if s.mark != nil {
		if err := s.mark(); err != nil {
			s.err = err
			s.state.Store(markFailed)
			return err
		}
	}
	s.state.Store(markSent)
	return nil
}

func (s *sentMark) sent() bool { return s.state.Load() == markSent }

// abandon stops a fetch that has sent nothing yet, for a call no caller waits for any
// more; it reports whether it did. It never blocks: a fetch that is recording "sent" at
// that moment counts as sent.
func (s *sentMark) abandon() bool {
	if !s.state.CompareAndSwap(markPending, markAbandoned) {
		return false
	}
	if s.cancel != nil {
		s.cancel()
	}
	return true
}

func (s *sentMark) abandoned() bool { return s.state.Load() == markAbandoned }

// ErrLeaseLost is returned by MarkSent when this replica no longer holds the call's
// marker (its lease expired and another replica may have taken the call over): the
// request must not be sent.
var ErrLeaseLost = errors.New("dedupe: lost the in-flight marker of this request before sending it; not sent")

// errAbandoned is returned by MarkSent when every caller of the call has gone before its
// request was sent: it is not sent at all.
var errAbandoned = errors.New("dedupe: every caller of this request left before it was sent; not sent")

// MarkSent must be called by a fetch running under Do right before its request leaves for
// upstream — after any wait for a rate-limit token or a batch. It records that the request
// may now reach upstream: for a write with Options.SentByFetch, in the shared marker, so
// that if this replica dies no other replica sends it again; for every call, so that a
// call whose callers have all gone is abandoned only while nothing was sent. If it returns
// an error the fetch must fail without sending. Calling it more than once, or outside Do,
// is harmless.
func MarkSent(ctx context.Context) error {
	s, _ := ctx.Value(sentKey{}).(*sentMark)
	if s == nil {
		return nil
	}
	return s.set()
}

// NoReplay, called by a fetch running under Do, keeps its answer from being replayed to
// later identical calls; callers of this call still share it. The proxy calls it for a
// write that a later write of the same entity rode with in one merged call: the later one
// is the entity's latest, and a retry of the earlier one is a new intent.
func NoReplay(ctx context.Context) {
	if s, _ := ctx.Value(sentKey{}).(*sentMark); s != nil {
		s.noReplay.Store(true)
	}
}
