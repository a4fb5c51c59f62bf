package injector

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"
)

// Config is the injector process's configuration (flags of "ghlproxy injector").
type Config struct {
	// Listen is the HTTPS address the API server calls, ":8443" when empty.
	Listen string
	// CertFile and KeyFile are the serving certificate and key (PEM). They are reread when
	// the certificate file changes, so a rotated Secret (cert-manager) needs no restart.
	CertFile, KeyFile string
	// SidecarFile is the sidecar container spec as JSON; the chart renders it from its
	// "ghlproxy.sidecar" template.
	SidecarFile string
	// EnvVar is the app variable(s), comma-separated, set to the sidecar's URL;
	// DefaultEnvVar when empty.
	EnvVar string
	// ShutdownTimeout bounds the wait for requests in flight on shutdown; 10s when zero.
	ShutdownTimeout time.Duration
}

// Run serves the webhook over HTTPS on cfg.Listen until ctx is done.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	addr := cfg.Listen
	if addr == "" {
		addr = ":8443"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("injector: listen: %w", err)
	}
	return Serve(ctx, ln, cfg, log)
}

// Serve is Run on a listener the caller opened (cfg.Listen is ignored); it closes ln.
func Serve(ctx context.Context, ln net.Listener, cfg Config, log *slog.Logger) error {
	h, certs, err := load(cfg, log)
	if err != nil {
		ln.Close()
		return err
	}
	log.Info("injector: serving", "addr", ln.Addr().String())
	return serve(ctx, ln, h, certs, cfg.ShutdownTimeout)
}

// load reads the files cfg names, failing with the first one that is missing or wrong.
func load(cfg Config, log *slog.Logger) (http.Handler, *certFiles, error) {
	if cfg.CertFile == "" || cfg.KeyFile == "" {
		return nil, nil, errors.New("injector: the TLS certificate and key files are required (the API server only calls webhooks over HTTPS)")
	}
	if cfg.SidecarFile == "" {
		return nil, nil, errors.New("injector: the sidecar container spec file is required")
	}
	sidecar, err := LoadSidecar(cfg.SidecarFile)
	if err != nil {
		return nil, nil, err
	}
	in, err := New(sidecar, cfg.EnvVar)
	if err != nil {
		return nil, nil, err
	}
	certs, err := newCertFiles(cfg.CertFile, cfg.KeyFile)
	if err != nil {
		return nil, nil, err
	}
	log.Info("injector: loaded", "sidecar_image", sidecar.Image, "cert", cfg.CertFile)
	return Handler(in, log), certs, nil
}

func serve(ctx context.Context, ln net.Listener, h http.Handler, certs *certFiles, grace time.Duration) error {
	if grace == 0 {
		grace = 10 * time.Second
	}
	srv := &http.Server{
		Handler:           h,
		TLSConfig:         &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: certs.get},
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
	}
	done := make(chan error, 1)
	go func() { done <- srv.ServeTLS(ln, "", "") }()
	select {
	case err := <-done:
		return fmt.Errorf("injector: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	err := srv.Shutdown(sctx)
	<-done
	return err
}

// certFiles serves the certificate in a pair of files, reloading it when the certificate
// file's modification time changes. Checks are rate-limited so a burst of handshakes costs
// one stat.
type certFiles struct {
	certPath, keyPath string

	mu      sync.Mutex
	cert    *tls.Certificate
	mod     time.Time
	checked time.Time
}

const certCheckEvery = 10 * time.Second

func newCertFiles(certPath, keyPath string) (*certFiles, error) {
	c := &certFiles{certPath: certPath, keyPath: keyPath}
	if err := c.load(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *certFiles) load() error {
	st, err := os.Stat(c.certPath)
	if err != nil {
		return fmt.Errorf("injector: tls cert: %w", err)
	}
	cert, err := tls.LoadX509KeyPair(c.certPath, c.keyPath)
	if err != nil {
		return fmt.Errorf("injector: tls cert %s, key %s: %w", c.certPath, c.keyPath, err)
	}
	c.cert, c.mod, c.checked = &cert, st.ModTime(), time.Now()
	return nil
}

func (c *certFiles) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.checked) < certCheckEvery {
		return c.cert, nil
	}
	c.checked = time.Now()
	if st, err := os.Stat(c.certPath); err == nil && !st.ModTime().Equal(c.mod) {
		// A half-written pair fails to load; keep serving the old one until both are in place.
		_ = c.load()
	}
	return c.cert, nil
}
