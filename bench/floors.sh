#!/usr/bin/env bash
# The floors of other HTTP stacks: what a Go proxy costs on this machine on stacks other
# than ghlproxy's (net/http), beside nginx, Varnish and ghlproxy, in one run. It answers
# whether the speed targets that sit at net/http's own floor could be met by changing
# stacks:
#
#   passthrough  added latency of a plain forward, 1 connection, each Go target with every
#                core and with one (GOMAXPROCS=1; nginx runs one worker):
#                  go-floor    net/http server, httputil.ReverseProxy, net/http's Transport
#                              (bench/mix floor --mode proxy)
#                  fastclient  net/http server, fasthttp client: the upstream exchange in
#                              the handler's goroutine (bench/floors)
#                  fasthttp    fasthttp server and client, no net/http (bench/floors)
#                  ghlproxy    the sidecar, embedded store, streaming pass-through path
#   hits         cache-hit throughput, 64 connections, bench/run.sh's read mix:
#                  go-cache    bare net/http server answering from a sync.Map
#                              (bench/mix floor --mode cache)
#                  fastcache   the same on fasthttp (bench/floors)
#                  nginx, Varnish, ghlproxy (embedded store) as in bench/run.sh
#
# Targets alternate, ROUNDS runs of SECONDS each, medians. Writes bench/out/floors.md.
#
#   bench/floors.sh                        # about 4 minutes
#   ROUNDS=5 ONLY=hits bench/floors.sh
# shellcheck disable=SC2154 # work and pids are set by workdir (bench/lib.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
ROUNDS=${ROUNDS:-3}
SECS=${SECONDS_PER_RUN:-$(printenv SECONDS || echo 4)}
CONNS=${CONNS:-64}
ONLY=${ONLY:-passthrough,hits}
OUT=${OUT:-bench/out}
want() { [[ ",$ONLY," == *",$1,"* ]]; }
need_tools nginx=nginx-light varnishd=varnish wrk=wrk
workdir ghlfloors
mkdir -p "$OUT"
echo "building ghlproxy, bench/mix and bench/floors" >&2
go build -o "$work/ghlproxy" ./cmd/ghlproxy
go build -o "$work/mix" ./bench/mix
(cd bench/floors && go build -o "$work/floors" .)

start_floors() { # start_floors MODE UPSTREAM_PORT: bench/floors, GOMAXPROCS from the caller
  PORT=$(free_port)
  "$work/floors" --mode "$1" --listen "127.0.0.1:$PORT" --upstream "127.0.0.1:$2" &
  pids+=("$!")
  wait_port "$PORT"
}

# measure FILE CONNS URL_PATH [wrk args]: ROUNDS alternating runs over list (NAME:PORT).
measure() {
  local file=$1 conns=$2 path=$3 i t
  shift 3
  for ((i = 1; i <= ROUNDS; i++)); do
    for t in "${list[@]}"; do
      wrk_run "${t%%:*}" "http://127.0.0.1:${t#*:}$path" "$conns" "$SECS" "$@" | tee -a "$file" >&2
    done
  done
}
med() { awk -v n="$1" -v c="$2" '$1 == n {print $c}' "$3" | median; }

report=$work/floors.md
{
  echo "# Floors of other HTTP stacks"
  echo
  echo "One run of \`bench/floors.sh\` on this machine ($(nproc) cores, loopback, load average $(cut -d' ' -f1-3 /proc/loadavg) at the start); medians of $ROUNDS runs of ${SECS} s per target, targets alternating."
} >"$report"

