package warm

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis is what the lease needs of the replicas' Redis (a redis.UniversalClient).
type Redis interface {
	redis.Scripter
}

// solo is the lease of a single replica (no Redis): always granted.
type solo struct{}

func (solo) acquire(context.Context, string, time.Duration) (bool, error) { return true, nil }
func (solo) release(context.Context, string)                              {}
func (solo) acquireManual(context.Context, string, time.Duration) (func(), bool, error) {
	return func() {}, true, nil
}

// redisLease is one lease per target in Redis, under a hash tag of its own so that every
// key of one target sits in one Cluster slot:
//
//	<prefix>:{warm:<target>}:lease   scheduled runs: holder's replica id, PX ttl
//	<prefix>:{warm:<target>}:manual  POST /_ghlproxy/warm: holder's replica id, PX ttl
//
// The scheduled lease is sticky: its holder renews it at every run (SET if absent or already
// its own), so one replica warms a target run after run, and another takes over only when
// the holder stops renewing (it went away) and the lease expired. A plain SET NX with a TTL
// of one interval would race its own holder's next tick at the boundary and let a run be
// lost or doubled.
type redisLease struct {
	rdb    Redis
	prefix string
	id     string
}

var takeScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0`)

// releaseScript deletes the key only while this replica still holds it.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`)

func (l *redisLease) key(target, kind string) string {
	return l.prefix + ":{warm:" + target + "}:" + kind
}

func (l *redisLease) acquire(ctx context.Context, target string, ttl time.Duration) (bool, error) {
	n, err := takeScript.Run(ctx, l.rdb, []string{l.key(target, "lease")}, l.id, ttl.Milliseconds()).Int()
	return n == 1, err
}

// release gives the scheduled lease up if this replica holds it, so that on shutdown another
// replica takes over at its next tick instead of after the lease expires.
func (l *redisLease) release(ctx context.Context, target string) {
	_ = releaseScript.Run(ctx, l.rdb, []string{l.key(target, "lease")}, l.id).Err()
}

func (l *redisLease) acquireManual(ctx context.Context, target string, ttl time.Duration) (func(), bool, error) {
	key := l.key(target, "manual")
	n, err := takeScript.Run(ctx, l.rdb, []string{key}, l.id, ttl.Milliseconds()).Int()
	if err != nil || n != 1 {
		return nil, false, err
	}
	return func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = releaseScript.Run(ctx, l.rdb, []string{key}, l.id).Err()
	}, true, nil
}
