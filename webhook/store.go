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
// so a delivery GHL sends twice — a duplicate, or the same event to two replicas — is
// applied (and forwarded) once. Without Redis, or while it fails, this replica's memory
// decides.
//
// GHL resends a delivery only when its receiver answered 429, the same payload (its
// original timestamp) every 10 minutes, up to six times. A delivery the sidecar could not
// hand on to the app is answered 429 and its id marked as awaiting that retry: the retry is
// then taken once, however old its timestamp, because GHL announced it by our 429 and its
// signature shows GHL sent it.
type seen struct {
	rdb    redis.UniversalClient
	prefix string
	ttl    time.Duration // how long a processed id is remembered
	now    func() time.Time

	mu    sync.Mutex
	local map[string]mark // id hash -> state, used when Redis is absent or failing
}

type mark struct {
	until time.Time
	retry bool // answered 429: GHL's retry is expected
}

// seenMax bounds the local memory; past it, expired ids go, then everything (a delivery
// older than max_age is refused by its timestamp anyway).
const seenMax = 100_000

// retryWindow is how long an id answered 429 waits for GHL's retry: six retries 10
// minutes apart, with jitter ("about 1 h 10 min", GHL's Automated Webhook Retries guide).
const retryWindow = 90 * time.Minute

func (s *seen) key(h string) string { return s.prefix + ":{wh:" + h + "}:seen" }

// claimScript takes an id for processing: new (and, when ARGV[2] is "1", not too old), or
// awaiting GHL's retry. It returns 1 when taken, 0 for an id already processed, -1 for a
// new id whose delivery is too old.
var claimScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v == 'retry' or (not v and ARGV[2] == '1') then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
  return 1
end
if not v then return -1 end
return 0
`)

// Claim outcomes.
const (
	claimed   = 1
	duplicate = 0
	tooOld    = -1
)

// claim takes id for processing (claimed), or says it was processed already (duplicate),
// or that it is new but fresh is false: its timestamp is out of webhooks.max_age, and only
// a retry GHL announced may be that old (tooOld).
func (s *seen) claim(ctx context.Context, id string, fresh bool) (int, error) {
	h := hashed(id)
	if s.rdb != nil {
		f := "0"
		if fresh {
			f = "1"
		}
		n, err := claimScript.Run(ctx, s.rdb, []string{s.key(h)}, s.ttl.Milliseconds(), f).Int()
		if err == nil {
			return n, nil
		}
		return s.claimLocal(h, fresh), err // this replica's memory decided
	}
	return s.claimLocal(h, fresh), nil
}

func (s *seen) claimLocal(h string, fresh bool) int {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.local[h]
	if ok && !now.Before(m.until) {
		ok = false
	}
	switch {
	case ok && !m.retry:
		return duplicate
	case !ok && !fresh:
		return tooOld
	}
	s.putLocal(h, mark{until: now.Add(s.ttl)}, now)
	return claimed
}

// putLocal records a mark within seenMax; call with s.mu held.
func (s *seen) putLocal(h string, m mark, now time.Time) {
	if len(s.local) >= seenMax {
		for k, old := range s.local {
			if !now.Before(old.until) {
				delete(s.local, k)
			}
		}
		if len(s.local) >= seenMax {
			s.local = make(map[string]mark)
		}
	}
	s.local[h] = m
}

// awaitRetry marks a claimed id as answered 429: GHL's retry of it is to be processed.
func (s *seen) awaitRetry(ctx context.Context, id string) {
	h := hashed(id)
	now := s.now()
	s.mu.Lock()
	s.putLocal(h, mark{until: now.Add(retryWindow), retry: true}, now)
	s.mu.Unlock()
	if s.rdb != nil {
		_ = s.rdb.Set(ctx, s.key(h), "retry", retryWindow).Err()
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
