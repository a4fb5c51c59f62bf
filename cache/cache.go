// Package cache answers reads and read-only searches from a store shared by every replica:
// an in-process layer for hot entries in front of Redis (or an embedded in-memory store
// when there is no Redis). Entries are keyed by request fingerprint — which includes a keyed
// hash of the caller's credential — and their bodies are encrypted at rest with a key
// derived from the caller's own token.
//
// # Encryption at rest
//
// identity derives a 256-bit key per credential with HKDF-SHA256 from the whole
// Authorization header (salted with the replicas' shared identity secret). The value stored
// in Redis under a fingerprint is
//
//	0x01 | nonce (12 random bytes) | AES-256-GCM(credential key, nonce, plaintext, aad)
//	aad       = "ghlproxy cache entry v1\x00" + fingerprint
//	plaintext = stored/fresh/stale-while-revalidate/stale-if-error times, index ids,
//	            status, headers and body of the GHL answer
//
// So a reader of Redis sees random bytes, and key names made of hashes only (fingerprints
// and hashed tags); another credential's key fails GCM authentication (a miss, never someone
// else's data); and a value copied under another fingerprint fails too, because the
// fingerprint is authenticated as additional data. The raw token is never stored: only its
// keyed hash (in the fingerprint) and what HKDF derived from it. The in-process layer holds
// decrypted entries, served only to a caller whose fingerprint and credential hash match.
//
// # Redis layout (Cluster-safe)
//
//	<prefix>:{c:<fp[:16]>}:e:<fp>   the sealed entry, PX = TTL + longest stale window
//	<prefix>:{x:<id>}:z             index: ZSET of fingerprints scored by their expiry (ms)
//	<prefix>:{x:<id>}:inv           tombstone: when the index was last invalidated (ms)
//	<prefix>:{cache}:inval          sharded pub/sub channel: invalidations
//	<prefix>:{cache}:ping:<replica> sharded pub/sub channel: the replica's own heartbeat
//
// An id is 128 bits of SHA-256 of a tag, a route template or a credential hash. On a
// Cluster every command touches one slot: an index and its tombstone share a hash tag and
// change together in one script, one run per id; entries are deleted one DEL per key in a
// pipeline. On a single Redis (or Sentinel), where every key is on the one server, one run
// does the work of every id (luapipe.OneScript): storing an entry and listing it is one
// command, and so is an invalidation with its DELs and its notice (dropAllBody), the fold's
// part of it included. The index is a ZSET so that adding to it also trims members that
// have expired, and the index key's own TTL is the longest of its members'.
//
// Writes race with reads in flight: a read that GHL answered before a write may be stored
// after the write invalidated its tags. Set therefore refuses (ErrInvalidated) an answer
// whose Date is less than Config.RaceWindow after an invalidation of any of its tags: the
// index script reads the tombstone atomically with the insertion, and Invalidate deletes what
// the index lists after setting the tombstone, so every entry is either refused or deleted.
//
// # Coherence of the in-process layer
//
// Invalidate, Purge, and a Set that overwrites an entry publish what they dropped on the
// invalidation channel (SPUBLISH: in a Cluster every publisher and subscriber use the node
// owning the channel's slot, so messages are ordered). Each replica applies the messages of
// the others to its in-process layer. A replica also publishes a heartbeat stamped with its
// own clock to its ping channel every CoherenceBound/4; receiving its heartbeat sent at s
// proves that every invalidation published before it has been applied, so the replica may
// serve in-process entries until s + CoherenceBound. When heartbeats stop coming back
// (Redis down, hung, or the subscription broken) in-process entries stop being served after
// at most CoherenceBound; and every (re)subscription, or a heartbeat after a lapse, clears
// the in-process layer, because messages published meanwhile were lost. Hence: no replica
// serves an entry that another replica invalidated for longer than CoherenceBound, plus the
// clock difference between the two replicas.
//
// Redis client-side caching (RESP3 tracking) was the alternative. It tracks keys, not tags,
// so tag invalidation would still delete keys one by one; in a Cluster it needs a tracking
// connection per node; and it caches the sealed value, so every hit would still pay
// decryption. Pub/sub with heartbeats gives a bound that can be stated and tested.
package cache

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ghlproxy/ghlproxy/internal/identity"
	"github.com/ghlproxy/ghlproxy/internal/luapipe"
	"github.com/ghlproxy/ghlproxy/internal/metrics"
	"github.com/ghlproxy/ghlproxy/internal/pending"
	"github.com/ghlproxy/ghlproxy/internal/upstream"
)

