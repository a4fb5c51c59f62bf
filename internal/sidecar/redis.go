package sidecar

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/ghlproxy/ghlproxy/config"
)

// newRedis returns the shared store's client, or nil for the embedded store. One
// UniversalClient covers a single server (redis.url), a Cluster (redis.addrs) and Sentinel
// (redis.addrs with redis.master_name).
func newRedis(c config.Redis, log *slog.Logger) (redis.UniversalClient, error) {
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = 100 * time.Millisecond
	}
	switch {
	case c.URL != "":
		opt, err := redis.ParseURL(c.URL)
		if err != nil {
			return nil, fmt.Errorf("redis.url: %w", err)
		}
		if c.Password != "" {
			opt.Password = c.Password
		}
		opt.ReadTimeout, opt.WriteTimeout, opt.DialTimeout = timeout, timeout, 2*timeout+time.Second
		if c.PoolSize > 0 {
			opt.PoolSize = c.PoolSize
		}
		// Replicas should not queue forever for a pooled connection when Redis is slow.
		opt.PoolTimeout = 2 * timeout
		// Every stage bounds its own calls with a context deadline (milliseconds for the
		// limiter); the client must honour them rather than its read timeout alone.
		opt.ContextTimeoutEnabled = true
		return redis.NewClient(opt), nil
	case len(c.Addrs) > 0:
		cluster := c.MasterName == "" && len(c.Addrs) > 1
		if c.MasterName == "" && len(c.Addrs) == 1 {
			var err error
			if cluster, err = clusterNode(c.Addrs[0], c.Password, timeout); err != nil {
				log.Warn("redis.addrs: could not ask the one address whether it is a Cluster node; "+
					"taking it for a single Redis until restart (list two or more Cluster nodes, or put a single Redis in redis.url)",
					"addr", c.Addrs[0], "err", err)
			}
		}
		return redis.NewUniversalClient(&redis.UniversalOptions{
			Addrs:         c.Addrs,
			MasterName:    c.MasterName,
			IsClusterMode: cluster,
			Password:      c.Password,
			ReadTimeout:   timeout,
			WriteTimeout:  timeout,
			DialTimeout:   2*timeout + time.Second,
			PoolSize:      c.PoolSize,
			PoolTimeout:   2 * timeout,
			// See above: deadlines come from each call's context.
			ContextTimeoutEnabled: true,
		}), nil
	}
	return nil, nil
}

// clusterNode asks the Redis at addr whether it runs in Cluster mode. go-redis makes a
// plain client of a single address in redis.addrs; on a Cluster node that client meets
// MOVED for every key of another node's slots, and it passes for a single Redis, where
// scripts may span hash tags (luapipe.OneScript). A single Redis listed there keeps working
// as one. When the question gets no answer (unreachable at start, INFO denied) the caller
// takes the address for a single Redis, as before this check, and logs it: a Cluster node
// then refuses the scripts' keys of other slots with an error, it serves nothing wrong.
// Start-up waits at most 2 × redis.timeout + 1 s for the answer.
func clusterNode(addr, password string, timeout time.Duration) (bool, error) {
	wait := 2*timeout + time.Second
	rdb := redis.NewClient(&redis.Options{Addr: addr, Password: password, DialTimeout: wait, ReadTimeout: wait,
		MaxRetries: -1, ContextTimeoutEnabled: true})
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	info, err := rdb.Info(ctx, "cluster").Result()
	if err != nil {
		return false, err
	}
	return strings.Contains(info, "cluster_enabled:1"), nil
}

// commandCounter counts every command the client sends, by name, pipelined ones included
// (redis_commands_total): what each replica costs Redis, for the operator (the per-request
// figures in docs/architecture.md are counted by Redis itself, in e2e/rediswork_test.go). Commands a script runs inside Redis are not counted;
// the EVALSHA that runs it is.
type commandCounter struct{ commands *prometheus.CounterVec }

func (commandCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c commandCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.commands.WithLabelValues(cmd.Name()).Inc()
		return next(ctx, cmd)
	}
}

func (c commandCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, cmd := range cmds {
			c.commands.WithLabelValues(cmd.Name()).Inc()
		}
		return next(ctx, cmds)
	}
}

// evictionRisk says what is wrong when Redis may evict the sidecar's keys, "" when it may
// not. A token bucket or a fold marker that Redis evicts is simply gone, and a missing key
// reads as a full bucket or a free lock: budgets would be overspent and writes folded with
// nothing. Only a Redis without a maxmemory, or with maxmemory-policy noeviction (which
// refuses writes instead, and the sidecar then runs degraded), keeps them. A Cluster is
// asked node by node. CONFIG may be disabled (managed Redis), so INFO memory is read.
func evictionRisk(ctx context.Context, rdb redis.UniversalClient) (string, error) {
	check := func(ctx context.Context, c redis.Cmdable) (string, error) {
		info, err := c.Info(ctx, "memory").Result()
		if err != nil {
			return "", err
		}
		var maxmemory, policy string
		for _, line := range strings.Split(info, "\n") {
			k, v, _ := strings.Cut(strings.TrimSpace(line), ":")
			switch k {
			case "maxmemory":
				maxmemory = v
			case "maxmemory_policy":
				policy = v
			}
		}
		if maxmemory == "" || maxmemory == "0" || policy == "noeviction" {
			return "", nil
		}
		return "maxmemory " + maxmemory + " with maxmemory-policy " + policy +
			" can evict the shared buckets and fold markers; set maxmemory-policy noeviction", nil
	}
	if cl, ok := rdb.(*redis.ClusterClient); ok {
		var mu sync.Mutex
		var risk string
		err := cl.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			r, err := check(ctx, c)
			mu.Lock()
			if r != "" && risk == "" {
				risk = c.Options().Addr + ": " + r
			}
			mu.Unlock()
			return err
		})
		if risk != "" {
			return risk, nil // one node that can evict is enough to say so
		}
		return risk, err
	}
	return check(ctx, rdb)
}

// evictionCheck asks Redis about eviction at most every evictionEvery, for /readyz and the
// redis_eviction_unsafe gauge: an operator may change the policy while the sidecar runs.
type evictionCheck struct {
	rdb   redis.UniversalClient
	gauge interface{ Set(float64) }

	mu   sync.Mutex
	at   time.Time
	last string
}

const evictionEvery = 30 * time.Second

func (e *evictionCheck) status() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.at.IsZero() && time.Since(e.at) < evictionEvery {
		return e.last
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	risk, err := evictionRisk(ctx, e.rdb)
	switch {
	case err != nil:
		return "unknown: " + err.Error() // asked again next time
	case risk != "":
		e.last = "unsafe: " + risk
		e.gauge.Set(1)
	default:
		e.last = "ok"
		e.gauge.Set(0)
	}
	e.at = time.Now()
	return e.last
}
