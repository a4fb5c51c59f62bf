package dedupe

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ghlproxy/ghlproxy/internal/luapipe"
	"github.com/ghlproxy/ghlproxy/internal/seal"
	"github.com/ghlproxy/ghlproxy/internal/upstream"
)

// The shared protocol. Per fold key K, all in one hash slot ({fold:K}), so that on a Redis
// Cluster every script touches one slot (on a single Redis, luapipe.OneScript, acquire also
// lists K under its tag indexes and forgetAllBody tombstones every fold the indexes list):
//
//	<prefix>:{fold:K}:lock    "p:<token>" (a read), "w:<token>" (a write not sent yet) or
//	                          "s:<token>" (a write sent), PX LeaseTTL, renewed by the
//	                          leader while its fetch runs
//	<prefix>:{fold:K}:sent    "<token>" once a write may have reached upstream, until the
//	                          answer is stored (PX max(window, WaitBound), renewed)
//	<prefix>:{fold:K}:result  record: kind, token, payload (see encodeRecord; no payload
//	                          when the cache holds the answer, recCached); or a
//	                          tombstone "X", which a leader that begins after it adopts
//	                          as "X<token>", so that only tombstones laid during its
//	                          own call keep its answer from being replayed
//	<prefix>:{fold:K}:forgot  "<token>" of the leader in flight when a Forget reached K,
//	                          PX CallTimeout: its answer may predate the write (a read),
//	                          or its order against that write is unknown (a sent write)
//
// and per invalidation tag T a sorted set <prefix>:{foldidx:H(T)} (H: 128 bits of SHA-256,
// as tags name entities) of the fold keys of calls carrying it, scored by when their
// replay expires (Redis time). Forget reads it and leaves it: a reply lost on the way
// leaves the members for the retry to find, and unlisting after the tombstones could race
// with a read that lists its key again. Members go when they expire.
//
// Callers of K on other replicas find the lock, wait for the "done" message naming K on
// <prefix>:fold:done (subscribed once, when the Fold is built, so no notice can be lost
// between a look and a wait) and look again; they also look again every LeaseTTL, which
// only matters when a message was lost or the leader died: then the lock has expired, and
// the first waiter to look takes the call over — unless it is a write whose :sent key says
// it may have been applied: if its marker is still missing a lease later (a live leader
// restores it), everyone gets *LeaderLostError{Sent: true}.

// Record kinds, the first byte of a :result value.
const (
	recAnswer      = 'R' // replayable answer
	recShared      = 'N' // answer for the waiters of that call only
	recError       = 'E' // fetch error, for the waiters of that call only
	recUnconfirmed = 'U' // sent write without an answer: replays get *UnconfirmedError
	recForgotten   = 'X' // tombstone left by Forget: an answer stored later is not replayed
	recCached      = 'C' // the cache holds the answer (Attempt.Cached): for that call's waiters
)

const tokenLen = 16

type scripts struct {
	acquire, markSent, renew, finish, release, tomb, index, members *redis.Script
}

// tombLua defines tomb(result, lock, forgot, ttl ms), which names the leader in flight, if
// any, so that its answer is not replayed — a read, or a write already sent: a write not
// sent yet goes upstream after the write that forgets; replaces a replayable answer, or
// nothing, with a tombstone; and leaves records that waiters of an earlier call still need
// (a leader in flight over such a record is stopped by the first step alone).
const tombLua = `
local function tomb(result, lock, forgot, ttl)
  local l = redis.call('GET', lock)
  if l and string.sub(l, 1, 1) == 'w' then return 0 end
  if l then redis.call('SET', forgot, string.sub(l, 3), 'PX', ttl) end
  local cur = redis.call('GET', result)
  if cur then
    local k = string.sub(cur, 1, 1)
    if k ~= 'R' and k ~= 'X' then return 0 end
  end
  redis.call('SET', result, 'X', 'PX', ttl)
  return 1
end
`

