package cache

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ghlproxy/ghlproxy/internal/identity"
	"github.com/ghlproxy/ghlproxy/internal/luapipe"
	"github.com/ghlproxy/ghlproxy/internal/pending"
)

// keyspace names the Redis keys and channels (see the package comment).
type keyspace struct{ prefix string }

// entry names an entry by its fingerprint, in the slot of the fingerprint's first 16
// characters. dropAllBody builds the same name in Lua.
func (k keyspace) entry(fp string) string {
	tag := fp
	if len(tag) > 16 {
		tag = tag[:16]
	}
	return k.prefix + ":{c:" + tag + "}:e:" + fp
}

// entryPrefix is what entry puts before the fingerprint's slot, for dropAllBody.
func (k keyspace) entryPrefix() string { return k.prefix + ":{c:" }

func (k keyspace) index(id string) string     { return k.prefix + ":{x:" + id + "}:z" }
func (k keyspace) tombstone(id string) string { return k.prefix + ":{x:" + id + "}:inv" }
func (k keyspace) invalChannel() string       { return k.prefix + ":{cache}:inval" }
func (k keyspace) pingChannel(replica string) string {
	return k.prefix + ":{cache}:ping:" + replica
}

// store stores the sealed value and lists it under its ids, or refuses (-1) with nothing
// written when one id was invalidated after the answer may have been read (fetched,
// ARGV[5]); otherwise it returns whether an entry was there before, which other replicas
// may hold in process and must drop. With own > 0 for an id, the answer is a write's own
// (Cache.SetAfter): it is listed only while that id's tombstone is still the one the
// write's invalidation left. Listing trims members that expired and keeps the index alive
// as long as its longest-lived member.
//
// On a single Redis one run does it all, so nothing is ever listed without its entry nor
// stored unlisted. On a Cluster every run stays within one hash tag: a run with the entry
// alone (ARGV[1] set, no pairs), then one per id (ARGV[1] empty, KEYS the id's pair) —
// see redisSet for that order.
//
// On a single Redis it runs as a step (luapipe.Step) of a run that may carry another
// stage's step for the same answer (Set's also: the fold's finish of the call).
//
//	KEYS: [entry,] then index, tombstone per id; ARGV: sealed value ('' without the entry),
//	entry ttl (ms), fingerprint, expiry (ms), fetched (ms), now (ms), index ttl (ms), then
//	own tombstone per id (0: none)
const storeBody = `
local e = 0
if ARGV[1] ~= '' then e = 1 end
local n = (#KEYS - e) / 2
for i = 1, n do
  local t = redis.call('GET', KEYS[e + 2 * i])
  local own = tonumber(ARGV[7 + i])
  if own > 0 then
    if not t or tonumber(t) ~= own then return -1 end
  elseif t and tonumber(t) >= tonumber(ARGV[5]) then return -1 end
end
local existed = 0
if e == 1 then
  existed = redis.call('EXISTS', KEYS[1])
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
for i = 1, n do
  local z = KEYS[e + 2 * i - 1]
  redis.call('ZREMRANGEBYSCORE', z, '-inf', ARGV[6])
  redis.call('ZADD', z, ARGV[4], ARGV[3])
  if redis.call('PTTL', z) < tonumber(ARGV[7]) then redis.call('PEXPIRE', z, ARGV[7]) end
end
return existed`

var store = redis.NewScript(storeBody)

// indexDrop marks ids invalidated now and hands back, per id, the tombstone it found (0:
// none), the one it left, how many members follow, and the members. Tombstones only grow,
// by at least 1 ms an invalidation, so that one invalidation is told from the next
// whatever the replicas' clocks (SetAfter relies on it). It leaves the members listed,
// so that a reply lost on the way (the script ran, the caller saw a timeout) leaves them for
// the retry to find. Nothing unlists them afterwards either: a member goes when it expires
// (store trims by score), and unlisting after the delete could race with a store of the
// same key that lists it again, leaving that fresh entry out of reach of invalidations. A
// listed member whose entry is gone costs a DEL of nothing. It runs on a Cluster, one id a
// run; a single Redis runs dropAllBody instead.
//
//	KEYS: index, tombstone per id (dropKeys); ARGV: now (ms), tombstone ttl (ms)
var indexDrop = redis.NewScript(dropLua + `
local out = {}
for i = 1, #KEYS / 2 do
  local prev, t, m = drop(KEYS[2 * i - 1], KEYS[2 * i], ARGV[1], ARGV[2])
  table.insert(out, prev)
  table.insert(out, t)
  table.insert(out, tostring(#m))
  for _, fp in ipairs(m) do table.insert(out, fp) end
end
return out`)