if want passthrough; then
  echo "== pass-through floors, 1 connection" >&2
  start_static
  up=$PORT
  list=("direct:$up")
  start_nginx "$up" off
  list+=("nginx:$PORT")
  for procs in "$(nproc)" 1; do
    export GOMAXPROCS=$procs
    start_floor "$up" proxy
    list+=("go-floor/$procs:$PORT")
    for mode in fastclient fasthttp; do
      start_floors "$mode" "$up"
      list+=("$mode/$procs:$PORT")
    done
    start_sidecar "$up" embedded throughput
    list+=("ghlproxy/$procs:$PORT")
    unset GOMAXPROCS
  done
  path=/bench/passthrough # not in GHL's route table: ghlproxy's streaming pass-through path
  hdr=(-H "Authorization: Bearer pit-bench-token" -H "Version: 2021-07-28")
  for t in "${list[@]}"; do wrk -t1 -c1 -d1s "${hdr[@]}" "http://127.0.0.1:${t#*:}$path" >/dev/null; done
  raw=$work/passthrough.tsv
  measure "$raw" 1 "$path" "${hdr[@]}"
  base=$(med direct 3 "$raw")
  ngx=$(awk -v a="$(med nginx 3 "$raw")" -v b="$base" 'BEGIN {print a - b}')
  {
    echo
    echo "## Pass-through, 1 connection"
    echo
    echo "Upstream: a static nginx answer. Added = the target's p50 minus the upstream's."
    echo
    echo "| target | GOMAXPROCS | p50 | p99 | added p50 | added p50 / nginx's |"
    echo "|---|---|---|---|---|---|"
    for t in "${list[@]}"; do
      n=${t%%:*} procs="" added="" ratio=""
      [[ $n == */* ]] && procs=${n#*/}
      [[ $n == nginx ]] && procs="1 worker"
      p50=$(med "$n" 3 "$raw") p99=$(med "$n" 4 "$raw")
      if [[ $n != direct ]]; then
        added=$(awk -v a="$p50" -v b="$base" 'BEGIN {printf "+%.0f µs", a - b}')
        [[ $n != nginx ]] && ratio=$(awk -v a="$p50" -v b="$base" -v g="$ngx" 'BEGIN {printf "%.2f", (a - b) / g}')
      fi
      echo "| ${n%/*} | $procs | $p50 µs | $p99 µs | $added | $ratio |"
    done
  } >>"$report"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
fi

if want hits; then
  echo "== cache-hit floors, $CONNS connections" >&2
  export CACHE_TTL=900 # no entry may expire during the runs: they measure hits only
  start_fake 0 1000000000
  fake=$PORT
  "$work/mix" seed --upstream "http://127.0.0.1:$fake" --out "$work/seed-hits"
  export HITS=$work/seed-hits/hits.txt
  list=()
  start_nginx "$fake" on
  list+=("nginx:$PORT")
  start_varnish "$fake"
  list+=("varnish:$PORT")
  start_floor "$fake" cache
  list+=("go-cache:$PORT")
  start_floors fastcache "$fake"
  list+=("fastcache:$PORT")
  start_sidecar "$fake" embedded throughput
  list+=("ghlproxy:$PORT")
  raw=$work/hits.tsv
  for t in "${list[@]}"; do wrk -t1 -c4 -d2s -s bench/hits.lua "http://127.0.0.1:${t#*:}" >/dev/null; done
  measure "$raw" "$CONNS" / -s bench/hits.lua
  best=$(for n in nginx varnish; do med "$n" 2 "$raw"; done | sort -n | tail -1)
  {
    echo
    echo "## Cache hits, $CONNS connections"
    echo
    echo "800 keys (200 contacts × 4 tokens), GET /contacts/{id}, keep-alive, wrk + bench/hits.lua; every cache warmed first."
    echo
    echo "| target | req/s | p50 | p99 | req/s / the better of nginx and Varnish |"
    echo "|---|---|---|---|---|"
    for t in "${list[@]}"; do
      n=${t%%:*}
      rps=$(med "$n" 2 "$raw")
      echo "| $n | $(printf '%.0f' "$rps") | $(med "$n" 3 "$raw") µs | $(med "$n" 4 "$raw") µs | $(awk -v a="$rps" -v b="$best" 'BEGIN {printf "%.2f", a / b}') |"
    done
  } >>"$report"
fi

cp "$report" "$OUT/floors.md"
cat "$OUT/floors.md"
