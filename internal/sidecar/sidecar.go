// Package sidecar assembles one ghlproxy process from its configuration: the shared store,
// the pipeline stages, the proxy and the ops listener, and runs them with a graceful
// shutdown. `ghlproxy serve`, `ghlproxy demo` and the multi-replica tests all build
// sidecars through it, so they run exactly what production runs.
package sidecar

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ghlproxy/ghlproxy/config"
	"github.com/ghlproxy/ghlproxy/internal/ghlerror"
	"github.com/ghlproxy/ghlproxy/internal/identity"
	"github.com/ghlproxy/ghlproxy/internal/metrics"
	"github.com/ghlproxy/ghlproxy/internal/ops"
	"github.com/ghlproxy/ghlproxy/internal/upstream"
	"github.com/ghlproxy/ghlproxy/proxy"
	"github.com/ghlproxy/ghlproxy/warm"
	"github.com/ghlproxy/ghlproxy/webhook"
)

// Sidecar is one running ghlproxy.
type Sidecar struct {
	cfg     *config.Config
	log     *slog.Logger
	Metrics *metrics.Metrics
	Proxy   *proxy.Handler
	Ops     *ops.Handler
	rdb     redis.UniversalClient
	// closers release the parts in reverse order, all within one deadline; drainers start
	// flushing what a part holds as soon as shutdown begins.
	closers, drainers []func(ctx context.Context) error
	// stageChecks report, per stage, whether it runs without its shared store (/readyz).
	stageChecks []ops.Check
	warm        *warm.Loop // nil unless warm.interval and warm.targets are set
	eviction    *evictionCheck
	// Webhooks receives GHL's webhook deliveries, on the proxy listener and on
	// WebhookListener.
	Webhooks *webhook.Receiver
	// WebhookListener serves webhook.Path alone (webhooks.listen). Set it before Serve to
	// choose the listener; left nil, Serve listens on webhooks.listen when that is set.
	WebhookListener net.Listener
}

// New builds a sidecar from cfg. It does not listen yet.
func New(cfg *config.Config, log *slog.Logger) (*Sidecar, error) {
	up, err := url.Parse(cfg.Upstream)
	if err != nil {
		return nil, fmt.Errorf("upstream: %w", err)
	}
	s := &Sidecar{cfg: cfg, log: log, Metrics: metrics.New()}
	if s.rdb, err = newRedis(cfg.Redis, log); err != nil {
		return nil, err
	}
	if s.rdb != nil {
		s.rdb.AddHook(commandCounter{s.Metrics.RedisCommands})
		s.closers = append(s.closers, func(context.Context) error { return s.rdb.Close() })
		s.eviction = &evictionCheck{rdb: s.rdb, gauge: s.Metrics.RedisEvictionUnsafe}
		if risk := s.eviction.status(); risk != "ok" {
			log.Warn("redis can evict the sidecar's keys", "problem", risk)
		}
	}
	table, err := routeTable(cfg)
	if err != nil {
		return nil, err
	}
	pc := proxy.Config{
		Upstream: up,
		Transport: upstream.NewTransport(upstream.TransportConfig{
			DialTimeout:         cfg.Transport.DialTimeout,
			TLSHandshakeTimeout: cfg.Transport.TLSTimeout,
			HeaderTimeout:       cfg.Transport.HeaderTimeout,
			MaxIdleConnsPerHost: cfg.Transport.MaxIdleConnsPerHost,
		}),
		Routes:           table,
		Identity:         identity.NewResolver(cfg.Identity.Secret),
		Metrics:          s.Metrics,
		Log:              log,
		MaxBodyBytes:     int64(cfg.Limits.MaxBodyBytes),
		MaxResponseBytes: int64(cfg.Limits.MaxResponseBytes),
		BodyTimeout:      cfg.Limits.BodyTimeout,
		UpstreamTimeout:  cfg.Transport.Timeout,
		SlowThreshold:    cfg.Transport.SlowThreshold,
		StaleIfBusy:      cfg.Cache.StaleIfBusy,
		WriteThrough:     cfg.Cache.WriteThrough,
		NegativeTTL:      cfg.Cache.NegativeTTL,
		Locations:        webhook.NewLocations(s.rdb, ""),
	}
	admin := &proxy.Admin{Token: cfg.Admin.Token}
	if err := s.addStages(&pc, admin); err != nil {
		s.Close()
		return nil, err
	}
	if s.Proxy, err = proxy.New(pc); err != nil {
		s.Close()
		return nil, err
	}
	admin.Handler = s.Proxy
	s.Proxy.SetAdmin(admin)
	// Background refreshes end when shutdown begins (and on Close): they wait for tokens
	// behind the app, and nothing is lost when they stop.
	stopBackground := func(context.Context) error { s.Proxy.StopBackground(); return nil }
	s.drainers = append(s.drainers, stopBackground)
	s.closers = append(s.closers, stopBackground)
	if s.Webhooks, err = newReceiver(cfg, table, s.Proxy, pc.Locations.(*webhook.Locations), s.rdb, s.Metrics, log); err != nil {
		s.Close()
		return nil, err
	}
	admin.Webhooks = s.Webhooks
	if err := s.addWarm(admin); err != nil {
		s.Close()
		return nil, err
	}
	s.Ops = ops.New(s.Metrics.Registry, s.checks()...)
	return s, nil
}