// dropLua defines drop(index, tombstone, now ms, ttl ms), the step indexDrop and dropAllBody
// take per id: it raises the tombstone (see indexDrop) and returns the one found (0: none)
// and the one left, as decimal strings, and the members listed.
const dropLua = `
local function drop(z, inv, now, ttl)
  local prev = tonumber(redis.call('GET', inv) or '0')
  local t = math.max(prev + 1, tonumber(now))
  redis.call('SET', inv, string.format('%d', t), 'PX', ttl)
  return string.format('%d', prev), string.format('%d', t), redis.call('ZRANGE', z, 0, -1)
end
`

// dropKeys are the KEYS of indexDrop and dropAllBody for ids.
func (c *Cache) dropKeys(ids []string) []string {
	keys := make([]string, 0, 2*len(ids))
	for _, id := range ids {
		keys = append(keys, c.keys.index(id), c.keys.tombstone(id))
	}
	return keys
}

// dropAllBody is the whole of an invalidation in one run, on a single Redis
// (luapipe.OneScript): indexDrop for every id, then a DEL of each entry listed, then the
// notice to the other replicas. The entries' names are built here from their fingerprints
// (as keyspace.entry does), which only a single Redis allows: on a Cluster a script may
// touch only the keys it is given, in one slot. The order is redisDrop's: tombstones first, so that a store racing
// with the write is refused or its entry deleted; the notice last, so that a replica that
// drops its copy on it and looks in Redis finds nothing old. A notice Redis refuses fails the
// run (where publish only logs): the caller retries the whole invalidation, which is safe to
// repeat.
//
// It runs as a step (luapipe.Step) of a run that may carry other stages' steps of the same
// invalidation (InvalidateOwn's also: the fold's Forget), so a write's invalidation is one
// command.
//
//	KEYS: index, tombstone per id (dropKeys); ARGV: now (ms), tombstone ttl (ms), entry
//	name prefix, channel, notice -> {entries deleted, then per id the tombstone found (0:
//	none) and the one left}
const dropAllBody = `
local out, seen, n = {''}, {}, 0
for i = 1, #KEYS / 2 do
  local prev, t, m = drop(KEYS[2 * i - 1], KEYS[2 * i], ARGV[1], ARGV[2])
  table.insert(out, prev)
  table.insert(out, t)
  for _, fp in ipairs(m) do
    if not seen[fp] then
      seen[fp] = true
      n = n + redis.call('DEL', ARGV[3] .. string.sub(fp, 1, 16) .. '}:e:' .. fp)
    end
  end
end
out[1] = tostring(n)
redis.call('SPUBLISH', ARGV[4], ARGV[5])
return out`

func (c *Cache) timeout(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.cfg.RedisTimeout)
}

// up records the outcome of a Redis call: a miss (redis.Nil) is success.
func (c *Cache) up(err error) {
	ok := err == nil || errors.Is(err, redis.Nil)
	if c.redisUp.Swap(ok) != ok {
		if ok {
			c.m.RedisUp.Set(1)
			c.log.Info("cache: redis reachable again")
		} else {
			c.m.RedisUp.Set(0)
			c.log.Warn("cache: redis unreachable; reads are misses, in-process entries served while coherent", "err", err)
		}
	}
}

func (c *Cache) redisGet(ctx context.Context, key string) ([]byte, error) {
	ctx, cancel := c.timeout(ctx)
	defer cancel()
	v, err := c.rdb.Get(ctx, c.keys.entry(key)).Bytes()
	c.up(err)
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cache: redis get: %w", err)
	}
	return v, nil
}

