package sidecar

import (
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ghlproxy/ghlproxy/config"
)

// newRedis returns the shared store's client, or nil for the embedded store. One
// UniversalClient covers a single server (redis.url), a Cluster (redis.addrs) and Sentinel
// (redis.addrs with redis.master_name).
func newRedis(c config.Redis) (redis.UniversalClient, error) {
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
		return redis.NewUniversalClient(&redis.UniversalOptions{
			Addrs:        c.Addrs,
			MasterName:   c.MasterName,
			Password:     c.Password,
			ReadTimeout:  timeout,
			WriteTimeout: timeout,
			DialTimeout:  2*timeout + time.Second,
			PoolSize:     c.PoolSize,
			PoolTimeout:  2 * timeout,
			// See above: deadlines come from each call's context.
			ContextTimeoutEnabled: true,
		}), nil
	}
	return nil, nil
}
