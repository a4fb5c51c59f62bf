package sidecar

import (
	"crypto/rsa"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ghlproxy/ghlproxy/config"
	"github.com/ghlproxy/ghlproxy/internal/metrics"
	"github.com/ghlproxy/ghlproxy/proxy"
	"github.com/ghlproxy/ghlproxy/routes"
	"github.com/ghlproxy/ghlproxy/webhook"
)

// newReceiver builds the webhook receiver from webhooks.*: GHL's published keys unless
// others are configured.
func newReceiver(cfg *config.Config, table *routes.Table, p *proxy.Handler, locs *webhook.Locations,
	rdb redis.UniversalClient, m *metrics.Metrics, log *slog.Logger) (*webhook.Receiver, error) {
	w := cfg.Webhooks
	pub, legacy := w.PublicKey, w.LegacyPublicKey
	if pub == "" {
		pub = webhook.GHLPublicKey
	}
	if legacy == "" {
		legacy = webhook.GHLLegacyPublicKey
	}
	pk, err := webhook.ParsePublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("webhooks.public_key: %w", err)
	}
	var lk *rsa.PublicKey
	if legacy != "off" {
		var err error
		if lk, err = webhook.ParseLegacyPublicKey(legacy); err != nil {
			return nil, fmt.Errorf("webhooks.legacy_public_key: %w", err)
		}
	}
	return webhook.New(webhook.Config{
		PublicKey:  pk,
		LegacyKey:  lk,
		MaxAge:     w.MaxAge,
		ForwardURL: w.ForwardURL,
		Client:     &http.Client{Timeout: cfg.Transport.Timeout},
		Routes:     table,
		Invalidate: p.Invalidate,
		Locations:  locs,
		Redis:      rdb,
		Metrics:    m,
		Log:        log.With("component", "webhook"),
	})
}

// webhookServer is the server of webhooks.listen, or nil when there is none: it serves
// webhook.Path alone, so that exposing it to GHL exposes nothing else.
func (s *Sidecar) webhookServer() (*http.Server, error) {
	if s.WebhookListener == nil && s.cfg.Webhooks.Listen == "" {
		return nil, nil
	}
	if s.WebhookListener == nil {
		l, err := net.Listen("tcp", s.cfg.Webhooks.Listen)
		if err != nil {
			return nil, err
		}
		s.WebhookListener = l
	}
	mux := http.NewServeMux()
	mux.Handle(webhook.Path, s.Webhooks)
	return &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second,
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)}, nil
}