func newScripts() scripts {
	return scripts{
		// KEYS lock, sent, result, forgot, then the call's tag indexes on a single Redis;
		// ARGV token, lease ms, write, token waited for, fold key, index life ms.
		// -> {1, record, pttl} | {2, lock value} | {3} sent and leader gone | {0} leader now
		// | {4} a read in flight that a Forget reached: wait for it to end, not for its
		// answer, which may predate the write. A new leader lists the key under the tag
		// indexes given (listLua) before it takes the lock, so that an error there leaves
		// no lock behind.
		acquire: redis.NewScript(`
local r = redis.call('GET', KEYS[3])
if r then
  local k = string.sub(r, 1, 1)
  if k == 'R' or k == 'U' or (ARGV[4] ~= '' and string.sub(r, 2, 17) == ARGV[4] and k ~= 'X') then
    return {1, r, redis.call('PTTL', KEYS[3])}
  end
end
local l = redis.call('GET', KEYS[1])
if l then
  -- This call's own marker: a run of this script took it and its reply was lost (go-redis
  -- sends a timed-out command again on a new connection). Waiting for it would wait a
  -- whole lease on itself.
  if l == 'p:' .. ARGV[1] or l == 'w:' .. ARGV[1] then return {0} end
  if redis.call('GET', KEYS[4]) == string.sub(l, 3) then return {4} end
  return {2, l}
end
if ARGV[3] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then return {3} end
` + listLua(5, 5, 6) + `
local kind = 'p:'
if ARGV[3] == '1' then kind = 'w:' end
redis.call('SET', KEYS[1], kind .. ARGV[1], 'PX', ARGV[2])
if r and string.sub(r, 1, 1) == 'X' then
  -- A tombstone laid before this call began (bare, or adopted by a call before it): it
  -- concerns calls before this one (a stalled leader's answer still stops at it), not
  -- this one's.
  redis.call('SET', KEYS[3], 'X' .. ARGV[1], 'KEEPTTL')
end
return {0}`),
		// KEYS lock, sent; ARGV token, lease ms, sent ms. -> 1, or 0 when the lock is not ours.
		markSent: redis.NewScript(`
local l = redis.call('GET', KEYS[1])
if l ~= 'w:' .. ARGV[1] and l ~= 's:' .. ARGV[1] then return 0 end
redis.call('SET', KEYS[1], 's:' .. ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
return 1`),
		// KEYS lock, sent; ARGV token, lease ms, sent ms. -> 1, or 0 when the lock is not ours.
		// A sent write's leader restores its marker if it expired while this replica
		// stalled: nobody can have taken a sent write over.
		renew: redis.NewScript(`
local l = redis.call('GET', KEYS[1])
if not l and redis.call('GET', KEYS[2]) == ARGV[1] then
  l = 's:' .. ARGV[1]
  redis.call('SET', KEYS[1], l, 'PX', ARGV[2])
end
if l ~= 'p:' .. ARGV[1] and l ~= 'w:' .. ARGV[1] and l ~= 's:' .. ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if string.sub(l, 1, 1) == 's' then redis.call('PEXPIRE', KEYS[2], ARGV[3]) end
return 1`),
		// KEYS lock, sent, result, forgot; ARGV token, record, ttl ms, channel, key, short
		// ttl ms. -> the kind stored: an answer forgotten while it was fetched is stored as 'N'.
		finish: redis.NewScript(`
local rec, ttl = ARGV[2], ARGV[3]
local cur = redis.call('GET', KEYS[3])
if string.sub(rec, 1, 1) == 'R' and ((cur and string.sub(cur, 1, 1) == 'X' and cur ~= 'X' .. ARGV[1]) or redis.call('GET', KEYS[4]) == ARGV[1]) then
  rec, ttl = 'N' .. string.sub(rec, 2), ARGV[6]
end
redis.call('SET', KEYS[3], rec, 'PX', ttl)
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
local l = redis.call('GET', KEYS[1])
if l == 'p:' .. ARGV[1] or l == 'w:' .. ARGV[1] or l == 's:' .. ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return string.sub(rec, 1, 1)`),
		// KEYS lock; ARGV token, channel, key. A call abandoned before it sent anything
		// gives its marker up, so that waiters on other replicas take it over at once.
		release: redis.NewScript(`
local l = redis.call('GET', KEYS[1])
if l == 'p:' .. ARGV[1] or l == 'w:' .. ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1`),
		// KEYS result, lock, forgot; ARGV ttl ms (see tombLua).
		tomb: redis.NewScript(tombLua + `
return tomb(KEYS[1], KEYS[2], KEYS[3], ARGV[1])`),
		// KEYS tag indexes; ARGV fold key, life ms (see listLua). All of a call's tags in
		// one run on a single Redis, one per run on a Cluster (see tagParts).
		index: redis.NewScript(listLua(1, 1, 2) + `
return 1`),
		// KEYS tag indexes. -> listed() (see listedLua): a Forget's first step on a Cluster.
		members: redis.NewScript(listedLua + `
return listed(KEYS)`),
	}
}

