package dedupe

import (
	"context"
	"errors"
	"sync"
)

type sentKey struct{}

// sentMark records, for one leader's fetch, that the write left for upstream. With Redis,
// mark writes the "sent" state into the shared marker before returning.
type sentMark struct {
	once sync.Once
	err  error
	done bool
	mark func() error // nil: in-process only
	mu   sync.Mutex
}

func (s *sentMark) set() error {
	s.once.Do(func() {
		if s.mark != nil {
			s.err = s.mark()
		}
		s.mu.Lock()
		s.done = s.err == nil
		s.mu.Unlock()
	})
	return s.err
}

func (s *sentMark) sent() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.done
}

// ErrLeaseLost is returned by MarkSent when this replica no longer holds the call's
// marker (its lease expired and another replica may have taken the call over): the
// request must not be sent.
var ErrLeaseLost = errors.New("dedupe: lost the in-flight marker of this request before sending it; not sent")

// MarkSent must be called by a fetch running under Do with Options.SentByFetch, right
// before the request leaves for upstream — for example from the GotConn hook of an
// httptrace.ClientTrace, so that a failed dial does not count as sent. It records in the
// shared marker that the write may now be applied, so that if this replica dies, no other
// replica sends it again. If it returns an error the marker could not be written, and the
// fetch must fail without sending. Calling it more than once, for reads, or outside Do is
// harmless.
func MarkSent(ctx context.Context) error {
	s, _ := ctx.Value(sentKey{}).(*sentMark)
	if s == nil {
		return nil
	}
	return s.set()
}
