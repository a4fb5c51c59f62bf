#!/usr/bin/env bash
# Pass-through latency: what the sidecar adds over calling the upstream directly, next to
# what nginx adds as a plain reverse proxy, measured in the same run.
#
# The upstream is nginx serving a fixed ~100-byte JSON answer (the steadiest upstream this
# machine has, so the difference is the proxies' own cost). wrk with one connection, so the
# figure is latency, not throughput. Each target runs ROUNDS times, alternating, and the
# medians are reported.
#
#   bench/passthrough.sh              # ROUNDS=3 SECONDS_PER_RUN=8
#
# Needs nginx and wrk (Debian packages; installed when missing and running as root).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
ROUNDS=${ROUNDS:-3}
SECS=${SECONDS_PER_RUN:-8}

for p in nginx wrk; do
  command -v $p >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light wrk >/dev/null; break; }
done

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

go build -o "$work/ghlproxy" ./cmd/ghlproxy

up=$(free_port); ngx=$(free_port); gp=$(free_port); gops=$(free_port)
cat >"$work/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream backend { server 127.0.0.1:$up; keepalive 64; }
  server {
    listen 127.0.0.1:$up;
    location / {
      default_type application/json;
      return 200 '{"contact":{"id":"ocQHyuzHvysMo5N5VsXc","firstName":"Ada","email":"ada@example.com"}}';
    }
  }
  server {
    listen 127.0.0.1:$ngx;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
NGINX
nginx -c "$work/nginx.conf" -p "$work" & pids+=($!)
# The sidecar with a bucket too large to matter: this measures the pipeline, not the limit.
GHLPROXY_RATELIMIT_RATE=100000000 GHLPROXY_RATELIMIT_BURST=100000000 GHLPROXY_LOG_LEVEL=warn \
  "$work/ghlproxy" serve --listen 127.0.0.1:$gp --ops_listen 127.0.0.1:$gops --upstream http://127.0.0.1:$up & pids+=($!)
wait_port $up; wait_port $ngx; wait_port $gp

path=/bench/passthrough   # not in GHL's route table: the streaming pass-through path
hdr=(-H "Authorization: Bearer pit-bench-token" -H "Version: 2021-07-28")
for t in direct:$up nginx:$ngx ghlproxy:$gp; do   # warm up connections and caches
  wrk -t1 -c1 -d1s "${hdr[@]}" "http://127.0.0.1:${t#*:}$path" >/dev/null
done
: >"$work/results"
for ((i = 1; i <= ROUNDS; i++)); do
  for t in direct:$up nginx:$ngx ghlproxy:$gp; do
    wrk_run "${t%%:*}" "http://127.0.0.1:${t#*:}$path" 1 "$SECS" "${hdr[@]}" >>"$work/results"
  done
done

med() { awk -v n="$1" -v c="$2" '$1 == n {print $c}' "$work/results" | median; }
d50=$(med direct 3); d99=$(med direct 4)
n50=$(med nginx 3); n99=$(med nginx 4)
g50=$(med ghlproxy 3); g99=$(med ghlproxy 4)
awk -v d50="$d50" -v d99="$d99" -v n50="$n50" -v n99="$n99" -v g50="$g50" -v g99="$g99" -v r="$ROUNDS" -v s="$SECS" 'BEGIN {
  printf "pass-through, 1 connection, median of %d runs of %ds each\n\n", r, s
  printf "| target | p50 | p99 | added p50 | added p99 |\n|---|---|---|---|---|\n"
  printf "| upstream direct | %.0f µs | %.0f µs | | |\n", d50, d99
  printf "| nginx proxy_pass | %.0f µs | %.0f µs | +%.0f µs | +%.0f µs |\n", n50, n99, n50 - d50, n99 - d99
  printf "| ghlproxy | %.0f µs | %.0f µs | +%.0f µs | +%.0f µs |\n", g50, g99, g50 - d50, g99 - d99
  na = n50 - d50; ga = g50 - d50
  if (na > 0) printf "\nghlproxy added p50 / nginx added p50 = %.2f\n", ga / na
}'