// listLua is the Lua that lists a fold key under tag indexes KEYS[first..] until its
// replay can no longer exist (ARGV[key] the fold key, ARGV[life] ms from now), trims
// members past theirs, and keeps each index alive as long as its longest-lived member.
// Redis's clock scores every replica's members alike. ZADD comes first (the trim cannot
// remove what it adds, scored later than now): a full Redis (maxmemory under noeviction)
// refuses a script at its first command that may grow memory and lets later ones through,
// so in acquire this is what refuses before the lock is taken.
func listLua(first, key, life int) string {
	return fmt.Sprintf(`
if #KEYS >= %[1]d then
  local t = redis.call('TIME')
  local now = t[1] * 1000 + math.floor(t[2] / 1000)
  local life = tonumber(ARGV[%[3]d])
  for i = %[1]d, #KEYS do
    redis.call('ZADD', KEYS[i], now + life, ARGV[%[2]d])
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
    if redis.call('PTTL', KEYS[i]) < life then redis.call('PEXPIRE', KEYS[i], life) end
  end
end`, first, key, life)
}

// listedLua defines listed(keys), the fold keys of any of the tag indexes keys whose
// replays may still exist (a key listed under several tags comes once per tag).
const listedLua = `
local function listed(keys)
  local t = redis.call('TIME')
  local now = t[1] * 1000 + math.floor(t[2] / 1000)
  local out = {}
  for i = 1, #keys do
    for _, m in ipairs(redis.call('ZRANGEBYSCORE', keys[i], now, '+inf')) do out[#out + 1] = m end
  end
  return out
end
`

// finishCachedBody is the finish script for an answer the cache holds, as a step of the
// cache's store run (Attempt.FinishStep): the answerless record for the waiters, the marker
// given up, the notice.
//
//	KEYS lock, result; ARGV token, record, ttl ms, channel, fold key
const finishCachedBody = `
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
if redis.call('GET', KEYS[1]) == 'p:' .. ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1`

// forgetAllBody is a whole Forget in one run, on a single Redis (luapipe.OneScript): a
// tombstone for every fold the tag indexes list (listed, then tomb for each), then the
// notice. The folds' key names are built here (as keysOf does), which only a single Redis
// allows: on a Cluster a script may touch only the keys it is given, in one slot. It runs as
// a step (luapipe.Step, see forgetStep), alone or after the cache's step of the same
// invalidation (ForgetPart).
//
//	KEYS tag indexes; ARGV fold key prefix, the key spared, ttl ms, channel, notice
const forgetAllBody = `
local seen = {}
for _, m in ipairs(listed(KEYS)) do
  if not seen[m] and m ~= ARGV[2] then
    seen[m] = true
    local base = ARGV[1] .. m .. '}'
    tomb(base .. ':result', base .. ':lock', base .. ':forgot', ARGV[3])
  end
end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1`

type keys struct{ lock, sent, result, forgot string }

// keysOf names the keys of fold key key; forgetAllBody builds the same names in Lua from
// foldPrefix.
func (f *Fold) keysOf(key string) keys {
	base := f.foldPrefix() + key + "}"
	return keys{lock: base + ":lock", sent: base + ":sent", result: base + ":result", forgot: base + ":forgot"}
}

// tagKey names a tag's set by a hash of the tag: tags carry entity ids from paths
// ("<scope>:contacts/<contactId>"), and nothing in Redis may name a contact.
func (f *Fold) tagKey(tag string) string {
	sum := sha256.Sum256([]byte(tag))
	return f.cfg.Prefix + ":{foldidx:" + hex.EncodeToString(sum[:16]) + "}"
}

// tagParts names the tag indexes of tags in the groups one script run may take: all in
// one on a single Redis, one each on a Cluster, where every index is its own hash tag (see
// luapipe.OneScript).
func (f *Fold) tagParts(tags []string) [][]string {
	if len(tags) == 0 {
		return nil
	}
	if f.oneScript {
		all := make([]string, len(tags))
		for i, t := range tags {
			all[i] = f.tagKey(t)
		}
		return [][]string{all}
	}
	parts := make([][]string, len(tags))
	for i, t := range tags {
		parts[i] = []string{f.tagKey(t)}
	}
	return parts
}

