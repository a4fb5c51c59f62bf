// Command ghlproxy is a sidecar reverse proxy for the HighLevel (GHL) API: it folds
// identical requests, caches reads in a store all replicas share, groups writes, and keeps
// every replica of an app under one token bucket.
//
//	ghlproxy [serve]   run the sidecar (the default)
//	ghlproxy fakeghl   run a local stand-in of the GHL API
//	ghlproxy demo      measure what the sidecar buys on a realistic workload
//	ghlproxy injector  run the Kubernetes webhook that injects the sidecar
//	ghlproxy config    print the effective configuration, or validate a file
//	ghlproxy version   print version and build information
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

type command struct {
	name, summary string
	run           func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"serve", "run the sidecar (default)", runServe},
		{"fakeghl", "run a local stand-in of the GHL API, with GHL's limits, headers, latency and faults", runFakeGHL},
		{"demo", "run a GHL stand-in and a sidecar, drive one workload directly and through the sidecar, print the comparison", runDemo},
		{"injector", "run the Kubernetes admission webhook that injects the sidecar into pods", runInjector},
		{"config", "print the effective configuration (secrets redacted), or --validate FILE", runConfig},
		{"version", "print version and build information", runVersion},
	}
}

// errUsage marks errors that are the caller's wording, answered with usage and exit 2.
var errUsage = errors.New("usage")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	name := "serve"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		name, args = args[0], args[1:]
	}
	if name == "help" || name == "-h" || name == "--help" {
		usage(stdout)
		return 0
	}
	for _, c := range commands() {
		if c.name == name {
			if err := c.run(ctx, args, stdout, stderr); err != nil {
				fmt.Fprintln(stderr, "ghlproxy "+name+": "+err.Error())
				if errors.Is(err, errUsage) {
					return 2
				}
				return 1
			}
			return 0
		}
	}
	fmt.Fprintf(stderr, "ghlproxy: unknown command %q\n", name)
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: ghlproxy [command] [flags]\n\ncommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'ghlproxy COMMAND --help' for a command's flags.")
}
