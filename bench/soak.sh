#!/usr/bin/env bash
# The soak (not in CI): DURATION of steady mixed load (bench/mix: reads of hot contacts,
# searches, updates) on two sidecar replicas sharing one Redis, in front of the stand-in with
# GHL's latency and per-location limit. Each request goes to one replica at random, so reads
# often follow a write made through the other. Every INTERVAL seconds it reads each replica's
# /metrics (goroutines, heap, RSS, open files, request and upstream counters), and once
# before the load and once after it. It writes bench/out/soak.csv, bench/out/soak.md (a row
# per minute, first/last/max, the trend over the second half with a verdict, and the mix
# client's own figures: errors, 429s, leaks, stale reads) and bench/out/soak.png;
# bench/out/soak-RUN.stale.tsv lists every stale read and every update, to explain them.
#
#   bench/soak.sh                    # 10 minutes, two replicas on Redis
#   DURATION=1m bench/soak.sh        # a smoke run
#   EMBEDDED=1 bench/soak.sh         # then the same again on one replica on the embedded store
#   PPROF=1 bench/soak.sh            # also heap and goroutine profiles (a -tags pprof build)
#
# Environment: DURATION (10m; Go duration: 90s, 10m, 1h), CLIENTS (300), THINK (2s, mean
# think time per client), WARMUP (30s: sampled, but not in the mix client's figures),
# INTERVAL (10, seconds between samples), CONTACTS (100, over 2 locations), EMBEDDED (0),
# FLAT_PCT (20: a metric is flat when its second-half trend, extrapolated over an hour, is
# below this share of its second-half mean), PPROF (0; 1: build with -tags pprof and save
# each replica's heap profile, after a GC, at half time and at the end of the load, and its
# goroutines at the end: compare with go tool pprof -top -base MID END), OUT (bench/out).
# Needs redis-server, gnuplot (redis-server, gnuplot-nox; installed when missing and running
# as root), curl, python3, go.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source-path=SCRIPTDIR source=lib.sh
. bench/lib.sh
DURATION=${DURATION:-10m}
CLIENTS=${CLIENTS:-300}
THINK=${THINK:-2s}
WARMUP=${WARMUP:-30s}
INTERVAL=${INTERVAL:-10}
CONTACTS=${CONTACTS:-100}
EMBEDDED=${EMBEDDED:-0}
FLAT_PCT=${FLAT_PCT:-20}
PPROF=${PPROF:-0}
OUT=${OUT:-bench/out}

need_tools redis-server=redis-server gnuplot=gnuplot-nox curl=curl
workdir ghlsoak

echo "building ghlproxy and bench/mix" >&2
tags=()
[[ $PPROF == 1 ]] && tags=(-tags pprof)
go build "${tags[@]}" -o "$work/ghlproxy" ./cmd/ghlproxy
go build -o "$work/mix" ./bench/mix
mkdir -p "$OUT"
csv=$OUT/soak.csv
echo "run,phase,t_s,replica,goroutines,heap_inuse_bytes,heap_goal_bytes,rss_bytes,open_fds,requests,upstream,cache_bytes,load1" >"$csv"
rm -f "$OUT"/soak-*

# sample RUN PHASE T NAME=OPS_PORT...: one CSV row per replica from its /metrics. Counters
# are summed over their labels; a replica that does not answer gets an empty row.
sample() {
  local run=$1 phase=$2 t=$3 load1 r
  shift 3
  load1=$(cut -d' ' -f1 /proc/loadavg)
  for r in "$@"; do
    curl -s --max-time 5 "http://127.0.0.1:${r#*=}/metrics" | awk -F'[ {]' \
      -v pre="$run,$phase,$t,${r%%=*}" -v load1="$load1" '
      $1 == "go_goroutines" {g = $NF}
      $1 == "go_memstats_heap_inuse_bytes" {h = $NF}
      $1 == "go_memstats_next_gc_bytes" {goal = $NF}
      $1 == "process_resident_memory_bytes" {rss = $NF}
      $1 == "process_open_fds" {fds = $NF}
      $1 == "ghlproxy_requests_total" {req += $NF}
      $1 == "ghlproxy_upstream_requests_total" {up += $NF}
      $1 == "ghlproxy_cache_bytes" {cb = $NF}
      END {printf "%s,%s,%s,%s,%s,%s,%d,%d,%s,%s\n", pre, g, h, goal, rss, fds, req, up, cb, load1}' >>"$csv"
  done
}

