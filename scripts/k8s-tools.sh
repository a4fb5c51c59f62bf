#!/usr/bin/env bash
# Installs the tools the deployment tests (package charts) need, once; later runs find them
# and return at once:
#   helm             go install from the Go module proxy, into $(go env GOPATH)/bin
#   promtool         Debian's prometheus package (it also brings the prometheus server,
#                    which scripts/prometheus-check.sh runs; the service is never started)
#   dockerfile-utils npm, into ~/.cache/ghlproxy-tools (or $GHLPROXY_TOOLS)
# Compiling helm takes several minutes on a loaded 2-core machine.
set -euo pipefail

HELM_VERSION=v3.22.0
DOCKERFILE_UTILS_VERSION=0.16.3
gobin="$(go env GOPATH)/bin"
tools="${GHLPROXY_TOOLS:-$HOME/.cache/ghlproxy-tools}"

if ! command -v helm >/dev/null && [ ! -x "$gobin/helm" ]; then
  echo "k8s-tools: installing helm $HELM_VERSION (go install; takes minutes)"
  (cd /tmp && go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION")
fi

if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  echo "k8s-tools: installing Debian's prometheus (promtool)"
  if [ "$(id -u)" != 0 ]; then
    echo "k8s-tools: need root for apt-get install prometheus" >&2
    exit 1
  fi
  apt-get update -qq
  # policy-rc.d keeps the package's service from starting where an init system runs.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

if [ ! -x "$tools/node_modules/.bin/dockerfile-utils" ]; then
  echo "k8s-tools: installing dockerfile-utils $DOCKERFILE_UTILS_VERSION (npm)"
  mkdir -p "$tools"
  npm install --silent --no-audit --no-fund --prefix "$tools" "dockerfile-utils@$DOCKERFILE_UTILS_VERSION" >/dev/null
fi