func (f *Fold) foldPrefix() string { return f.cfg.Prefix + ":{fold:" }

func (f *Fold) doneChannel() string                   { return f.cfg.Prefix + ":fold:done" }
func (f *Fold) forgetChannel() string                 { return f.cfg.Prefix + ":fold:forget" }
func ms(d time.Duration) int64                        { return max(d.Milliseconds(), 1) }
func newToken() string                                { return fmt.Sprintf("%016x", rand.Uint64()) }
func (f *Fold) sentTTL(w time.Duration) time.Duration { return max(w, f.cfg.WaitBound) }

// shortTTL is how long a record meant only for the waiters of one call stays: they read it
// right after the done message, or at their next look, LeaseTTL later.
func (f *Fold) shortTTL() time.Duration { return max(3*f.cfg.LeaseTTL, time.Second) }

func (f *Fold) killedNow() bool {
	select {
	case <-f.killed:
		return true
	default:
		return false
	}
}

// coordinate settles a call through Redis: replay a stored answer, wait for the replica
// leading it, or lead it.
func (f *Fold) coordinate(ctx context.Context, c *call) {
	k := f.keysOf(c.key)
	tok := newToken()
	write := "0"
	if c.opt.Write {
		write = "1"
	}
	// On a single Redis the new leader's tag indexes go in with its lock (see lead).
	keys, life := []string{k.lock, k.sent, k.result, k.forgot}, int64(0)
	listed := false // the acquire that makes this call the leader lists it under its tags
	if window := f.window(c.opt); f.oneScript && window > 0 && len(c.opt.Tags) > 0 {
		keys = append(keys, f.tagParts(c.opt.Tags)[0]...)
		life, listed = ms(window+f.cfg.CallTimeout), true
	}
	deadline := time.Now().Add(f.cfg.WaitBound)
	waitTok := ""           // token of the leader this call is waiting for
	var lostSince time.Time // when a sent write was first seen without its leader's marker
	looked := false
	for {
		before := time.Now()
		res, err := f.scripts.acquire.Run(ctx, f.rdb, keys, tok, ms(f.cfg.LeaseTTL), write, waitTok, c.key, life).Slice()
		if !looked {
			looked = true
			close(c.looked)
		}
		switch {
		case err != nil && (waitTok == "" || !c.opt.Write):
			// Redis is unreachable: fold within this replica rather than fail the request.
			// A write this replica was waiting for is not run again: its leader may be alive.
			f.log.Warn("redis unavailable; folding within this replica only", "err", err)
			f.leadLocal(ctx, c)
			return
		case err != nil:
			f.log.Warn("redis unavailable while waiting for an identical write", "err", err)
		case len(res) == 0:
			f.finish(c, nil, errors.New("dedupe: unexpected reply from redis"), Leader, keepNothing, time.Time{})
			return
		default:
			switch res[0] {
			case int64(0):
				if waitTok != "" {
					f.log.Info("took over an identical request whose replica stopped", "key", c.key, "write", c.opt.Write)
				}
				if f.lead(ctx, c, tok, k, listed, before) {
					return
				}
				// The marker expired before the write was sent (this replica stalled) and
				// another replica may lead it now: wait for that one instead.
				tok, waitTok = newToken(), ""
				continue
			case int64(1):
				rec, _ := res[1].(string)
				pttl, _ := res[2].(int64)
				if f.settle(ctx, c, rec, waitTok, before.Add(time.Duration(pttl)*time.Millisecond)) {
					return
				}
				// The answer it waited for was the cache's, and the cache no longer holds
				// it: look again at once, as a caller that waits for nobody (this one leads).
				waitTok = ""
				continue
			case int64(2):
				l, _ := res[1].(string)
				if len(l) > 2 {
					waitTok = l[2:]
				}
			case int64(4):
				waitTok = "" // look again once it ends, and lead
			case int64(3):
				// A live leader that stalled past its lease restores the marker at its
				// next renewal; only a marker still missing a lease later means it died.
				if lostSince.IsZero() {
					lostSince = before
				} else if before.Sub(lostSince) >= f.cfg.LeaseTTL {
					f.finish(c, nil, &LeaderLostError{Sent: true}, Shared, keepNothing, time.Time{})
					return
				}
			}
			if res[0] != int64(3) {
				lostSince = time.Time{}
			}
		}
		left := time.Until(deadline)
		if left <= 0 {
			f.finish(c, nil, &WaitError{Waited: f.cfg.WaitBound}, Shared, keepNothing, time.Time{})
			return
		}
		t := time.NewTimer(min(left, f.cfg.LeaseTTL))
		select {
		case <-c.wake:
		case <-t.C:
		case <-f.closing:
			t.Stop()
			f.finish(c, nil, errors.New("dedupe: shutting down while waiting for an identical request on another replica"), Shared, keepNothing, time.Time{})
			return
		}
		t.Stop()
	}
}

