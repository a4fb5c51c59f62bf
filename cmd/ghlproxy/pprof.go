//go:build pprof

package main

// Built only with -tags pprof (bench/soak.sh with PPROF=1), never into the released binary:
// net/http/pprof on GHLPROXY_PPROF_LISTEN, to find out what grows under a soak. The ops
// listener does not expose pprof, and a profile endpoint on it would be one more thing to
// keep from production traffic.

import (
	"net/http"
	_ "net/http/pprof"
	"os"
)

func init() {
	if addr := os.Getenv("GHLPROXY_PPROF_LISTEN"); addr != "" {
		go func() { _ = http.ListenAndServe(addr, nil) }()
	}
}
