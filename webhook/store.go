package webhook

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// hashed names a value in Redis without its text: webhook ids and location ids are a
// customer's.
func hashed(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:16])
}

// seen remembers the webhookIds already processed, on every replica that shares a Redis,
// so a delivery GHL sends twice — a retry, or the same event to two replicas — is applied
// (and forwarded) once. Without Redis, or while it fails, this replica's memory decides.
type seen struct {
	rdb    redis.UniversalClient
	prefix string
	ttl    time.Duration
	now    func() time.Time

	mu    sync.Mutex
	local map[string]time.Time // id hash -> until
}

// seenMax bounds the local memory; past it, expired ids go, then everything (a delivery
// older than max_age is refused by its timestamp anyway).
const seenMax = 100_000

func (s *seen) key(h string) string { return s.prefix + ":{wh:" + h + "}:seen" }

// claim says whether id is new: the caller processes the delivery. A claim made for a
// delivery that then failed is released, so that GHL's retry is processed.
func (s *seen) claim(ctx context.Context, id string) (bool, error) {
	h := hashed(id)
	now := s.now()
	s.mu.Lock()
	if until, ok := s.local[h]; ok && now.Before(until) {
		s.mu.Unlock()
		return false, nil
	}
	if len(s.local) >= seenMax {
		for k, until := range s.local {
			if !now.Before(until) {
				delete(s.local, k)
			}
		}
		if len(s.local) >= seenMax {
			s.local = make(map[string]time.Time)
		}
	}
	s.local[h] = now.Add(s.ttl)
	s.mu.Unlock()
	if s.rdb == nil {
		return true, nil
	}
	ok, err := s.rdb.SetNX(ctx, s.key(h), "1", s.ttl).Result()
	if err != nil {
		return true, err // this replica's memory decided
	}
	return ok, nil
}

func (s *seen) release(ctx context.Context, id string) {
	h := hashed(id)
	s.mu.Lock()
	delete(s.local, h)
	s.mu.Unlock()
	if s.rdb != nil {
		_ = s.rdb.Del(ctx, s.key(h)).Err()
	}
}

// Locations remembers which scopes (credentials' ScopeKeys) belong to which location: a
// JWT's authClassId, or a location a request named (a locationId in its path, query or
// body). A webhook names a location only, and its lists and searches are cached per scope:
// these are the scopes whose copies it drops. With Redis every replica's sightings count.
type Locations struct {
	rdb    redis.UniversalClient
	prefix string
	now    func() time.Time

	mu    sync.Mutex
	local map[string]map[string]time.Time // location hash -> scope key -> last noted
}

// NewLocations returns a registry; rdb may be nil (embedded).
func NewLocations(rdb redis.UniversalClient, prefix string) *Locations {
	if prefix == "" {
		prefix = "ghlproxy"
	}
	return &Locations{rdb: rdb, prefix: prefix, now: time.Now, local: map[string]map[string]time.Time{}}
}

// A pair is written to Redis again at most every locationRenew, and lives there
// locationLife: a scope that stops naming a location drops out of it.
const (
	locationRenew = 6 * time.Hour
	locationLife  = 7 * 24 * time.Hour
	locationsMax  = 50_000 // local pairs; past it the local memory starts over
)

func (l *Locations) key(h string) string { return l.prefix + ":{whloc:" + h + "}:scopes" }

// Note records that scope belongs to location. It costs a map lookup unless the pair is new
// (or due for renewal, every locationRenew); then it is written to Redis before Note
// returns, so that a webhook reaching any replica right after the answer that named the
// location finds the scope. A failed write is retried at the pair's next sighting.
func (l *Locations) Note(ctx context.Context, scope, location string) {
	if l == nil || scope == "" || location == "" {
		return
	}
	h := hashed(location)
	now := l.now()
	l.mu.Lock()
	scopes := l.local[h]
	if at, ok := scopes[scope]; ok && now.Sub(at) < locationRenew {
		l.mu.Unlock()
		return
	}
	if scopes == nil {
		if len(l.local) >= locationsMax {
			l.local = map[string]map[string]time.Time{}
		}
		scopes = map[string]time.Time{}
		l.local[h] = scopes
	}
	scopes[scope] = now
	l.mu.Unlock()
	if l.rdb == nil {
		return
	}
	pipe := l.rdb.Pipeline()
	pipe.SAdd(ctx, l.key(h), scope)
	pipe.Expire(ctx, l.key(h), locationLife)
	if _, err := pipe.Exec(ctx); err != nil {
		l.mu.Lock()
		delete(l.local[h], scope) // noted again next time
		l.mu.Unlock()
	}
}

// Scopes returns the scopes known to belong to location: this replica's and Redis's.
func (l *Locations) Scopes(ctx context.Context, location string) ([]string, error) {
	h := hashed(location)
	set := map[string]bool{}
	l.mu.Lock()
	for s := range l.local[h] {
		set[s] = true
	}
	l.mu.Unlock()
	var err error
	if l.rdb != nil {
		var members []string
		if members, err = l.rdb.SMembers(ctx, l.key(h)).Result(); err == nil {
			for _, s := range members {
				set[s] = true
			}
		}
	}
	out := make([]string, 0, len(set))
	for s := range set {
		out = append(out, s)
	}
	return out, err
}