// settle answers the call from a stored record: a replay, or the answer of the call it
// waited for. It returns false, having answered nobody, when that answer was the cache's
// and the cache no longer holds it.
func (f *Fold) settle(ctx context.Context, c *call, rec, waitTok string, expires time.Time) bool {
	kind, recTok, payload, err := splitRecord(rec)
	if err == nil && kind == recCached {
		if c.opt.FromCache == nil {
			return false
		}
		resp, ok := c.opt.FromCache(ctx)
		if !ok {
			return false
		}
		f.finish(c, resp, nil, Shared, keepNothing, time.Time{})
		return true
	}
	if err == nil && c.opt.Key != nil {
		payload, err = seal.Open(c.opt.Key, recordAD(c.key), payload)
	}
	if err != nil {
		f.finish(c, nil, err, Shared, keepNothing, time.Time{})
		return true
	}
	out := Replay
	if waitTok != "" && recTok == waitTok {
		out = Shared
	}
	switch kind {
	case recAnswer, recShared:
		resp := new(upstream.Response)
		if err := resp.UnmarshalBinary(payload); err != nil {
			f.finish(c, nil, fmt.Errorf("dedupe: stored answer: %w", err), out, keepNothing, time.Time{})
			return true
		}
		k := keepNothing
		if kind == recAnswer {
			k = keepAnswer
		}
		f.finish(c, resp, nil, out, k, expires)
	case recUnconfirmed:
		if out == Shared {
			f.finish(c, nil, &RemoteError{Msg: string(payload)}, out, keepNothing, time.Time{})
			return true
		}
		f.finish(c, nil, &UnconfirmedError{Cause: string(payload)}, out, keepNothing, time.Time{})
	default:
		f.finish(c, nil, &RemoteError{Msg: string(payload)}, out, keepNothing, time.Time{})
	}
	return true
}

// leadLocal runs the call without Redis (degraded): shared by this replica's callers only,
// and not kept for replay, since other replicas could not learn of a Forget.
func (f *Fold) leadLocal(ctx context.Context, c *call) {
	resp, err := f.fetch(ctx, c, f.newMark(c))
	f.finish(c, resp, err, Leader, keepNothing, time.Time{})
}