// redisSet stores the entry and lists it under its ids (see store). On a Cluster the
// entry is written first and listed second: Invalidate deletes what an index lists, so an
// entry must exist before it is listed or a concurrent Invalidate could delete nothing and
// leave it behind. On a single Redis the steps of also that work on the same Redis run in
// the same script run, after the store, whether it stored or refused; on a Cluster none of
// them does.
func (c *Cache) redisSet(ctx context.Context, key string, cred *identity.Credential, rec *record, now time.Time, fetched int64, own map[string]int64, also []luapipe.Step) error {
	v, err := seal(&cred.EncKey, key, rec)
	if err != nil {
		return fmt.Errorf("cache: seal: %w", err)
	}
	ctx, cancel := c.timeout(ctx)
	defer cancel()
	ttl := rec.end.Sub(now).Milliseconds() + 1
	ek := c.keys.entry(key)
	// The keys and arguments of one store run: the entry when value is set (the script
	// tells by ARGV[1] being empty, and a sealed value never is), then each id's pair.
	storeRun := func(value []byte, ids []string) ([]string, []any) {
		keys := make([]string, 0, 1+2*len(ids))
		if len(value) > 0 {
			keys = append(keys, ek)
		}
		args := make([]any, 0, 7+len(ids))
		args = append(args, value, ttl, key, rec.end.UnixMilli(), fetched, now.UnixMilli(), ttl)
		for _, id := range ids {
			keys = append(keys, c.keys.index(id), c.keys.tombstone(id))
			args = append(args, own[id])
		}
		return keys, args
	}
	if c.oneScript {
		keys, args := storeRun(v, rec.ids)
		existed := int64(0)
		step := luapipe.Step{Name: "cache.store", Body: storeBody, Keys: keys, Args: args,
			Done: func(r any, _ error) { existed, _ = r.(int64) }}
		err := luapipe.Steps(ctx, c.rdb, append([]luapipe.Step{step}, c.onThisRedis(also)...)...)
		c.up(err)
		switch {
		case err != nil:
			// A reply that timed out does not mean the script did not run.
			c.orphan(ek, rec.end)
			return fmt.Errorf("cache: redis set: %w", err)
		case existed < 0:
			return ErrInvalidated
		case existed == 1:
			c.publish(ctx, msgKeys, []string{key})
		}
		return nil
	}

	keys, args := storeRun(v, nil)
	existed, err := store.Run(ctx, c.rdb, keys, args...).Int()
	c.up(err)
	if err != nil {
		// A reply that timed out does not mean the SET did not happen: an entry no index
		// lists would outlive every invalidation until its TTL.
		c.orphan(ek, rec.end)
		return fmt.Errorf("cache: redis set: %w", err)
	}
	pipe := luapipe.New(c.rdb)
	cmds := make([]*redis.Cmd, len(rec.ids))
	for i, part := range c.scriptParts(rec.ids) {
		keys, args := storeRun(nil, part)
		cmds[i] = pipe.Run(ctx, store, keys, args...)
	}
	err = pipe.Exec(ctx)
	c.up(err)
	refused := false
	for _, cmd := range cmds {
		if n, e := cmd.Int(); e == nil && n < 0 {
			refused = true
		}
	}
	if err != nil || refused {
		// Unlisted under some id, the entry could outlive an invalidation: take it back now,
		// on a context of its own (ctx may be the one that just timed out), or else in the
		// background until it works.
		dctx, dcancel := c.timeout(context.Background())
		if c.rdb.Del(dctx, ek).Err() != nil {
			c.orphan(ek, rec.end)
		}
		if existed == 1 {
			// The SET replaced an entry other replicas may hold in process (a write's
			// answer stored through, say); what replaced it is gone too: they drop theirs.
			c.publish(dctx, msgKeys, []string{key})
		}
		dcancel()
		if err != nil {
			return fmt.Errorf("cache: redis index: %w", err)
		}
		return ErrInvalidated
	}
	if existed == 1 {
		c.publish(ctx, msgKeys, []string{key})
	}
	return nil
}

// scriptParts splits ids into the groups one script run may take: all of them on a single
// Redis, one each on a Cluster (see luapipe.OneScript).
func (c *Cache) scriptParts(idl []string) [][]string {
	if len(idl) == 0 {
		return nil
	}
	if c.oneScript {
		return [][]string{idl}
	}
	parts := make([][]string, len(idl))
	for i := range idl {
		parts[i] = idl[i : i+1 : i+1]
	}
	return parts
}

// orphan hands the entry ek, which expires at end, to orphanLoop for deletion.
func (c *Cache) orphan(ek string, end time.Time) {
	c.orphans.Add(end, ek)
	pending.Wake(c.orphanWake)
}

// maxEntryLife bounds how long an entry can live in Redis (TTL plus stale windows): past it
// a failed invalidation or delete need not be retried any more.
const maxEntryLife = time.Hour

// retryDrop hands ids whose invalidation failed to orphanLoop.
func (c *Cache) retryDrop(idl []string) {
	c.undropped.Add(c.now().Add(maxEntryLife), idl...)
	pending.Wake(c.orphanWake)
}

// orphanLoop deletes orphaned entries and re-runs unconfirmed invalidations: at once when
// one is handed over, then every CoherenceBound while Redis keeps failing, until each is
// done or past its time.
func (c *Cache) orphanLoop(ctx context.Context) {
	defer c.done.Done()
	pending.Loop(ctx.Done(), c.orphanWake, c.cfg.CoherenceBound, func() bool {
		drops := c.redoDrops(ctx)
		return c.deleteOrphans(ctx) || drops
	})
}