seconds_of() { # seconds_of 90s|10m|1h|45: whole seconds of a Go-style duration
  local n=${1%[smh]}
  case $1 in
  *h) echo $((n * 3600)) ;;
  *m) echo $((n * 60)) ;;
  *) echo "$n" ;;
  esac
}

# profile NAME NAME=PORT...: with PPROF=1, each replica's heap profile after a GC (and, at
# the end, its goroutines) into $OUT/soak-REPLICA-NAME.pb.gz.
profile() {
  [[ $PPROF == 1 ]] || return 0
  local name=$1 r
  shift
  for r in "$@"; do
    curl -s --max-time 30 -o "$OUT/soak-${r%%=*}-$name.pb.gz" "http://127.0.0.1:${r#*=}/debug/pprof/heap?gc=1" || true
    if [[ $name == heap-end ]]; then
      curl -s --max-time 30 -o "$OUT/soak-${r%%=*}-goroutines.txt" "http://127.0.0.1:${r#*=}/debug/pprof/goroutine?debug=1" || true
    fi
  done
}

# soak RUN STORE REPLICAS: one soak; STORE is redis (one Redis shared by the replicas) or
# embedded.
soak() {
  local run=$1 store=$2 n=$3 fake replicas=() targets=() profs=() i t0 next mixpid list half w d
  w=$(seconds_of "$WARMUP")
  d=$(seconds_of "$DURATION")
  half=$(((w + d) / 2))
  echo "== soak $run: $n replica(s) on $store, $CLIENTS clients, $WARMUP + $DURATION" >&2
  start_fake 150ms 100
  fake=$PORT
  "$work/mix" seed --upstream "http://127.0.0.1:$fake" --contacts "$CONTACTS" --out "$work/seed-$run" >/dev/null
  if [[ $store == redis ]]; then
    start_redis
    store=redis://127.0.0.1:$PORT
  fi
  for ((i = 1; i <= n; i++)); do
    profs+=("$run-$i=$(free_port)")
    GHLPROXY_PPROF_LISTEN=127.0.0.1:${profs[-1]#*=} start_sidecar "$fake" "$store" ghl
    replicas+=("$run-$i=$OPS")
    targets+=("http://127.0.0.1:$PORT")
  done
  uptime >"$OUT/soak-$run.uptime"
  sample "$run" idle 0 "${replicas[@]}"
  list=$(IFS=,; echo "${targets[*]}")
  "$work/mix" run --target "$list" --seed "$work/seed-$run/mix.json" \
    --clients "$CLIENTS" --duration "$DURATION" --warmup "$WARMUP" --think "$THINK" \
    --stats "http://127.0.0.1:$fake" --stale-log "$OUT/soak-$run.stale.tsv" >"$OUT/soak-$run.json" & mixpid=$!
  pids+=("$mixpid")
  t0=$SECONDS
  next=$t0
  while kill -0 "$mixpid" 2>/dev/null; do
    sample "$run" load $((SECONDS - t0)) "${replicas[@]}"
    if ((half > 0 && SECONDS - t0 >= half)); then
      profile heap-mid "${profs[@]}"
      half=0
    fi
    next=$((next + INTERVAL))
    while ((SECONDS < next)) && kill -0 "$mixpid" 2>/dev/null; do sleep 1; done
  done
  profile heap-end "${profs[@]}"
  wait "$mixpid"
  uptime >>"$OUT/soak-$run.uptime"
  # Once the load is gone, what the requests held must be gone too: the clients' connections
  # close at once; only the sidecars' idle upstream connections may remain.
  sleep 20
  sample "$run" after $((SECONDS - t0)) "${replicas[@]}"
  cat "$work"/sidecar-*.log >"$OUT/soak-$run.log"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  pids=()
  rm -f "$work"/sidecar-*.log
}

runs=redis
soak redis redis 2
if [[ $EMBEDDED == 1 ]]; then
  soak embedded embedded 1
  runs=redis,embedded
fi

python3 bench/soak_report.py --out "$OUT" --runs "$runs" --interval "$INTERVAL" --flat-pct "$FLAT_PCT" \
  --workload "$CLIENTS clients, think $THINK, warmup $WARMUP, $DURATION measured, $CONTACTS contacts over 2 locations"
(cd "$OUT" && gnuplot soak.gp) || echo "gnuplot failed; the tables are in $OUT/soak.md" >&2
cat "$OUT/soak.md"
