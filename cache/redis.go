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

func (k keyspace) entry(fp string) string {
	tag := fp
	if len(tag) > 16 {
		tag = tag[:16]
	}
	return k.prefix + ":{c:" + tag + "}:e:" + fp
}

func (k keyspace) index(id string) string     { return k.prefix + ":{x:" + id + "}:z" }
func (k keyspace) tombstone(id string) string { return k.prefix + ":{x:" + id + "}:inv" }
func (k keyspace) invalChannel() string       { return k.prefix + ":{cache}:inval" }
func (k keyspace) pingChannel(replica string) string {
	return k.prefix + ":{cache}:ping:" + replica
}

// setEntry stores the sealed value and reports whether one was there before, which other
// replicas may hold in process and must drop.
var setEntry = redis.NewScript(`
local existed = redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return existed`)

// indexAdd lists a fingerprint under an id unless the id was invalidated after the answer
// may have been read (ARGV[3]); it trims members that expired and keeps the index alive as
// long as its longest-lived member. Returns 0 when refused. With own (ARGV[6]) > 0 the
// answer is a write's own (Cache.SetAfter): it is listed only while the tombstone is still
// the one that write's invalidation left.
//
//	KEYS: index, tombstone; ARGV: fingerprint, expiry (ms), fetched (ms), now (ms), ttl (ms),
//	own tombstone (0: none)
var indexAdd = redis.NewScript(`
local t = redis.call('GET', KEYS[2])
local own = tonumber(ARGV[6])
if own > 0 then
  if not t or tonumber(t) ~= own then return 0 end
elseif t and tonumber(t) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
local pt = redis.call('PTTL', KEYS[1])
if pt < tonumber(ARGV[5]) then redis.call('PEXPIRE', KEYS[1], ARGV[5]) end
return 1`)

// indexDrop marks an id invalidated now and hands back the tombstone it found (0: none),
// the one it left, and the members. Tombstones only grow, by at least 1 ms an
// invalidation, so that one invalidation is told from the next whatever the replicas'
// clocks (SetAfter relies on it). It leaves the members listed,
// so that a reply lost on the way (the script ran, the caller saw a timeout) leaves them for
// the retry to find. Nothing unlists them afterwards either: a member goes when it expires
// (indexAdd trims by score), and unlisting after the delete could race with a store of the
// same key that lists it again, leaving that fresh entry out of reach of invalidations. A
// listed member whose entry is gone costs a DEL of nothing.
//
//	KEYS: index, tombstone; ARGV: now (ms), tombstone ttl (ms)
var indexDrop = redis.NewScript(`
local prev = tonumber(redis.call('GET', KEYS[2]) or '0')
local t = math.max(prev + 1, tonumber(ARGV[1]))
redis.call('SET', KEYS[2], string.format('%d', t), 'PX', ARGV[2])
local m = redis.call('ZRANGE', KEYS[1], 0, -1)
table.insert(m, 1, string.format('%d', t))
table.insert(m, 1, string.format('%d', prev))
return m`)

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

// redisSet writes the entry first and indexes it second: Invalidate deletes what an index
// lists, so an entry must exist before it is listed or a concurrent Invalidate could delete
// nothing and leave it behind.
func (c *Cache) redisSet(ctx context.Context, key string, cred *identity.Credential, rec *record, now time.Time, fetched int64, own map[string]int64) error {
	v, err := seal(&cred.EncKey, key, rec)
	if err != nil {
		return fmt.Errorf("cache: seal: %w", err)
	}
	ctx, cancel := c.timeout(ctx)
	defer cancel()
	ttl := rec.end.Sub(now)
	ek := c.keys.entry(key)
	existed, err := setEntry.Run(ctx, c.rdb, []string{ek}, v, ttl.Milliseconds()+1).Int()
	c.up(err)
	if err != nil {
		// A reply that timed out does not mean the SET did not happen: an entry no index
		// lists would outlive every invalidation until its TTL.
		c.orphan(ek, rec.end)
		return fmt.Errorf("cache: redis set: %w", err)
	}

	pipe := luapipe.New(c.rdb)
	cmds := make([]*redis.Cmd, len(rec.ids))
	exp := strconv.FormatInt(rec.end.UnixMilli(), 10)
	for i, id := range rec.ids {
		cmds[i] = pipe.Run(ctx, indexAdd, []string{c.keys.index(id), c.keys.tombstone(id)},
			key, exp, fetched, now.UnixMilli(), ttl.Milliseconds()+1, own[id])
	}
	err = pipe.Exec(ctx)
	c.up(err)
	refused := false
	for _, cmd := range cmds {
		if n, e := cmd.Int(); e == nil && n == 0 {
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
func (c *Cache) redisDrop(ctx context.Context, idl []string) (int, stamps, error) {
	ctx, cancel := c.timeout(ctx)
	defer cancel()
	now := c.now().UnixMilli()
	drops := luapipe.New(c.rdb)
	cmds := make([]*redis.Cmd, len(idl))
	for i, id := range idl {
		cmds[i] = drops.Run(ctx, indexDrop, []string{c.keys.index(id), c.keys.tombstone(id)}, now, tombstoneTTL.Milliseconds())
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
	for i, cmd := range cmds {
		reply, _ := cmd.StringSlice()
		if len(reply) < 2 {
			return 0, stamps{}, fmt.Errorf("cache: redis invalidate: %d values in the reply, want 2 or more", len(reply))
		}
		prev, _ := strconv.ParseInt(reply[0], 10, 64)
		left, _ := strconv.ParseInt(reply[1], 10, 64)
		st.prev[idl[i]], st.own[idl[i]] = prev, left
		for _, fp := range reply[2:] {
			if _, ok := seen[fp]; ok {
				continue
			}
			seen[fp] = struct{}{}
			dels = append(dels, pipe.Del(ctx, c.keys.entry(fp)))
		}
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