// deleteOrphans tries once to delete every orphan; it reports whether any is left.
func (c *Cache) deleteOrphans(ctx context.Context) bool {
	for _, it := range c.orphans.Due(c.now()) {
		dctx, cancel := c.timeout(ctx)
		err := c.rdb.Del(dctx, it.Key).Err()
		cancel()
		if err != nil {
			c.log.Debug("cache: deleting an entry a failed store may have left; will retry", "err", err)
			continue
		}
		c.orphans.Done(it)
	}
	return c.orphans.Len() > 0
}

// redoDrops retries the invalidations Redis did not confirm, all in one call; it reports
// whether any is left.
func (c *Cache) redoDrops(ctx context.Context) bool {
	items := c.undropped.Due(c.now())
	if len(items) == 0 {
		return false
	}
	if _, _, err := c.redisDrop(ctx, pending.Keys(items)); err != nil {
		c.log.Debug("cache: retrying an invalidation Redis did not confirm", "ids", len(items), "err", err)
		return true
	}
	c.undropped.Done(items...)
	return c.undropped.Len() > 0
}

// redisDrop invalidates ids: tombstones them, deletes the entries they list, and tells the
// other replicas. It returns how many entries it deleted, and the tombstones found and left.
// redisDrop invalidates idl in Redis. On a single Redis the steps of also that work on the
// same Redis run in the same script run, after the cache's; on a Cluster none of them does.
func (c *Cache) redisDrop(ctx context.Context, idl []string, also ...luapipe.Step) (int, stamps, error) {
	ctx, cancel := c.timeout(ctx)
	defer cancel()
	now := c.now().UnixMilli()
	if c.oneScript {
		return c.redisDropAll(ctx, idl, now, also)
	}
	drops := luapipe.New(c.rdb)
	var cmds []*redis.Cmd
	for _, part := range c.scriptParts(idl) {
		cmds = append(cmds, drops.Run(ctx, indexDrop, c.dropKeys(part), now, tombstoneTTL.Milliseconds()))
	}
	err := drops.Exec(ctx)
	c.up(err)
	if err != nil {
		return 0, stamps{}, fmt.Errorf("cache: redis invalidate: %w", err)
	}
	seen := make(map[string]struct{})
	pipe := c.rdb.Pipeline()
	var dels []*redis.IntCmd
	st := newStamps(len(idl))
	i := 0 // the id the reply is at
	for _, cmd := range cmds {
		reply, _ := cmd.StringSlice()
		for len(reply) > 0 {
			if len(reply) < 3 || i == len(idl) {
				return 0, stamps{}, fmt.Errorf("cache: redis invalidate: a reply cut short or too long (%d values left, id %d of %d)", len(reply), i, len(idl))
			}
			prev, left, err := parseStamps(reply[0], reply[1])
			m, merr := strconv.Atoi(reply[2])
			if err != nil || merr != nil || m < 0 || 3+m > len(reply) {
				return 0, stamps{}, fmt.Errorf("cache: redis invalidate: a malformed reply")
			}
			st.prev[idl[i]], st.own[idl[i]] = prev, left
			for _, fp := range reply[3 : 3+m] {
				if _, ok := seen[fp]; ok {
					continue
				}
				seen[fp] = struct{}{}
				dels = append(dels, pipe.Del(ctx, c.keys.entry(fp)))
			}
			reply = reply[3+m:]
			i++
		}
	}
	if i != len(idl) {
		return 0, stamps{}, fmt.Errorf("cache: redis invalidate: replies for %d ids of %d", i, len(idl))
	}
	n := 0
	if len(dels) > 0 {
		_, err = pipe.Exec(ctx)
		c.up(err)
		if err != nil {
			// The members stay listed: the caller's retry of the ids finds them again.
			return 0, stamps{}, fmt.Errorf("cache: redis delete: %w", err)
		}
		for _, d := range dels {
			n += int(d.Val())
		}
	}
	c.publish(ctx, msgIDs, idl)
	return n, st, nil
}