// lead makes the upstream call holding the marker tok, then stores the answer and tells
// the other replicas. It returns false, having answered nobody, when the write lost its
// marker before it was sent. listed says the acquire script already indexed the call's
// tags, no later than acquiredAt.
func (f *Fold) lead(ctx context.Context, c *call, tok string, k keys, listed bool, acquiredAt time.Time) bool {
	window := f.window(c.opt)
	indexed := true
	index := func(life time.Duration) error {
		pipe := luapipe.New(f.rdb)
		for _, part := range f.tagParts(c.opt.Tags) {
			pipe.Run(ctx, f.scripts.index, part, c.key, ms(life))
		}
		return pipe.Exec(ctx)
	}
	indexedAt := time.Now()
	if listed {
		indexedAt = acquiredAt
	}
	if window > 0 && len(c.opt.Tags) > 0 && !listed {
		// Indexed before the fetch, so a Forget while it runs finds the key and leaves a
		// tombstone that keeps the possibly outdated answer from being replayed (see the
		// tomb script for writes). The record can live until the fetch times out plus the
		// window.
		if err := index(window + f.cfg.CallTimeout); err != nil {
			// No Forget could find this answer: it goes to this call's callers only.
			f.log.Warn("redis: indexing fold tags; the answer will not be replayed", "err", err)
			indexed = false
		}
	}

	stop, stopped := make(chan struct{}), make(chan struct{})
	sent := f.newMark(c)
	go f.renew(ctx, tok, k, window, sent, stop, stopped)
	if !c.opt.Write && f.oneScript {
		sent.finishStep = func() luapipe.Step {
			if f.killedNow() {
				return luapipe.Step{}
			}
			return luapipe.Step{Name: "dedupe.finishCached", Body: finishCachedBody, Keys: []string{k.lock, k.result},
				Args:   []any{tok, string(rune(recCached)) + tok, ms(f.shortTTL()), f.doneChannel(), c.key},
				Client: f.rdb, Done: func(_ any, err error) {
					if err == nil {
						sent.finished.Store(true)
						return
					}
					// The run may have happened (a lost reply): the marker may be gone
					// already, so a Forget from now on would leave this call no note of
					// its own, and its answer, fetched before that write, must not be
					// replayed. The fold's own finish shares it with the waiters only.
					sent.noReplay.Store(true)
				}}
		}
	}
	if c.opt.Write {
		sent.mark = func() error {
			if f.killedNow() {
				return ErrLeaseLost
			}
			n, err := f.scripts.markSent.Run(ctx, f.rdb, []string{k.lock, k.sent}, tok, ms(f.cfg.LeaseTTL), ms(f.sentTTL(window))).Int()
			if err != nil {
				return fmt.Errorf("dedupe: recording in redis that the write is being sent: %w", err)
			}
			if n == 0 {
				return ErrLeaseLost
			}
			return nil
		}
	}
	resp, err := f.fetch(ctx, c, sent)
	close(stop)
	<-stopped
	if f.killedNow() {
		f.finish(c, nil, errors.New("dedupe: fold closed as if killed"), Leader, keepNothing, time.Time{})
		return true
	}
	if errors.Is(err, ErrLeaseLost) && !sent.sent() {
		return false
	}
	if sent.finished.Load() {
		// The cache's store finished the call in Redis (Attempt.FinishStep): the waiters
		// elsewhere read the cache's entry, and nothing is kept here.
		kp := keepNothing
		if err == nil && sent.cached.Load() {
			kp = keepCached
		}
		f.finish(c, resp, err, Leader, kp, time.Time{})
		return true
	}
	if sent.abandoned() {
		// Every caller here left before anything was sent: give the marker up for the
		// waiters elsewhere, who take the call over.
		if rerr := f.scripts.release.Run(ctx, f.rdb, []string{k.lock}, tok, f.doneChannel(), c.key).Err(); rerr != nil {
			f.log.Debug("redis: giving up the marker of an abandoned call; others take it over when it expires", "err", rerr)
		}
		f.finish(c, nil, err, Leader, keepNothing, time.Time{})
		return true
	}

	kp := f.keep(c, resp, err, sent)
	if kp == keepAnswer && indexed && time.Since(indexedAt) > f.cfg.CallTimeout {
		// The fetch outlasted its bound (a write the batcher sent regardless of it): list
		// the key again, for as long as its record will live, or a Forget could miss it.
		if err := index(window + time.Second); err != nil {
			indexed = false
		}
	}
	f.mu.Lock()
	forgotten := c.forgotten
	f.mu.Unlock()
	if kp == keepAnswer && (!indexed || forgotten) {
		// A write on this replica forgot its tags while it ran (the tombstone in Redis
		// may not have landed), or no Forget could find it: share, do not replay.
		kp = keepNothing
	}
	ttl := window
	if kp == keepNothing || kp == keepCached {
		ttl = f.shortTTL()
	}
	rec, encErr := encodeRecord(c, kp, tok, resp, err)
	if encErr != nil {
		f.finish(c, resp, err, Leader, keepNothing, time.Time{})
		return true
	}
	before := time.Now()
	kind, ferr := f.scripts.finish.Run(ctx, f.rdb, []string{k.lock, k.sent, k.result, k.forgot},
		tok, rec, ms(ttl), f.doneChannel(), c.key, ms(f.shortTTL())).Text()
	switch {
	case ferr != nil:
		// Waiters on other replicas find the lock expired and take over (reads) or fail
		// (sent writes); this replica does not replay what the others cannot see.
		f.log.Warn("redis: storing the answer of a folded request", "err", ferr)
		kp = keepNothing
	case kind == string(rune(recShared)):
		kp = keepNothing
	}
	f.finish(c, resp, err, Leader, kp, before.Add(ttl))
	return true
}

