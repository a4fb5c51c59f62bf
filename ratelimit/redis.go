package ratelimit

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Every script reads Redis's own clock (TIME), so replicas never disagree about time, and
// touches exactly one key, whose hash tag puts it on one Cluster slot. The arithmetic is
// gcra.go's, line for line, and so are its constants: the prelude is written with
// gcra.go's values (luaConstants), not copies of them.

// Shared prelude: parse the configured limits and the learned upstream limit, and derive
// the effective limits (limits.effective).
var scriptPrelude = luaConstants.Replace(`
local T = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local h = redis.call('HMGET', KEYS[1], 'tat', 'pause', 'lmax', 'lint', 'dr', 'dl')
local tat = tonumber(h[1]) or 0
local pause = tonumber(h[2]) or 0
local lmax = tonumber(h[3]) or 0
local lint = tonumber(h[4]) or 0
local dr = tonumber(h[5]) or -1
local dl = tonumber(h[6]) or -1
local function effective()
  local eT, eb = T, burst
  if lmax > 0 and lint > 0 then
    local cap = lmax * $learnMargin
    local iv = lint * 1000
    if burst + iv / T > cap then
      local b = math.min(burst, math.max($learnedBurst, math.floor(lmax / $learnedBurstShare)))
      b = math.max(1, math.min(b, math.floor(cap / 2)))
      eT = math.max(T, iv / math.max(cap - b, cap / 2))
      eb = math.min(burst, math.max(b, math.floor(cap - iv / eT)))
    end
  end
  return eT, eb
end
local function reply(granted, wait, tokens, eT, eb, leased)
  return {granted, math.floor(wait), math.floor(tokens * 1000), math.floor(math.max(pause - now, 0)),
    dr, dl, lmax, lint, math.floor(eT * 1000), eb, leased or 0}
end
`)

// luaConstants writes gcra.go's constants into the scripts.
var luaConstants = strings.NewReplacer(
	"$learnMargin", strconv.FormatFloat(learnMargin, 'g', -1, 64),
	"$learnedBurstShare", strconv.Itoa(learnedBurstShare),
	"$learnedBurst", strconv.Itoa(learnedBurst),
)

// takeScript: KEYS[1] bucket; ARGV T, burst, n, mode, maxWait µs, warmReserve, dailyReserve,
// ttl ms, lease. Reply: granted (1, 0, or -1 for a daily-reserve refusal), wait µs,
// tokens*1000, pause left µs, daily remaining, daily limit, learned max, learned interval ms,
// effective T*1000, effective burst, tokens leased.
var takeScript = redis.NewScript(scriptPrelude + `
local n = tonumber(ARGV[3])
local mode = tonumber(ARGV[4])
local max_wait = tonumber(ARGV[5])
local warm_reserve = tonumber(ARGV[6])
local daily_reserve = tonumber(ARGV[7])
local eT, eb = effective()
local tau = eb * eT
if tat == 0 then tat = now end
local base = math.max(tat, now)
if mode == 2 and dr >= 0 and dr < daily_reserve then
  return reply(-1, 0, (now + tau - base) / eT, eT, eb)
end
local new_tat = base + n * eT
local allow_at = new_tat - tau
if mode == 2 then allow_at = allow_at + warm_reserve * eb / burst * eT end
local wait = allow_at - now
if wait < 1 then
  wait = 0
elseif not ((mode == 0 and wait <= max_wait) or (mode ~= 0 and n > eb and tat <= now)) then
  return reply(0, wait, (now + tau - base) / eT, eT, eb)
end
local leased = 0
local lease = tonumber(ARGV[9])
if lease >= 1 and mode == 0 and wait == 0 then
  leased = math.max(0, math.min(lease, math.floor((now + tau - new_tat) / eT - eb / 2)))
  new_tat = new_tat + leased * eT
end
redis.call('HSET', KEYS[1], 'tat', string.format('%.17g', new_tat))
redis.call('PEXPIRE', KEYS[1], ARGV[8])
return reply(1, wait, (now + tau - new_tat) / eT, eT, eb, leased)
`)