// Serve runs the proxy on pl and the ops endpoints on ol until ctx ends, then shuts down
// gracefully: readiness fails first so no new traffic arrives, in-flight requests get
// shutdown.grace to finish, and the stages flush (the batcher answers every write it holds).
func (s *Sidecar) Serve(ctx context.Context, pl, ol net.Listener) error {
	psrv := &http.Server{Handler: s.Proxy, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second,
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)}
	osrv := &http.Server{Handler: s.Ops, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 3)
	// Requests net/http refuses before any handler runs get GHL's error shape too.
	go func() { errc <- ghlerror.Serve(psrv, pl) }()
	go func() { errc <- osrv.Serve(ol) }()
	wsrv, err := s.webhookServer()
	if err != nil {
		s.log.Error("webhooks.listen", "err", err)
		errc <- err
	} else if wsrv != nil {
		go func() { errc <- ghlerror.Serve(wsrv, s.WebhookListener) }()
	}
	s.startWarm(ctx)
	s.log.Info("ghlproxy serving", "listen", pl.Addr().String(), "ops", ol.Addr().String(),
		"upstream", s.cfg.Upstream, "store", s.storeName())

	select {
	case <-ctx.Done():
	case err = <-errc:
		s.log.Error("listener failed", "err", err)
	}
	s.Ops.Drain()
	grace := s.grace()
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	s.log.Info("shutting down", "grace", grace)
	// One grace period for everything. The batcher flushes what it holds at once, while the
	// server waits for the requests those writes belong to; the stages then get what is
	// left of the period (the fold ends what is still in flight when it is over).
	var drained sync.WaitGroup
	for _, d := range s.drainers {
		drained.Go(func() { _ = d(sctx) })
	}
	if serr := psrv.Shutdown(sctx); serr != nil {
		s.log.Warn("in-flight requests did not finish within the grace period", "err", serr)
	}
	_ = osrv.Shutdown(sctx)
	if wsrv != nil {
		_ = wsrv.Shutdown(sctx)
	}
	drained.Wait()
	s.close(sctx)
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// Close releases the stages and the store within shutdown.grace; safe to call more than
// once.
func (s *Sidecar) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), s.grace())
	defer cancel()
	s.close(ctx)
}

func (s *Sidecar) close(ctx context.Context) {
	for i := len(s.closers) - 1; i >= 0; i-- {
		if err := s.closers[i](ctx); err != nil {
			s.log.Debug("close", "err", err)
		}
	}
	s.closers = nil
}

func (s *Sidecar) storeName() string {
	if s.rdb == nil {
		return "embedded"
	}
	return "redis"
}

// checks are /readyz's components. None is fatal: without Redis every stage serves on its
// local fallback, and taking the pod out of service would turn that into an outage.
func (s *Sidecar) checks() []ops.Check {
	if s.rdb == nil {
		return nil
	}
	return append([]ops.Check{{Name: "redis", Status: func() (string, bool) {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		if err := s.rdb.Ping(ctx).Err(); err != nil {
			return "unreachable: " + err.Error() + " (serving on local fallbacks)", false
		}
		return "ok", false
	}}, {Name: "redis-eviction", Status: func() (string, bool) { return s.eviction.status(), false }}}, s.stageChecks...)
}
