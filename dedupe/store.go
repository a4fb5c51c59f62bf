package dedupe

import (
	"container/list"
	"time"

	"github.com/ghlproxy/ghlproxy/internal/upstream"
)

// store is the in-process replay store: answers by key until they expire, bounded by the
// bytes they hold, indexed by tag for Forget. Entries all live about one window, so
// evicting in insertion order evicts (nearly) the soonest to expire first. Not safe for
// concurrent use: Fold.mu guards it.
type store struct {
	max, size int
	entries   map[string]*entry
	order     *list.List // of *entry, oldest first
	byTag     map[string]map[string]struct{}
}

type entry struct {
	key     string
	resp    *upstream.Response
	err     error // *UnconfirmedError instead of an answer
	tags    []string
	expires time.Time
	size    int
	elem    *list.Element
}

func newStore(max int) store {
	return store{max: max, entries: make(map[string]*entry), order: list.New(), byTag: make(map[string]map[string]struct{})}
}

func (s *store) get(key string, now time.Time) (*entry, bool) {
	e, ok := s.entries[key]
	if !ok {
		return nil, false
	}
	if !now.Before(e.expires) {
		s.remove(e)
		return nil, false
	}
	return e, true
}

// entryOverhead approximates the map, list and struct memory of one entry.
const entryOverhead = 256

func sizeOf(key string, r *upstream.Response) int {
	n := entryOverhead + len(key)
	if r == nil {
		return n
	}
	n += len(r.Body)
	for k, vs := range r.Header {
		n += len(k)
		for _, v := range vs {
			n += len(v) + 16
		}
	}
	return n
}

func (s *store) put(key string, r *upstream.Response, err error, tags []string, expires time.Time) {
	if old, ok := s.entries[key]; ok {
		s.remove(old)
	}
	e := &entry{key: key, resp: r, err: err, tags: tags, expires: expires, size: sizeOf(key, r)}
	if e.size > s.max {
		return
	}
	for s.size+e.size > s.max {
		s.remove(s.order.Front().Value.(*entry))
	}
	e.elem = s.order.PushBack(e)
	s.entries[key] = e
	s.size += e.size
	for _, t := range tags {
		keys := s.byTag[t]
		if keys == nil {
			keys = make(map[string]struct{})
			s.byTag[t] = keys
		}
		keys[key] = struct{}{}
	}
}

func (s *store) remove(e *entry) {
	delete(s.entries, e.key)
	s.order.Remove(e.elem)
	s.size -= e.size
	for _, t := range e.tags {
		if keys := s.byTag[t]; keys != nil {
			delete(keys, e.key)
			if len(keys) == 0 {
				delete(s.byTag, t)
			}
		}
	}
}

func (s *store) forget(tags []string) {
	for _, t := range tags {
		for key := range s.byTag[t] {
			if e, ok := s.entries[key]; ok {
				s.remove(e)
			}
		}
	}
}

// clear drops everything: after a lost pub/sub connection this replica may have missed
// Forget messages, so its copies can no longer be trusted.
func (s *store) clear() {
	*s = newStore(s.max)
}