// redisDropAll is redisDrop in one script run (dropAllBody), with the steps of also that work
// on this Redis.
func (c *Cache) redisDropAll(ctx context.Context, idl []string, now int64, also []luapipe.Step) (int, stamps, error) {
	var raw any
	steps := []luapipe.Step{{
		Name: "cache.dropAll", Defs: dropLua, Body: dropAllBody, Keys: c.dropKeys(idl),
		Args: []any{now, tombstoneTTL.Milliseconds(), c.keys.entryPrefix(), c.keys.invalChannel(), c.notice(msgIDs, idl)},
		Done: func(r any, _ error) { raw = r },
	}}
	err := luapipe.Steps(ctx, c.rdb, append(steps, c.onThisRedis(also)...)...)
	c.up(err)
	var reply []string
	if err == nil {
		reply, err = replyStrings(raw)
	}
	if err != nil {
		// Nothing is unlisted, whatever part ran: the caller's retry of the ids finds the
		// members again.
		return 0, stamps{}, fmt.Errorf("cache: redis invalidate: %w", err)
	}
	if len(reply) != 1+2*len(idl) {
		return 0, stamps{}, fmt.Errorf("cache: redis invalidate: %d values in the reply for %d ids", len(reply), len(idl))
	}
	n, err := strconv.Atoi(reply[0])
	if err != nil {
		return 0, stamps{}, fmt.Errorf("cache: redis invalidate: a malformed reply")
	}
	st := newStamps(len(idl))
	for i, id := range idl {
		prev, left, err := parseStamps(reply[1+2*i], reply[2+2*i])
		if err != nil {
			return 0, stamps{}, fmt.Errorf("cache: redis invalidate: a malformed reply")
		}
		st.prev[id], st.own[id] = prev, left
	}
	return n, st, nil
}

// parseStamps reads the tombstone an id had and the one it has now, as drop() returns them.
func parseStamps(prev, left string) (int64, int64, error) {
	p, err := strconv.ParseInt(prev, 10, 64)
	if err != nil {
		return 0, 0, err
	}
	l, err := strconv.ParseInt(left, 10, 64)
	return p, l, err
}

// redisPurgeAll deletes every entry and index under the prefix, on every master of a
// Cluster, one key per DEL so that no command spans slots.
func (c *Cache) redisPurgeAll(ctx context.Context) (int, error) {
	// A purge of everything may scan many keys: give it more than one call's timeout.
	ctx, cancel := context.WithTimeout(ctx, 20*c.cfg.RedisTimeout)
	defer cancel()
	n := 0
	purge := func(ctx context.Context, node redis.Cmdable) error {
		for _, pattern := range []string{c.cfg.Prefix + ":{c:*", c.cfg.Prefix + ":{x:*"} {
			entries := pattern[len(pattern)-4:] == "{c:*"
			iter := node.Scan(ctx, 0, pattern, 1000).Iterator()
			pipe := node.Pipeline()
			var dels []*redis.IntCmd
			flush := func() error {
				if len(dels) == 0 {
					return nil
				}
				if _, err := pipe.Exec(ctx); err != nil {
					return err
				}
				if entries {
					for _, d := range dels {
						n += int(d.Val())
					}
				}
				dels = dels[:0]
				return nil
			}
			for iter.Next(ctx) {
				dels = append(dels, pipe.Del(ctx, iter.Val()))
				if len(dels) == 1000 {
					if err := flush(); err != nil {
						return err
					}
				}
			}
			if err := iter.Err(); err != nil {
				return err
			}
			if err := flush(); err != nil {
				return err
			}
		}
		return nil
	}
	var err error
	if cc, ok := c.rdb.(*redis.ClusterClient); ok {
		var mu = make(chan struct{}, 1)
		err = cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
			mu <- struct{}{}
			defer func() { <-mu }()
			return purge(ctx, node)
		})
	} else {
		err = purge(ctx, c.rdb)
	}
	c.up(err)
	if err != nil {
		return n, fmt.Errorf("cache: redis purge: %w", err)
	}
	c.publish(ctx, msgAll, nil)
	return n, nil
}

// replyStrings is a script's reply of strings.
func replyStrings(v any) ([]string, error) {
	vs, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("cache: a script replied %T, not an array", v)
	}
	out := make([]string, len(vs))
	for i, x := range vs {
		if out[i], ok = x.(string); !ok {
			return nil, fmt.Errorf("cache: a script replied %T in an array of strings", x)
		}
	}
	return out, nil
}

// onThisRedis are the steps of also that work on the cache's own Redis: another stage's
// part of the same work, which may go in the cache's script run.
func (c *Cache) onThisRedis(also []luapipe.Step) []luapipe.Step {
	var out []luapipe.Step
	for _, st := range also {
		if st.Client != nil && st.Client == c.rdb {
			out = append(out, st)
		}
	}
	return out
}
