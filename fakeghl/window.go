package fakeghl

import (
	"sync"
	"time"
)

// window is one scope's rate-limit state.
//
// GHL documents its burst limit as "100 requests per 10 seconds" without saying whether
// the 10 s are fixed buckets or rolling. The stand-in uses a rolling window: a request is
// admitted when fewer than limit requests were admitted in the Window before it. That is
// the stricter reading: a client that never trips the rolling window never trips a fixed
// one either, so a sidecar that passes here passes against GHL whichever it is. Rejected
// requests (429) do not consume budget; the daily counter resets at midnight UTC.
type window struct {
	mu       sync.Mutex
	limit    int
	admitted times // admission times within the window, at most limit of them
	arrivals times // every arrival within the window, for MaxInWindow
	maxSeen  int
	day      int64
	dayCount int
}

// verdict is what admit decided, with the numbers for the X-RateLimit-* headers.
type verdict struct {
	ok             bool
	limit          int
	remaining      int
	dailyRemaining int
}

// arrive records one request at now and decides whether GHL would serve it.
func (w *window) arrive(now time.Time, span time.Duration, daily int) verdict {
	t := now.UnixNano()
	cut := t - int64(span)
	day := now.UTC().Unix() / 86400

	w.mu.Lock()
	defer w.mu.Unlock()
	w.arrivals.expire(cut)
	w.arrivals.push(t)
	if n := w.arrivals.len(); n > w.maxSeen {
		w.maxSeen = n
	}
	if day != w.day {
		w.day, w.dayCount = day, 0
	}
	w.admitted.expire(cut)
	v := verdict{limit: w.limit}
	if w.admitted.len() < w.limit && w.dayCount < daily {
		w.admitted.push(t)
		w.dayCount++
		v.ok = true
	}
	v.remaining = w.limit - w.admitted.len()
	v.dailyRemaining = daily - w.dayCount
	return v
}

func (w *window) max() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.maxSeen
}

// times is a FIFO of Unix nanoseconds.
type times struct {
	buf  []int64
	head int
}

func (q *times) len() int { return len(q.buf) - q.head }

func (q *times) push(t int64) { q.buf = append(q.buf, t) }

// expire drops entries at or before cut, that is, those a full window old.
func (q *times) expire(cut int64) {
	for q.head < len(q.buf) && q.buf[q.head] <= cut {
		q.head++
	}
	if q.head == len(q.buf) {
		q.buf, q.head = q.buf[:0], 0
	} else if q.head >= 64 && q.head*2 >= len(q.buf) {
		n := copy(q.buf, q.buf[q.head:])
		q.buf, q.head = q.buf[:n], 0
	}
}