// observeScript: KEYS[1] bucket; ARGV T, burst, learned max (0: none), learned interval ms
// (0: none), remaining (-1: none), pause (1/0), default pause ms, daily remaining (-1),
// daily limit (-1), ttl ms. Reply as takeScript's.
var observeScript = redis.NewScript(scriptPrelude + `
local omax, oint = tonumber(ARGV[3]), tonumber(ARGV[4])
local remaining = tonumber(ARGV[5])
if omax > 0 and oint > 0 then
  lmax, lint = omax, oint
  redis.call('HSET', KEYS[1], 'lmax', omax, 'lint', oint)
end
local eT, eb = effective()
local tau = eb * eT
if tat == 0 then tat = now end
if remaining >= 0 then tat = math.max(tat, now + tau - remaining * eT) end
if ARGV[6] == '1' then
  local iv = lint
  if iv <= 0 then iv = tonumber(ARGV[7]) end
  pause = math.max(pause, now + iv * 1000)
  tat = math.max(tat, pause + tau - eT)
  redis.call('HSET', KEYS[1], 'pause', string.format('%.17g', pause))
end
redis.call('HSET', KEYS[1], 'tat', string.format('%.17g', tat))
local odr, odl = tonumber(ARGV[8]), tonumber(ARGV[9])
if odr >= 0 then dr = odr; redis.call('HSET', KEYS[1], 'dr', odr) end
if odl >= 0 then dl = odl; redis.call('HSET', KEYS[1], 'dl', odl) end
redis.call('PEXPIRE', KEYS[1], ARGV[10])
return reply(0, 0, (now + tau - math.max(tat, now)) / eT, eT, eb)
`)

// absorbScript: KEYS[1] bucket; ARGV T, burst, tokens. Hands a replica's fallback
// reservations back to the shared bucket when Redis returns: the bucket is taken as empty
// (the replicas were spending on their shares meanwhile) and those tokens are queued in
// front of every new request. Reply as takeScript's.
var absorbScript = redis.NewScript(scriptPrelude + `
local eT, eb = effective()
local tau = eb * eT
tat = math.max(tat, now + tau) + tonumber(ARGV[3]) * eT
redis.call('HSET', KEYS[1], 'tat', string.format('%.17g', tat))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return reply(0, 0, (now + tau - tat) / eT, eT, eb)
`)

// registerScript: KEYS[1] the replica set; ARGV replica id, ttl ms. A sorted set scored by
// expiry (Redis clock): add or refresh this replica, drop the expired ones, count the rest.
// One key under one hash tag, so it works unchanged on a Cluster; no per-replica keys needed.
var registerScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return redis.call('ZCARD', KEYS[1])
`)

// bucketTTL keeps an idle scope's learned limit and daily count for a day.
const bucketTTL = 24 * 60 * 60 * 1000

func bucketKey(prefix, scope string) string { return prefix + ":{rl:" + scope + "}:bucket" }
func replicasKey(prefix string) string      { return prefix + ":{replicas}:live" }

func fnum(f float64) string { return strconv.FormatFloat(f, 'g', 17, 64) }

func redisTake(ctx context.Context, rdb redis.Scripter, key string, c limits, a takeArgs) (decision, error) {
	v, err := takeScript.Run(ctx, rdb, []string{key},
		fnum(c.T), fnum(c.burst), fnum(a.n), a.mode, fnum(a.maxWait), fnum(a.warmReserve), fnum(a.dailyReserve), bucketTTL, fnum(a.lease)).Int64Slice()
	if err != nil {
		return decision{}, fmt.Errorf("ratelimit: redis take: %w", err)
	}
	return parseReply(v)
}

func redisObserve(ctx context.Context, rdb redis.Scripter, key string, c limits, o observation) (decision, error) {
	pause := "0"
	if o.pause {
		pause = "1"
	}
	v, err := observeScript.Run(ctx, rdb, []string{key},
		fnum(c.T), fnum(c.burst), fnum(o.lmax), fnum(o.lint), fnum(o.remaining), pause, fnum(o.pauseDefault),
		fnum(o.dr), fnum(o.dl), bucketTTL).Int64Slice()
	if err != nil {
		return decision{}, fmt.Errorf("ratelimit: redis observe: %w", err)
	}
	return parseReply(v)
}

func redisAbsorb(ctx context.Context, rdb redis.Scripter, key string, c limits, tokens float64) error {
	err := absorbScript.Run(ctx, rdb, []string{key}, fnum(c.T), fnum(c.burst), fnum(tokens), bucketTTL).Err()
	if err != nil {
		return fmt.Errorf("ratelimit: redis absorb: %w", err)
	}
	return nil
}

func parseReply(v []int64) (decision, error) {
	if len(v) != 11 {
		return decision{}, fmt.Errorf("ratelimit: redis script replied %d values, want 11", len(v))
	}
	return decision{
		granted: v[0] == 1, dailyRefused: v[0] == -1,
		wait: float64(v[1]), tokens: float64(v[2]) / 1000, pauseLeft: float64(v[3]),
		dr: float64(v[4]), dl: float64(v[5]), lmax: float64(v[6]), lint: float64(v[7]),
		eff: limits{T: float64(v[8]) / 1000, burst: float64(v[9])}, leased: float64(v[10]),
	}, nil
}
