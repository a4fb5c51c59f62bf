package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/pflag"

	"github.com/ghlproxy/ghlproxy/config"
	"github.com/ghlproxy/ghlproxy/internal/gctune"
	"github.com/ghlproxy/ghlproxy/internal/logging"
	"github.com/ghlproxy/ghlproxy/internal/sidecar"
)

// loadConfig parses flags and loads the configuration from flags, environment and file.
func loadConfig(name string, args []string, stderr io.Writer) (*config.Config, *pflag.FlagSet, error) {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(stderr)
	config.RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil, fs, err
		}
		return nil, fs, fmt.Errorf("%w: %v", errUsage, err)
	}
	cfg, err := config.Load(fs, os.Environ())
	return cfg, fs, err
}

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, _, err := loadConfig("serve", args, stderr)
	if errors.Is(err, pflag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	log, err := logging.New(stderr, cfg.Log.Level, cfg.Log.Format)
	if err != nil {
		return err
	}
	for _, w := range cfg.Warnings() {
		log.Warn(w)
	}
	redis.SetLogger(redisLog{log})
	if floor := cfg.Limits.GCHeapFloor; floor > 0 && os.Getenv("GOGC") == "" {
		// Process-wide, so here rather than in sidecar.New: tests run many sidecars in
		// one process.
		defer gctune.Start(uint64(floor)).Stop()
	}
	s, err := sidecar.New(cfg, log)
	if err != nil {
		return err
	}
	pl, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		s.Close()
		return fmt.Errorf("listen: %w", err)
	}
	ol, err := net.Listen("tcp", cfg.OpsListen)
	if err != nil {
		pl.Close()
		s.Close()
		return fmt.Errorf("ops_listen: %w", err)
	}
	return s.Serve(ctx, pl, ol)
}

func runConfig(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := pflag.NewFlagSet("config", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	validate := fs.String("validate", "", "check this YAML file and exit: prints nothing and exits 0 when it is valid")
	config.RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if *validate != "" {
		cfg, err := config.LoadFile(*validate)
		if err != nil {
			return err
		}
		if err := sidecar.CheckRoutes(cfg); err != nil {
			return fmt.Errorf("%s: %w", *validate, err)
		}
		fmt.Fprintf(stdout, "%s: valid\n", *validate)
		return nil
	}
	cfg, err := config.Load(fs, os.Environ())
	if err != nil {
		return err
	}
	out, err := cfg.Redacted().YAML()
	if err != nil {
		return err
	}
	_, err = stdout.Write(out)
	return err
}

// redisLog sends go-redis's own messages ("failed to dial", pool notices) to the process
// logger at debug: during a Redis outage the stages already say, once, that they are
// degraded, and the client would otherwise print a line per attempt on stderr.
type redisLog struct{ log *slog.Logger }

func (l redisLog) Printf(ctx context.Context, format string, v ...any) {
	l.log.DebugContext(ctx, "redis client: "+fmt.Sprintf(format, v...))
}