// renew keeps the marker alive while the leader's fetch runs.
func (f *Fold) renew(ctx context.Context, tok string, k keys, window time.Duration, sent *Attempt, stop <-chan struct{}, stopped chan<- struct{}) {
	defer close(stopped)
	t := time.NewTicker(f.cfg.LeaseTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-f.killed:
			return
		case <-t.C:
		}
		n, err := f.scripts.renew.Run(ctx, f.rdb, []string{k.lock, k.sent}, tok, ms(f.cfg.LeaseTTL), ms(f.sentTTL(window))).Int()
		switch {
		case err != nil:
			f.log.Warn("redis: renewing the marker of a folded request", "err", err)
		case n == 0:
			if !sent.finished.Load() { // else the cache's store gave it up, finishing the call
				f.log.Warn("lost the marker of a folded request: another replica may take it over", "lease", f.cfg.LeaseTTL)
			}
			return
		}
	}
}

// encodeRecord lays out a :result value: kind byte, leader token, then the encoded
// response (R, N) or the error text (E, U) — sealed with the caller's key when the call
// has one (Options.Key), so that Redis holds no GHL data in the clear.
func encodeRecord(c *call, k keep, tok string, resp *upstream.Response, err error) (string, error) {
	var kind byte
	var payload []byte
	switch {
	case k == keepUnconfirmed:
		kind, payload = recUnconfirmed, []byte(err.Error())
	case k == keepCached:
		// No payload: the answer is the cache's, sealed and stored once, there.
		return string(rune(recCached)) + tok, nil
	case err != nil:
		kind, payload = recError, []byte(err.Error())
	default:
		kind = recShared
		if k == keepAnswer {
			kind = recAnswer
		}
		b, merr := resp.MarshalBinary()
		if merr != nil {
			return "", merr
		}
		payload = b
	}
	if c.opt.Key != nil {
		sealed, serr := seal.Seal(c.opt.Key, recordAD(c.key), payload)
		if serr != nil {
			return "", serr
		}
		payload = sealed
	}
	var sb strings.Builder
	sb.Grow(1 + tokenLen + len(payload))
	sb.WriteByte(kind)
	sb.WriteString(tok)
	sb.Write(payload)
	return sb.String(), nil
}

// recordAD binds a sealed record to its fold key.
func recordAD(key string) []byte { return []byte("ghlproxy fold record v1\x00" + key) }

func splitRecord(rec string) (kind byte, tok string, payload []byte, err error) {
	if len(rec) < 1+tokenLen {
		return 0, "", nil, errors.New("dedupe: corrupt stored record")
	}
	tok = rec[1 : 1+tokenLen]
	if _, err := hex.DecodeString(tok); err != nil {
		return 0, "", nil, errors.New("dedupe: corrupt stored record")
	}
	return rec[0], tok, []byte(rec[1+tokenLen:]), nil
}

// forgetShared removes the Redis replays of calls carrying tags, leaving tombstones for
// calls still in flight, and tells every replica to drop its in-process copies; the call
// of key except is spared throughout.
func (f *Fold) forgetShared(ctx context.Context, tags []string, except string) error {
	var firstErr error
	note := func(err error) {
		if err != nil && firstErr == nil {
			firstErr = fmt.Errorf("dedupe: forgetting replays: %w", err)
		}
	}
	notice := forgetNotice(f.origin, except, tags)
	if f.oneScript {
		// One command whatever the number of tags and keys (a search tag can list
		// hundreds): the write's caller waits for this.
		return f.forgot(ctx, tags, except, notice, luapipe.Steps(ctx, f.rdb, f.forgetStep(tags, except, notice)))
	}
	// On a Cluster, two round trips and the PUBLISH whatever the number of tags and keys.
	pipe := luapipe.New(f.rdb)
	var lists []*redis.Cmd
	for _, part := range f.tagParts(tags) {
		lists = append(lists, pipe.Run(ctx, f.scripts.members, part))
	}
	note(pipe.Exec(ctx))
	seen := make(map[string]bool)
	pipe = luapipe.New(f.rdb)
	for _, l := range lists {
		members, err := l.StringSlice()
		if err != nil {
			continue // noted above
		}
		for _, m := range members {
			if seen[m] || m == except {
				continue
			}
			seen[m] = true
			k := f.keysOf(m)
			pipe.Run(ctx, f.scripts.tomb, []string{k.result, k.lock, k.forgot}, ms(f.cfg.CallTimeout))
		}
	}
	note(pipe.Exec(ctx))
	// Once the tombstones are in, forget locally again: a read that began here after the
	// first forgetLocal may have found the old answer in Redis before them. Published only
	// now for the same reason: a replica that dropped its copy and looked in Redis before
	// them would take the old answer again.
	f.forgetLocal(tags, except)
	note(f.rdb.Publish(ctx, f.forgetChannel(), notice).Err())
	return firstErr
}

