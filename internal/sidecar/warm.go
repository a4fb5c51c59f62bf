package sidecar

import (
	"context"
	"os"
	"sync"

	"github.com/ghlproxy/ghlproxy/proxy"
	"github.com/ghlproxy/ghlproxy/warm"
)

// addWarm builds the warming loop when warm.interval and warm.targets are set, and hooks it
// into the admin endpoints. Its requests are served by the proxy itself, so it is built
// once the proxy exists; it starts with Serve.
func (s *Sidecar) addWarm(admin *proxy.Admin) error {
	w := s.cfg.Warm
	if w.Interval <= 0 || len(w.Targets) == 0 {
		return nil
	}
	cfg := warm.Config{Interval: w.Interval, Jitter: w.Jitter, MaxPages: w.MaxPages}
	for _, t := range w.Targets {
		target := warm.Target{
			Name:    t.Name,
			Version: t.Version,
			Token:   func() (string, error) { return t.Token(os.LookupEnv) },
		}
		for _, r := range t.Requests {
			target.Requests = append(target.Requests, warm.Request{Method: r.Method, Path: r.Path, Body: r.Body})
		}
		cfg.Targets = append(cfg.Targets, target)
	}
	var rdb warm.Redis
	if s.rdb != nil {
		rdb = s.rdb
	}
	loop, err := warm.New(cfg, s.Proxy, rdb, s.Metrics, s.log)
	if err != nil {
		return err
	}
	s.warm = loop
	admin.WarmRun = func(ctx context.Context) (any, error) { return loop.RunNow(ctx), nil }
	admin.WarmStatus = func() any { return loop.Status() }
	return nil
}

// startWarm runs the warming loop until ctx ends or the sidecar closes; Close waits for the
// run in progress, so no warming request outlives the stages it goes through.
func (s *Sidecar) startWarm(ctx context.Context) {
	if s.warm == nil {
		return
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { s.warm.Run(ctx) })
	s.closers = append(s.closers, func(context.Context) error { cancel(); wg.Wait(); return nil })
}
