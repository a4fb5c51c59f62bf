package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/pflag"

	"github.com/ghlproxy/ghlproxy/fakeghl"
	"github.com/ghlproxy/ghlproxy/internal/logging"
)

func runFakeGHL(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := pflag.NewFlagSet("fakeghl", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	d := fakeghl.DefaultConfig()
	listen := fs.String("listen", "127.0.0.1:8081", "address to serve the stand-in on")
	limit := fs.Int("limit", fakeghl.DefaultLimit, "requests per scope per window, like GHL's burst limit")
	window := fs.Duration("window", fakeghl.DefaultWindow, "the rate-limit window")
	daily := fs.Int("daily", fakeghl.DefaultDaily, "requests per scope per UTC day")
	latency := fs.Duration("latency", d.Latency, "median added latency (log-normal, long tail); 0 for none")
	seed := fs.Uint64("seed", 1, "seed for ids, latencies and faults")
	baseURL := fs.String("base-url", fakeghl.DefaultBaseURL, "host of absolute links in answers (meta.nextPageUrl)")
	webhookURL := fs.String("webhook-url", "", "where to send signed webhooks of changes, e.g. http://127.0.0.1:8080/_ghlproxy/webhooks/ghl")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	log, err := logging.New(stderr, *level, "text")
	if err != nil {
		return err
	}
	cfg := fakeghl.Config{Limit: *limit, Window: *window, Daily: *daily, Latency: *latency, Seed: *seed, BaseURL: *baseURL,
		WebhookURL: *webhookURL}
	fmt.Fprintf(stdout, "fake GHL on http://%s — faults and stats under /_fake/ (see the README)\n", *listen)
	if *webhookURL != "" {
		fmt.Fprintf(stdout, "webhooks to %s, signed with the stand-in's key; give the receiver:\nGHLPROXY_WEBHOOKS_PUBLIC_KEY=%s\n",
			*webhookURL, fakeghl.WebhookPublicKeyBase64())
	}
	return fakeghl.Run(ctx, *listen, cfg, log)
}