// forgetStep is the work of a Forget in Redis on a single Redis, as a step of a script run
// (forgetAllBody).
func (f *Fold) forgetStep(tags []string, except, notice string) luapipe.Step {
	var keys []string // no tags: the notice alone
	if parts := f.tagParts(tags); len(parts) > 0 {
		keys = parts[0]
	}
	return luapipe.Step{Name: "dedupe.forgetAll", Defs: tombLua + listedLua, Body: forgetAllBody, Keys: keys,
		Args: []any{f.foldPrefix(), except, ms(f.cfg.CallTimeout), f.forgetChannel(), notice}, Client: f.rdb}
}

// forgot ends a Forget on a single Redis whose step ran with the outcome err.
func (f *Fold) forgot(ctx context.Context, tags []string, except, notice string, err error) error {
	// Once the tombstones are in, forget locally again (see forgetShared's Cluster path).
	f.forgetLocal(tags, except)
	if err == nil {
		return nil
	}
	// When Redis answered but refused (full, under noeviction), tell the other replicas
	// now: it still takes a notice, and their in-process copies are what they would replay
	// without looking in Redis. An unreachable Redis would not take it either, and the
	// write's caller waits for this (the cache's rule too, Cache.dropIDs); the retry
	// (forgetLoop) notifies once Redis takes the Forget.
	var refused redis.Error
	if errors.As(err, &refused) {
		if perr := f.rdb.Publish(ctx, f.forgetChannel(), notice).Err(); perr != nil {
			f.log.Debug("redis: publishing a fold invalidation Redis refused", "err", perr)
		}
	}
	return fmt.Errorf("dedupe: forgetting replays: %w", err)
}

// A Forget notice is "@<origin>", then "!<except>" when the Forget spares a call, then the
// tags, a line each. Tags never begin with '@' or '!' (they are "<scope key>:<hash>", see
// routes.ScopedTag), so a notice without those lines, from a replica of an older version,
// still parses: every line is a tag.
func forgetNotice(origin, except string, tags []string) string {
	head := "@" + origin + "\n"
	if except != "" {
		head += "!" + except + "\n"
	}
	return head + strings.Join(tags, "\n")
}

func parseForgetNotice(payload string) (origin, except string, tags []string) {
	if rest, ok := strings.CutPrefix(payload, "@"); ok {
		origin, payload, _ = strings.Cut(rest, "\n")
	}
	if rest, ok := strings.CutPrefix(payload, "!"); ok {
		except, payload, _ = strings.Cut(rest, "\n")
	}
	if payload == "" {
		return origin, except, nil
	}
	return origin, except, strings.Split(payload, "\n")
}

// subscribe listens, for the life of the Fold, for calls finished and tags forgotten on
// any replica. It returns once the subscription is confirmed (or failed: go-redis keeps
// reconnecting, and waiters look again every LeaseTTL anyway).
func (f *Fold) subscribe() {
	ctx := context.Background()
	f.ps = f.rdb.Subscribe(ctx, f.doneChannel(), f.forgetChannel())
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	for range 2 {
		if _, err := f.ps.Receive(cctx); err != nil {
			f.log.Warn("redis: subscribing to fold notices; waiters fall back to looking every lease TTL", "err", err)
			break
		}
	}
	cancel()
	ch := f.ps.ChannelWithSubscriptions(redis.WithChannelSize(1024))
	f.bg.Add(1)
	go func() {
		defer f.bg.Done()
		for m := range ch {
			switch m := m.(type) {
			case *redis.Subscription:
				if m.Kind == "subscribe" {
					f.resync()
				}
			case *redis.Message:
				switch m.Channel {
				case f.doneChannel():
					f.wakeKey(m.Payload)
				case f.forgetChannel():
					if origin, except, tags := parseForgetNotice(m.Payload); origin != f.origin && len(tags) > 0 {
						f.forgets.Add(1)
						f.forgetLocal(tags, except)
					}
				}
			}
		}
	}()
}

func (f *Fold) wakeKey(key string) {
	f.mu.Lock()
	c := f.calls[key]
	f.mu.Unlock()
	if c != nil {
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
}

// resync follows a reconnection of the subscription: notices may have been missed, so
// in-process replays are dropped and every waiter looks again.
func (f *Fold) resync() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.replay.clear()
	for _, c := range f.calls {
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
}
