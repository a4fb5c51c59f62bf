package cache

import (
	"crypto/sha256"
	"encoding/hex"
	"sync"
	"sync/atomic"
	"time"

	"github.com/maypok86/otter/v2"

	"github.com/ghlproxy/ghlproxy/internal/metrics"
)

// idLen is the length of an index id: 128 bits of SHA-256, hex.
const idLen = 32

// Index id kinds. Routes and credentials are indexed like tags so that one mechanism —
// drop everything listed under an id — serves Invalidate and every kind of Purge.
const (
	kindTag   = "t"
	kindRoute = "r"
	kindCred  = "c"
)

// tagID names an index. Tags carry contact and location ids and route templates are
// harmless but long: hashing them keeps Redis key names, pub/sub messages and the local
// index free of anything a reader of Redis could learn from, and of fixed length.
func tagID(kind, s string) string {
	h := sha256.Sum256([]byte(kind + "\x00" + s))
	return hex.EncodeToString(h[:idLen/2])
}

// ids lists the index ids of an entry stored under p for cred.
func ids(p *Policy, credHash string) []string {
	out := make([]string, 0, len(p.Tags)+2)
	for _, t := range p.Tags {
		out = append(out, tagID(kindTag, t))
	}
	if p.Route != "" {
		out = append(out, tagID(kindRoute, p.Route))
	}
	return append(out, tagID(kindCred, credHash))
}

// localEntry is what the in-process layer holds: the decrypted entry, ready to serve.
type localEntry struct {
	entry  *Entry
	cred   string // credential hash: a local hit also requires the caller's credential
	end    int64  // Unix ns at which the last stale window ends
	ids    []string
	weight uint32
}

// local is the in-process layer: an otter cache bounded by bytes, plus an index from id to
// the keys listed under it so that invalidations can find the entries to drop.
//
// Populations race with invalidations: a value read from Redis (or checked against the
// tombstones) just before an invalidation must not be inserted just after it. Every
// invalidation first bumps epoch, then drops what the index lists; an insertion records the
// epoch before its read, indexes, inserts, and undoes itself when the epoch moved. Either the
// drop sees the insertion in the index, or the insertion sees the bumped epoch.
type local struct {
	c     *otter.Cache[string, *localEntry]
	epoch atomic.Uint64
	m     *metrics.Metrics

	mu    sync.Mutex
	index map[string]map[string]*localEntry

	entries, bytes, evictions atomic.Int64
}

// overhead approximates the bytes an entry costs beyond its key, headers and body.
const overhead = 256

func newLocal(maxBytes int64, now func() time.Time, m *metrics.Metrics) (*local, error) {
	l := &local{m: m, index: make(map[string]map[string]*localEntry)}
	opts := &otter.Options[string, *localEntry]{
		MaximumWeight: uint64(maxBytes),
		Weigher:       func(_ string, v *localEntry) uint32 { return v.weight },
		// With a fake Config.Now otter keeps the real clock: its expiry only frees memory,
		// and get checks the end of the last window on Config.Now.
		ExpiryCalculator: otter.ExpiryWritingFunc(func(e otter.Entry[string, *localEntry]) time.Duration {
			return time.Duration(e.Value.end - now().UnixNano())
		}),
		OnAtomicDeletion: l.deleted,
	}
	c, err := otter.New(opts)
	if err != nil {
		return nil, err
	}
	l.c = c
	return l, nil
}

func weigh(key string, e *Entry) uint32 {
	n := overhead + len(key) + len(e.Resp.Body)
	for k, vs := range e.Resp.Header {
		n += len(k)
		for _, v := range vs {
			n += len(v) + 16
		}
	}
	if n > 1<<31 {
		n = 1 << 31
	}
	return uint32(n)
}

// get returns the entry for key if the credential matches and it is still within its last
// window. It is the hot path: no allocation, no lock beyond otter's.
func (l *local) get(key, cred string, now int64) *Entry {
	le, ok := l.c.GetIfPresent(key)
	if !ok || le.cred != cred || now >= le.end {
		return nil
	}
	return le.entry
}

// insert stores rec unless an invalidation happened since epoch was read; it reports
// whether the entry stayed.
func (l *local) insert(key, cred string, rec *record, epoch uint64) bool {
	le := &localEntry{entry: &rec.entry, cred: cred, end: rec.end.UnixNano(), ids: rec.ids}
	le.weight = weigh(key, le.entry)
	l.mu.Lock()
	for _, id := range le.ids {
		keys := l.index[id]
		if keys == nil {
			keys = make(map[string]*localEntry)
			l.index[id] = keys
		}
		keys[key] = le
	}
	l.mu.Unlock()
	l.entries.Add(1)
	l.bytes.Add(int64(le.weight))
	l.c.Set(key, le)
	l.gauges()
	if l.epoch.Load() != epoch {
		l.drop(key, le)
		return false
	}
	return true
}

// drop removes key if it still holds le.
func (l *local) drop(key string, le *localEntry) {
	l.c.ComputeIfPresent(key, func(old *localEntry) (*localEntry, otter.ComputeOp) {
		if old == le {
			return nil, otter.InvalidateOp
		}
		return old, otter.CancelOp
	})
}

// deleted keeps the index and the counters in step with otter; it runs under otter's bucket
// lock and so must not call the cache.
func (l *local) deleted(e otter.DeletionEvent[string, *localEntry]) {
	le := e.Value
	l.mu.Lock()
	for _, id := range le.ids {
		if keys := l.index[id]; keys != nil && keys[e.Key] == le {
			delete(keys, e.Key)
			if len(keys) == 0 {
				delete(l.index, id)
			}
		}
	}
	l.mu.Unlock()
	l.entries.Add(-1)
	l.bytes.Add(-int64(le.weight))
	if e.Cause == otter.CauseOverflow {
		l.evictions.Add(1)
		l.m.CacheEvictions.Inc()
	}
	l.gauges()
}

func (l *local) gauges() {
	l.m.CacheEntries.Set(float64(l.entries.Load()))
	l.m.CacheBytes.Set(float64(l.bytes.Load()))
}

// dropIDs removes every entry listed under any of ids and returns how many it removed.
func (l *local) dropIDs(ids []string) int {
	l.epoch.Add(1)
	var keys []string
	l.mu.Lock()
	for _, id := range ids {
		for k := range l.index[id] {
			keys = append(keys, k)
		}
	}
	l.mu.Unlock()
	return l.dropKeys(keys)
}

// dropKeys removes the given keys and returns how many were present.
func (l *local) dropKeys(keys []string) int {
	l.epoch.Add(1)
	n := 0
	for _, k := range keys {
		if _, ok := l.c.Invalidate(k); ok {
			n++
		}
	}
	return n
}

// clear removes everything and returns how many entries it removed.
func (l *local) clear() int {
	l.epoch.Add(1)
	n := 0
	for k := range l.c.Keys() {
		if _, ok := l.c.Invalidate(k); ok {
			n++
		}
	}
	return n
}
