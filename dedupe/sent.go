package dedupe

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"

	"github.com/ghlproxy/ghlproxy/internal/luapipe"
	"github.com/ghlproxy/ghlproxy/internal/upstream"
)

// The states of an Attempt.
const (
	markPending   int32 = iota // nothing has left for upstream yet
	markSending                // mark is recording "sent" in Redis
	markSent                   // the request may have reached upstream
	markFailed                 // recording "sent" failed: the request must not be sent
	markAbandoned              // every caller left before it was sent: it never will be
)

// Fetch is the upstream call a fold shares. It runs at most once per attempt at the call,
// on a context detached from every caller, and tells the fold through a what only it can
// see: when its request leaves for upstream (MarkSent), that its answer must not be
// replayed (NoReplay), or that the cache holds it (Cached).
type Fetch func(ctx context.Context, a *Attempt) (*upstream.Response, error)

// An Attempt follows one leader's fetch: whether its request left for upstream, and what
// its answer may be used for. With Redis, mark writes the "sent" state into the shared
// marker before MarkSent returns. The methods of a nil *Attempt do nothing, so that a
// Fetch can be called outside Do.
type Attempt struct {
	mu    sync.Mutex // serialises MarkSent: the batcher may mark a merged write from its own goroutine
	state atomic.Int32
	err   error // of markFailed; written before the state
	mark  func() error
	// cancel ends the fetch's context; abandon calls it.
	cancel context.CancelFunc
	// noReplay: the fetch said its answer is for the callers of this call only.
	noReplay atomic.Bool
	// cached: the fetch said the cache holds its answer.
	cached atomic.Bool
	// finishStep, set by a leader through Redis on a single Redis, builds FinishStep's
	// step; finished: that step ran, and the call is over in Redis.
	finishStep func() luapipe.Step
	finished   atomic.Bool
}

// MarkSent must be called by a fetch right before its request leaves for upstream — after
// any wait for a rate-limit token or a batch. It records that the request may now reach
// upstream: for a write with Options.SentByFetch, in the shared marker, so that if this
// replica dies no other replica sends it again; for every call, so that a call whose
// callers have all gone is abandoned only while nothing was sent. If it returns an error
// the fetch must fail without sending. Calling it more than once is harmless.
func (s *Attempt) MarkSent() error {
	if s == nil {
		return nil
	}
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

func (s *Attempt) sent() bool { return s.state.Load() == markSent }

// abandon stops a fetch that has sent nothing yet, for a call no caller waits for any
// more; it reports whether it did. It never blocks: a fetch that is recording "sent" at
// that moment counts as sent.
func (s *Attempt) abandon() bool {
	if !s.state.CompareAndSwap(markPending, markAbandoned) {
		return false
	}
	if s.cancel != nil {
		s.cancel()
	}
	return true
}

func (s *Attempt) abandoned() bool { return s.state.Load() == markAbandoned }

// ErrLeaseLost is returned by MarkSent when this replica no longer holds the call's
// marker (its lease expired and another replica may have taken the call over): the
// request must not be sent.
var ErrLeaseLost = errors.New("dedupe: lost the in-flight marker of this request before sending it; not sent")

// errAbandoned is returned by MarkSent when every caller of the call has gone before its
// request was sent: it is not sent at all.
var errAbandoned = errors.New("dedupe: every caller of this request left before it was sent; not sent")

// NoReplay keeps the attempt's answer from being replayed to later identical calls;
// callers of this call still share it. The proxy calls it for a write that a later write
// of the same entity rode with in one merged call (the later one is the entity's latest,
// and a retry of the earlier one is a new intent), and for a read whose answer the cache
// refused as one GHL may have read before a write.
func (s *Attempt) NoReplay() {
	if s != nil {
		s.noReplay.Store(true)
	}
}

// Cached says the cache now holds the attempt's answer, stored once the fetch had it, so
// the fold keeps no copy of its own: callers of this call on this replica share it as
// always, waiters on other replicas load it from the cache (Options.FromCache), and later
// identical calls are the cache's to answer. The proxy calls it for a read the cache
// stored; the fold's own records are for what the cache does not hold.
func (s *Attempt) Cached() {
	if s != nil {
		s.cached.Store(true)
	}
}

// FinishStep is the fold's finish of a read's call in Redis, as a step for the cache's run
// that stores the answer (cache.Cache.Set's also), so that on a single Redis storing and
// finishing are one command: it leaves the answerless record (see Cached), gives up the
// call's marker and tells the waiters on other replicas, who then read the cache's entry —
// or, when the cache refused the answer, find none and make the call themselves. Once it
// has run, the fold sends nothing more for the call. The zero Step (a write, a Cluster, no
// Redis, a call folded within this replica) is run by nobody, and the fold finishes the
// call itself. The caller must still call Cached when the cache took the answer.
func (s *Attempt) FinishStep() luapipe.Step {
	if s == nil || s.finishStep == nil {
		return luapipe.Step{}
	}
	return s.finishStep()
}
