package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/pflag"

	"github.com/ghlproxy/ghlproxy/injector"
	"github.com/ghlproxy/ghlproxy/internal/logging"
)

// runInjector serves the mutating admission webhook; the Helm chart runs it with flags.
func runInjector(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := pflag.NewFlagSet("injector", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg injector.Config
	fs.StringVar(&cfg.Listen, "listen", ":8443", "HTTPS address the Kubernetes API server calls")
	fs.StringVar(&cfg.CertFile, "tls-cert", "", "serving certificate (PEM); reread when the file changes")
	fs.StringVar(&cfg.KeyFile, "tls-key", "", "serving key (PEM)")
	fs.StringVar(&cfg.SidecarFile, "sidecar", "", "the sidecar container spec (JSON) to inject; the chart renders it")
	fs.StringVar(&cfg.EnvVar, "env-var", injector.DefaultEnvVar, "app environment variable(s), comma-separated, set to the sidecar's URL")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	format := fs.String("log-format", "json", "text or json")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	log, err := logging.New(stderr, *level, *format)
	if err != nil {
		return err
	}
	return injector.Run(ctx, cfg, log)
}