// Entry is a cached answer.
type Entry struct {
	Resp *upstream.Response
	// Stored is when the answer was fetched from upstream; Age counts from it.
	Stored time.Time
	// FreshUntil ends the entry's TTL: before it the entry is a hit.
	FreshUntil time.Time
	// StaleWhileRevalidate and StaleIfError end the windows in which the stale entry may be
	// served while one refresh runs, or instead of an upstream error.
	StaleWhileRevalidate time.Time
	StaleIfError         time.Time
}

// Fresh reports whether the entry is within its TTL at now.
func (e *Entry) Fresh(now time.Time) bool { return now.Before(e.FreshUntil) }

// Policy says how to store one answer.
type Policy struct {
	TTL                  time.Duration
	StaleWhileRevalidate time.Duration
	StaleIfError         time.Duration
	// Tags are the invalidation tags of the answer, already prefixed with the scope key.
	Tags []string
	// Route is the route template, kept with the entry so that purges by route work.
	Route string
}

// Config tunes a Cache. Zero values take the defaults.
type Config struct {
	// MemoryBytes bounds the in-process layer (the whole store without Redis). Default 64 MiB.
	MemoryBytes int64
	// Prefix starts every Redis key and channel name. Default "ghlproxy".
	Prefix string
	// CoherenceBound is the longest a replica may serve an in-process entry that another
	// replica invalidated or overwrote. Default and maximum 1 s.
	CoherenceBound time.Duration
	// RedisTimeout bounds every Redis call of Get, Set, Invalidate and Purge. Default 250 ms.
	// The client should be built with ContextTimeoutEnabled so that a hung Redis is noticed
	// within it, not within the client's read timeout.
	RedisTimeout time.Duration
	// RaceWindow: Set refuses an answer sent upstream (Response.Sent, else its Date) less
	// than this after an invalidation of one of its tags, because GHL may have read it
	// before the write that caused the invalidation. With Sent known it only has to cover
	// the clock difference between replicas; without, the slowest GHL read too. Default 2 s.
	RaceWindow time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time

	// observe, for tests, is called after the listener applied an event.
	observe func(event)
}

// Selector chooses what Purge drops: exactly one field is set.
type Selector struct {
	Route    string // a route template: every entry of the route, every credential
	Tag      string // a scope-prefixed tag, as in Policy.Tags
	CredHash string // identity.Credential.Hash: every entry of one credential
	All      bool
}

// Stats describes the store, for GET /_ghlproxy/cache.
// The JSON names are those of the other /_ghlproxy/ answers (snake_case).
type Stats struct {
	Entries   int64  `json:"entries"` // in the in-process layer
	Bytes     int64  `json:"bytes"`   // approximate bytes held by the in-process layer
	LocalHits uint64 `json:"local_hits"`
	RedisHits uint64 `json:"redis_hits"`
	Misses    uint64 `json:"misses"`
	Evictions int64  `json:"evictions"` // in-process entries evicted for space
	Redis     bool   `json:"redis"`     // a Redis store is configured
	RedisUp   bool   `json:"redis_up"`  // the last Redis call succeeded
	// Coherent is true while in-process entries may be served: always without Redis; with
	// Redis while the replica's heartbeat comes back within CoherenceBound.
	Coherent bool `json:"coherent"`
}

// ErrInvalidated is returned by Set when the answer predates an invalidation of one of its
// tags (see Config.RaceWindow); nothing was stored. It is not a failure of the store.
var ErrInvalidated = errors.New("cache: answer predates an invalidation of its tags; not stored")

// ErrExpired is returned by Set and SetAfter when the policy leaves the answer no time to
// live; nothing was stored. It is not a failure of the store either.
var ErrExpired = errors.New("cache: the answer has no time left to live; not stored")

