#!/usr/bin/env bash
# Pass-through latency only: what the sidecar adds over calling the upstream directly, next
# to what nginx adds as a plain reverse proxy, measured in the same run. A shortcut for
# the passthrough part of bench/run.sh (same ROUNDS and SECONDS variables).
#
#   bench/passthrough.sh
exec env ONLY=passthrough TARGETS=${TARGETS:-direct,nginx,go,ghlproxy,ghlproxy-redis} "$(dirname "$0")/run.sh" "$@"
