package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/pflag"

	"github.com/ghlproxy/ghlproxy/fakeghl"
	"github.com/ghlproxy/ghlproxy/internal/demo"
)

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := pflag.NewFlagSet("demo", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	users := fs.Int("users", 50, "users working at once")
	duration := fs.Duration("duration", 0, "how long operations start, per run (default 25s)")
	rate := fs.Float64("rate", 0, "operations per second, all users together (default 12: about 15 requests a second, half again GHL's limit)")
	contacts := fs.Int("contacts", 50, "leads seeded and worked on")
	seed := fs.Uint64("seed", 1, "seed of the workload and the stand-in")
	redisURL := fs.String("redis-url", "", "run the sidecar on this Redis (redis://host:6379) instead of the embedded store")
	latency := fs.Duration("latency", fakeghl.DefaultLatency, "the stand-in's median latency")
	quiet := fs.Bool("quiet", false, "no progress bar")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	sc := fakeghl.DefaultConfig()
	sc.Latency = *latency
	cfg := demo.Config{Users: *users, Duration: *duration, Rate: *rate, Contacts: *contacts, Seed: *seed, RedisURL: *redisURL, StandIn: &sc}
	if !*quiet {
		cfg.Progress = stderr
	}
	rep, err := demo.Run(ctx, cfg)
	if err != nil {
		return err
	}
	rep.Print(stdout)
	return nil
}