var errNoCredential = errors.New("cache: get needs a credential")

// Cache is the store. It is safe for concurrent use.
type Cache struct {
	cfg   Config
	now   func() time.Time
	rdb   redis.UniversalClient
	log   *slog.Logger
	m     *metrics.Metrics
	local *local
	keys  keyspace
	// oneScript: the Redis runs one script over several hash tags (luapipe.OneScript).
	oneScript bool

	replica string
	// leaseUntil is the Unix ns until which in-process entries may be served (see the
	// package comment); embedded stores never look at it.
	leaseUntil atomic.Int64
	redisUp    atomic.Bool

	localHits, redisHits, misses atomic.Uint64

	// tombs are the embedded store's invalidation times by id (Redis keeps its own).
	tombMu sync.Mutex
	tombs  map[string]int64

	// orphans are entries a failed Set may have left in Redis without their index (see
	// redisSet), pending until they expire anyway; orphanLoop deletes them.
	orphans    *pending.Set
	orphanWake chan struct{}
	// undropped are ids whose invalidation Redis did not confirm, pending until every entry
	// listed under them has expired; orphanLoop retries them, and Get does not take an
	// entry listed under one from Redis meanwhile.
	undropped *pending.Set

	stop  context.CancelFunc
	done  sync.WaitGroup
	subMu sync.Mutex
	sub   *redis.PubSub // replaced by listen when it falls silent
	ping  chan struct{}
}

// DefaultMemoryBytes is Config.MemoryBytes's default, and cache.memory_bytes's.
const DefaultMemoryBytes = 64 << 20

