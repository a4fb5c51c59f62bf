#!/usr/bin/env bash
# The deployment checks: installs helm, promtool and dockerfile-utils (scripts/k8s-tools.sh),
# then runs package charts (helm lint --strict and helm template over charts/ghlproxy/ci/*,
# manifests decoded strictly into k8s.io/api types, the real injector fed the rendered TLS
# and sidecar, promtool check rules and promtool unit tests of the alerts, dashboard and alert
# queries against the metrics the binary exports, the Dockerfile linted and its build flags
# compared with the Makefile's, and a static build with those flags) and package injector.
#
#   scripts/k8s-test.sh
#   scripts/k8s-test.sh -run TestMonitoring     extra go test flags
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/k8s-tools.sh
export PATH="$(go env GOPATH)/bin:$PATH"
# CI=true: a missing tool fails instead of skipping.
CI=true go test -race -count=1 "$@" ./charts/ ./injector/