// New builds a Cache on rdb, or an embedded in-memory store when rdb is nil. With Redis it
// subscribes to invalidations in the background; until the first heartbeat comes back every
// Get goes to Redis.
func New(cfg Config, rdb redis.UniversalClient, m *metrics.Metrics, log *slog.Logger) (*Cache, error) {
	if cfg.MemoryBytes == 0 {
		cfg.MemoryBytes = DefaultMemoryBytes
	}
	if cfg.MemoryBytes < 0 {
		return nil, fmt.Errorf("cache.memory_bytes: must be positive, got %d", cfg.MemoryBytes)
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "ghlproxy"
	}
	if cfg.CoherenceBound == 0 {
		cfg.CoherenceBound = time.Second
	}
	if cfg.CoherenceBound < 0 || cfg.CoherenceBound > time.Second {
		return nil, fmt.Errorf("cache.coherence_bound: must be within (0, 1s], got %s", cfg.CoherenceBound)
	}
	if cfg.RedisTimeout <= 0 {
		cfg.RedisTimeout = 250 * time.Millisecond
	}
	if cfg.RaceWindow <= 0 {
		cfg.RaceWindow = 2 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if m == nil {
		m = metrics.New()
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	l, err := newLocal(cfg.MemoryBytes, cfg.Now, m)
	if err != nil {
		return nil, fmt.Errorf("cache: in-process layer: %w", err)
	}
	var rid [8]byte
	_, _ = rand.Read(rid[:])
	c := &Cache{
		cfg: cfg, now: cfg.Now, rdb: rdb, log: log, m: m, local: l,
		keys:       keyspace{prefix: cfg.Prefix},
		oneScript:  rdb != nil && luapipe.OneScript(rdb),
		replica:    hex.EncodeToString(rid[:]),
		tombs:      make(map[string]int64),
		ping:       make(chan struct{}, 1),
		orphans:    pending.New(nil),
		undropped:  pending.New(m.InvalidationsPending.WithLabelValues("cache")),
		orphanWake: make(chan struct{}, 1),
	}
	c.redisUp.Store(true)
	if rdb == nil {
		return c, nil
	}
	if o, ok := rdb.(*redis.Client); ok && !o.Options().ContextTimeoutEnabled {
		log.Warn("cache: redis client built without ContextTimeoutEnabled; a hung Redis is noticed only after the client's read timeout, not cache.redis_timeout")
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.stop = cancel
	c.subscribe(ctx)
	c.done.Add(3)
	go c.listen(ctx)
	go c.heartbeat(ctx)
	go c.orphanLoop(ctx)
	return c, nil
}

// Close stops the background work. It does not close the Redis client.
func (c *Cache) Close() error {
	if c.stop != nil {
		c.stop()
		c.subMu.Lock()
		_ = c.sub.Close()
		c.subMu.Unlock()
		c.done.Wait()
	}
	c.local.c.StopAllGoroutines()
	return nil
}

// coherent reports whether in-process entries may be served at now.
func (c *Cache) coherent(now int64) bool {
	return c.rdb == nil || now < c.leaseUntil.Load()
}

// Get returns the entry stored under key for cred, or nil, nil on a miss. Entries past their
// last stale window are misses; fresh or stale is for the caller to decide (Entry.Fresh). An
// error means Redis failed; the caller treats it as a miss.
func (c *Cache) Get(ctx context.Context, key string, cred *identity.Credential) (*Entry, error) {
	return c.get(ctx, key, cred, true, false)
}

// GetShared is Get past the in-process layer, when there is Redis: the entry another
// replica just stored, which may replace one this replica holds. The fold's waiters use it
// for the answer their leader on another replica stored (dedupe.Attempt.Cached).
func (c *Cache) GetShared(ctx context.Context, key string, cred *identity.Credential) (*Entry, error) {
	return c.get(ctx, key, cred, true, c.rdb != nil)
}

// Peek is Get without side effects, for /_ghlproxy/explain: it counts no hit or miss and
// copies nothing from Redis into the in-process layer.
func (c *Cache) Peek(ctx context.Context, key string, cred *identity.Credential) (*Entry, error) {
	return c.get(ctx, key, cred, false, false)
}

func (c *Cache) get(ctx context.Context, key string, cred *identity.Credential, serve, shared bool) (*Entry, error) {
	if cred == nil {
		return nil, errNoCredential
	}
	count := func(n *atomic.Uint64) {
		if serve && !shared { // a fold waiter's load is not a request's hit or miss
			n.Add(1)
		}
	}
	// The clock is read on every hit; not a coarse clock, whose 1 ms ticker woke an idle
	// sidecar 1,000 times a second (3% of a core) for no hit rate measurable in
	// BenchmarkCacheHit or bench/run.sh.
	now := c.now().UnixNano()
	if !shared && c.coherent(now) {
		if e := c.local.get(key, cred.Hash, now); e != nil {
			count(&c.localHits)
			return e, nil
		}
	}
	if c.rdb == nil {
		count(&c.misses)
		return nil, nil
	}
	epoch := c.local.epoch.Load()
	v, err := c.redisGet(ctx, key)
	if err != nil || v == nil {
		count(&c.misses)
		return nil, err
	}
	rec, err := open(&cred.EncKey, key, v)
	if err != nil || now >= rec.end.UnixNano() || c.undropped.Any(rec.ids) {
		count(&c.misses)
		return nil, nil
	}
	count(&c.redisHits)
	if serve {
		c.local.insert(key, cred.Hash, rec, epoch)
	}
	return &rec.entry, nil
}

// Set stores resp under key for cred with policy p. It stores nothing and returns ErrExpired
// when the policy leaves the answer no time to live, and ErrInvalidated when the answer
// predates an invalidation of its tags.
//
// On a single Redis, the steps of also that work on the cache's Redis (another stage's part
// of storing this answer: dedupe.Attempt.FinishStep) run in the cache's own script run,
// after the store, whether it stored or refused; other steps, every step on a Cluster or
// without Redis, and every step when the answer has no time to live (ErrExpired, nothing
// sent to Redis) are not run, and their Done is not called.
func (c *Cache) Set(ctx context.Context, key string, cred *identity.Credential, resp *upstream.Response, p Policy, also ...luapipe.Step) error {
	rec, now, read, err := c.record(key, cred, resp, p)
	if err != nil {
		return err
	}
	if rec == nil {
		return ErrExpired
	}
	return c.set(ctx, key, cred, rec, now, read.Add(-c.cfg.RaceWindow).UnixMilli(), nil, also)
}

// SetAfter is Set for the answer of a write, stored as the answer of a read of the same
// record (cache.write_through): the invalidation that write made, inv, does not refuse it.
// Any other invalidation of its tags does — one after inv, or one found by inv that came
// less than RaceWindow before the write was sent (another write of the record, which GHL
// may have applied after this one) — and so does any invalidation of a tag inv did not
// drop, as for Set.
func (c *Cache) SetAfter(ctx context.Context, key string, cred *identity.Credential, resp *upstream.Response, p Policy, inv Invalidation) error {
	rec, now, read, err := c.record(key, cred, resp, p)
	if err != nil {
		return err
	}
	if rec == nil {
		return ErrExpired
	}
	fetched := read.Add(-c.cfg.RaceWindow).UnixMilli()
	for _, id := range rec.ids {
		if prev, ok := inv.st.prev[id]; ok && prev >= fetched {
			return ErrInvalidated
		}
	}
	return c.set(ctx, key, cred, rec, now, fetched, inv.st.own, nil)
}

// Invalidation is what one InvalidateOwn did, for SetAfter.
type Invalidation struct{ st stamps }

// stamps are the tombstones an invalidation found (prev; 0: none) and left (own), by id.
type stamps struct{ prev, own map[string]int64 }

func newStamps(n int) stamps {
	return stamps{prev: make(map[string]int64, n), own: make(map[string]int64, n)}
}

// record builds the entry Set stores; nil when the policy leaves it no time to live. read
// is when GHL may have read what it answered (Sent, else Date).
func (c *Cache) record(key string, cred *identity.Credential, resp *upstream.Response, p Policy) (rec *record, now, read time.Time, err error) {
	if key == "" || cred == nil || resp == nil {
		return nil, now, read, errors.New("cache: set needs a key, a credential and a response")
	}
	now = c.now()
	stored := resp.Date
	if stored.IsZero() {
		stored = now
	}
	rec = &record{
		entry: Entry{
			Resp:                 resp,
			Stored:               stored,
			FreshUntil:           stored.Add(p.TTL),
			StaleWhileRevalidate: stored.Add(p.TTL + p.StaleWhileRevalidate),
			StaleIfError:         stored.Add(p.TTL + p.StaleIfError),
		},
		ids: ids(&p, cred.Hash),
	}
	rec.end = lastWindow(&rec.entry)
	if !rec.end.After(now) {
		return nil, now, read, nil
	}
	// GHL read the answer between Sent and Date: a write invalidated after Sent may have
	// landed after that read, however slow the call was.
	read = stored
	if !resp.Sent.IsZero() && resp.Sent.Before(read) {
		read = resp.Sent
	}
	return rec, now, read, nil
}

func (c *Cache) set(ctx context.Context, key string, cred *identity.Credential, rec *record, now time.Time, fetched int64, own map[string]int64, also []luapipe.Step) error {
	epoch := c.local.epoch.Load()
	if c.rdb == nil {
		if c.tombstoned(rec.ids, fetched, own) {
			return ErrInvalidated
		}
	} else if err := c.redisSet(ctx, key, cred, rec, now, fetched, own, also); err != nil {
		return err
	}
	if !c.local.insert(key, cred.Hash, rec, epoch) && c.rdb == nil {
		return ErrInvalidated
	}
	return nil
}

// Invalidate drops every entry carrying any of tags, in Redis and in every replica's
// in-process layer.
func (c *Cache) Invalidate(ctx context.Context, tags []string) error {
	_, err := c.InvalidateOwn(ctx, tags)
	return err
}

// InvalidateOwn is Invalidate, returning what it did for SetAfter. On error the
// Invalidation is empty: SetAfter then refuses every answer of the tags.
//
// On a single Redis, the steps of also that work on the cache's Redis (another stage's part
// of the same invalidation: dedupe.Fold.ForgetPart) run in the cache's own script run,
// after its step, and get their replies through their Done; other steps, and every step on
// a Cluster or without Redis, are not run, and their Done is not called.
func (c *Cache) InvalidateOwn(ctx context.Context, tags []string, also ...luapipe.Step) (Invalidation, error) {
	if len(tags) == 0 {
		return Invalidation{}, nil
	}
	idl := make([]string, len(tags))
	for i, t := range tags {
		idl[i] = tagID(kindTag, t)
	}
	_, st, err := c.dropIDs(ctx, idl, also...)
	return Invalidation{st: st}, err
}

// Purge drops what sel selects and returns how many entries it removed from the store
// (Redis, or the in-process layer without Redis).
func (c *Cache) Purge(ctx context.Context, sel Selector) (int, error) {
	var id string
	n := 0
	if sel.All {
		n++
	}
	if sel.Route != "" {
		n, id = n+1, tagID(kindRoute, sel.Route)
	}
	if sel.Tag != "" {
		n, id = n+1, tagID(kindTag, sel.Tag)
	}
	if sel.CredHash != "" {
		n, id = n+1, tagID(kindCred, sel.CredHash)
	}
	if n != 1 {
		return 0, errors.New("cache: purge needs exactly one of route, tag, credential or all")
	}
	if sel.All {
		return c.purgeAll(ctx)
	}
	n, _, err := c.dropIDs(ctx, []string{id})
	return n, err
}

func (c *Cache) dropIDs(ctx context.Context, idl []string, also ...luapipe.Step) (int, stamps, error) {
	if c.rdb == nil {
		st := c.tombstone(idl)
		return c.local.dropIDs(idl), st, nil
	}
	n, st, err := c.redisDrop(ctx, idl, also...)
	// Drop locally even when Redis failed: this replica at least stops serving.
	c.local.dropIDs(idl)
	if err != nil {
		// The write this invalidates has been answered: keep trying, or its old answers
		// would be served until their TTL.
		c.retryDrop(idl)
		// And when Redis answered but refused (full, under noeviction), tell the other
		// replicas now: it still takes a notice, and their in-process copies are what they
		// would serve without looking in Redis. An unreachable Redis would not take it
		// either, and the write's caller waits for this.
		var refused redis.Error
		if errors.As(err, &refused) {
			c.publish(ctx, msgIDs, idl)
		}
	}
	return n, st, err
}

func (c *Cache) purgeAll(ctx context.Context) (int, error) {
	if c.rdb == nil {
		return c.local.clear(), nil
	}
	n, err := c.redisPurgeAll(ctx)
	c.local.clear()
	return n, err
}

// Stats returns the current counters.
func (c *Cache) Stats() Stats {
	return Stats{
		Entries:   c.local.entries.Load(),
		Bytes:     c.local.bytes.Load(),
		LocalHits: c.localHits.Load(),
		RedisHits: c.redisHits.Load(),
		Misses:    c.misses.Load(),
		Evictions: c.local.evictions.Load(),
		Redis:     c.rdb != nil,
		RedisUp:   c.rdb == nil || c.redisUp.Load(),
		Coherent:  c.coherent(c.now().UnixNano()),
	}
}

// leaseSlack shortens coherence leases so that scheduling delays between reading the clock
// and serving still honour CoherenceBound.
const leaseSlack = 10 * time.Millisecond

// tombstoneTTL is how long invalidation times are kept: far longer than any GHL read takes.
const tombstoneTTL = 5 * time.Minute

// tombstone is indexDrop for the embedded store: the tombstones only grow, by at least
// 1 ms an invalidation.
func (c *Cache) tombstone(idl []string) stamps {
	now := c.now().UnixMilli()
	c.tombMu.Lock()
	defer c.tombMu.Unlock()
	if len(c.tombs) > 10000 {
		for id, t := range c.tombs {
			if now-t > tombstoneTTL.Milliseconds() {
				delete(c.tombs, id)
			}
		}
	}
	st := newStamps(len(idl))
	for _, id := range idl {
		prev := c.tombs[id]
		t := max(prev+1, now)
		c.tombs[id], st.prev[id], st.own[id] = t, prev, t
	}
	return st
}

// tombstoned is store's refusal for the embedded store.
func (c *Cache) tombstoned(idl []string, fetched int64, own map[string]int64) bool {
	c.tombMu.Lock()
	defer c.tombMu.Unlock()
	for _, id := range idl {
		t, ok := c.tombs[id]
		if o := own[id]; o > 0 {
			if t != o {
				return true
			}
		} else if ok && t >= fetched {
			return true
		}
	}
	return false
}
