#!/usr/bin/env bash
# The side-by-side benchmark: the GHL stand-in directly, nginx, Varnish and ghlproxy (on
# its embedded store and on Redis), measured in one run on this machine, for
#
#   passthrough  added latency of a plain forward, 1 connection (upstream: a static nginx
#                answer, the steadiest upstream this machine has)
#   hits         cache-hit throughput and latency: 200 contacts x 4 tokens, ~200-byte JSON
#                answers, keep-alive, 64 connections (wrk + bench/hits.lua); every cache is
#                warmed first and the stand-in's call count proves the runs were hits
#   mix          a realistic mixed workload (reads of hot contacts, searches, updates) at 250
#                and 2,500 concurrent clients against a stand-in with GHL's latency and its
#                per-location limit of 100 per 10 s (bench/mix)
#
# Targets run in turn, alternating, ROUNDS times; figures are medians, ratios are
# ghlproxy / peer from the same run. Writes bench/out/results.md and bench/out/*.png.
#
#   bench/run.sh                                  # full run, about 14 minutes
#   ROUNDS=1 SECONDS=2 ONLY=hits bench/run.sh     # quick look at the hit path
#   ONLY=mix ROUNDS=1 MIX_LOCATIONS=3 MIX_CONTACTS=150 MIX_CREATE=0.01 MIX_WRITE=0.03 \
#     TARGETS=nginx,varnish,nginx-limit,ghlproxy,ghlproxy-redis bench/run.sh   # the budget edge
#
# Environment: ROUNDS (3), SECONDS (4; also SECONDS_PER_RUN) per wrk run, CONNS (64), MIX_SECONDS (10)
# measured per mixed run after MIX_WARMUP (25), MIX_CLIENTS ("250 2500"), MIX_THINK (2s),
# MIX_CONTACTS (100, over MIX_LOCATIONS, 2), MIX_WRITE (0.02: the share of contact updates),
# MIX_CREATE (0: the share of contact creates, each retried by its client after a 5 s
# timeout, a 429 or a 5xx, with the same body),
# ONLY (passthrough,hits,mix), TARGETS (direct,nginx,nginx-limit,varnish,go,ghlproxy,ghlproxy-redis,
# ghlproxy-redis-1cpu; "nginx-limit" is nginx proxy_cache with limit_req at the sidecar's budget,
# 280/min per location, queueing first come first served (mixed workload only); "go" is the Go floor: a plain httputil.ReverseProxy for pass-through and a
# bare net/http cache for hits, what net/http costs with none of ghlproxy's work; "-1cpu" runs the
# sidecar with GOMAXPROCS=1, the one core nginx's single worker has, and what Go picks by itself
# under a Kubernetes CPU limit of 1; both sit out the mixed workload).
# Needs nginx, varnishd, wrk, redis-server, gnuplot (Debian packages nginx-light, varnish,
# wrk, redis-server, gnuplot-nox; installed when missing and running as root), python3, go.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
ROUNDS=${ROUNDS:-3}
# SECONDS is bash's clock, which starts from the value in the environment when there is one.
SECS=${SECONDS_PER_RUN:-$(printenv SECONDS || echo 4)}
CONNS=${CONNS:-64}
MIX_SECONDS=${MIX_SECONDS:-10}
# The sidecar's bucket (280/min per location by default) needs ~20 s to fill its cache with
# the mix's 200 contact keys; the measured window should see the steady state.
MIX_WARMUP=${MIX_WARMUP:-25}
MIX_CLIENTS=${MIX_CLIENTS:-250 2500}
MIX_THINK=${MIX_THINK:-2s}
MIX_CONTACTS=${MIX_CONTACTS:-100}
MIX_LOCATIONS=${MIX_LOCATIONS:-2}
MIX_CREATE=${MIX_CREATE:-0}
MIX_WRITE=${MIX_WRITE:-0.02}
ONLY=${ONLY:-passthrough,hits,mix}
TARGETS=${TARGETS:-direct,nginx,nginx-limit,varnish,go,ghlproxy,ghlproxy-redis,ghlproxy-redis-1cpu}
OUT=${OUT:-bench/out}

want() { [[ ",$ONLY," == *",$1,"* ]]; }
target_on() { [[ ",$TARGETS," == *",$1,"* ]]; }

need_tools nginx=nginx-light varnishd=varnish wrk=wrk redis-server=redis-server gnuplot=gnuplot-nox

workdir ghlbench
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

echo "building ghlproxy and bench/mix" >&2
go build -o "$work/ghlproxy" ./cmd/ghlproxy
go build -o "$work/mix" ./bench/mix
rm -rf "$OUT/raw"
mkdir -p "$OUT/raw"
raw=$OUT/raw
uptime >"$raw/uptime.before"

# start_target NAME UPSTREAM_PORT MODE: PORT of the target; SIDECAR_PID for ghlproxy;
# EXTRA_PIDS lists what to stop afterwards.
start_target() {
  local n0=${#pids[@]}
  SIDECAR_PID=""
  case $1 in
  direct) PORT=$2 ;;
  nginx-proxy) start_nginx "$2" off ;;
  nginx) start_nginx "$2" on ;;
  nginx-limit) start_nginx "$2" on limit ;;
  varnish) start_varnish "$2" ;;
  ghlproxy) start_sidecar "$2" embedded "$3"; SIDECAR_PID=$PID ;;
  ghlproxy-redis) start_sidecar "$2" redis "$3"; SIDECAR_PID=$PID ;;
  ghlproxy-1cpu) GOMAXPROCS=1 start_sidecar "$2" embedded "$3"; SIDECAR_PID=$PID ;;
  ghlproxy-redis-1cpu) GOMAXPROCS=1 start_sidecar "$2" redis "$3"; SIDECAR_PID=$PID ;;
  go-proxy | go-cache) start_floor "$2" "${1#go-}" ;;
  esac
  EXTRA_PIDS=("${pids[@]:n0}")
}

rss_of() { # rss_of PID: "VmHWM_kB VmRSS_kB"
  awk '/^VmHWM/ {h=$2} /^VmRSS/ {r=$2} END {print h+0, r+0}' "/proc/$1/status" 2>/dev/null || echo "0 0"
}

# --- (a) pass-through ------------------------------------------------------------------

if want passthrough; then
  echo "== pass-through, 1 connection, $ROUNDS x ${SECS}s" >&2
  start_static; up=$PORT
  list=()
  for t in direct nginx-proxy go-proxy ghlproxy ghlproxy-redis ghlproxy-1cpu ghlproxy-redis-1cpu; do
    [[ $t == nginx-proxy ]] && ! target_on nginx && continue
    [[ $t == go-proxy ]] && ! target_on go && continue
    [[ $t != direct && $t != nginx-proxy && $t != go-proxy ]] && ! target_on "$t" && continue
    start_target "$t" "$up" throughput
    list+=("$t:$PORT")
  done
  path=/bench/passthrough # not in GHL's route table: the streaming pass-through path
  hdr=(-H "Authorization: Bearer pit-bench-token" -H "Version: 2021-07-28")
  for t in "${list[@]}"; do wrk -t1 -c1 -d1s "${hdr[@]}" "http://127.0.0.1:${t#*:}$path" >/dev/null; done
  for ((i = 1; i <= ROUNDS; i++)); do
    for t in "${list[@]}"; do
      wrk_run "${t%%:*}" "http://127.0.0.1:${t#*:}$path" 1 "$SECS" "${hdr[@]}" | tee -a "$raw/passthrough.tsv" >&2
    done
  done
  for p in "${pids[@]}"; do stop "$p"; done
  pids=()
fi

# --- (b) cache hits --------------------------------------------------------------------

if want hits; then
  echo "== cache hits, $CONNS connections, $ROUNDS x ${SECS}s" >&2
  # TTLs longer than the section: with 60 s ones, every entry of a target expired at once
  # in whichever of its runs crossed the 60th second, and that run measured 800 background
  # refreshes (up to 20% fewer req/s) instead of hits.
  export CACHE_TTL=900
  start_fake 0 1000000000; fake=$PORT
  "$work/mix" seed --upstream http://127.0.0.1:$fake --out "$work/seed-hits"
  export HITS=$work/seed-hits/hits.txt
  keys=$(wc -l <"$HITS")
  first=$(head -1 "$HITS")
  list=()
  declare -A spid=()
  for t in ${TARGETS//,/ }; do
    [[ $t == nginx-limit ]] && continue # a budget peer, for the mixed workload
    [[ $t == go ]] && t=go-cache
    start_target "$t" "$fake" throughput
    list+=("$t:$PORT")
    [[ -n $SIDECAR_PID ]] && spid[$t]=$SIDECAR_PID
    # Warm: every key at least once, then check one answer says it came from the cache.
    wrk -t1 -c4 -d2s -s bench/hits.lua "http://127.0.0.1:$PORT" >/dev/null
    hdrs=$(curl -s -o /dev/null -D - -H "Authorization: ${first#*$'\t'}" -H "Version: 2021-07-28" \
      "http://127.0.0.1:$PORT${first%%$'\t'*}" | tr -d '\r' | grep -iE '^(cache-status|x-cache-status|x-varnish|age):' | tr '\n' ' ' || true)
    echo "$t warmed: ${hdrs:-no cache headers}" | tee -a "$raw/hits-warm.txt" >&2
  done
  calls() { curl -s "http://127.0.0.1:$fake/_fake/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["calls"])'; }
  for ((i = 1; i <= ROUNDS; i++)); do
    for t in "${list[@]}"; do
      # Warm again, in case a cache dropped an entry.
      wrk -t1 -c4 -d1s -s bench/hits.lua "http://127.0.0.1:${t#*:}" >/dev/null
      c0=$(calls)
      PCT_OUT=$raw/hits-pct-${t%%:*}-$i.tsv wrk_run "${t%%:*}" "http://127.0.0.1:${t#*:}/" "$CONNS" "$SECS" -s bench/hits.lua |
        tee -a "$raw/hits.tsv" >&2
      echo "${t%%:*} $(($(calls) - c0))" >>"$raw/hits-upstream.tsv"
    done
  done
  for t in "${!spid[@]}"; do rss_of "${spid[$t]}" >"$raw/hits-$t.rss"; done
  for p in "${pids[@]}"; do stop "$p"; done
  pids=()
  echo "$keys" >"$raw/hits-keys"
  unset CACHE_TTL # the mixed workload runs every cache at its 60 s
fi

# --- (c) the mixed workload ------------------------------------------------------------

if want mix; then
  for clients in $MIX_CLIENTS; do
    for t in ${TARGETS//,/ }; do
      # The floor cache never expires nor invalidates: no peer here. The 1-CPU variants are
      # for the throughput and latency sections.
      [[ $t == go || $t == *-1cpu ]] && continue
      echo "== mix, $clients clients, $t, ${MIX_WARMUP}s + ${MIX_SECONDS}s" >&2
      # A fresh stand-in per run: GHL's latency, its per-location limit, cold caches.
      start_fake 150ms 100; fake=$PORT; fake_pid=$PID
      "$work/mix" seed --upstream http://127.0.0.1:$fake --contacts "$MIX_CONTACTS" --locations "$MIX_LOCATIONS" --out "$work/seed-mix"
      start_target "$t" "$fake" ghl
      "$work/mix" run --target "http://127.0.0.1:$PORT" --seed "$work/seed-mix/mix.json" \
        --clients "$clients" --duration "${MIX_SECONDS}s" --warmup "${MIX_WARMUP}s" \
        --think "$MIX_THINK" --create "$MIX_CREATE" --write "$MIX_WRITE" --stats "http://127.0.0.1:$fake" \
        --stale-log "$raw/mix-$clients-$t.stale.tsv" >"$raw/mix-$clients-$t.json"
      if [[ -n $SIDECAR_PID ]]; then
        rss_of "$SIDECAR_PID" >"$raw/mix-$clients-$t.rss"
        # Its warnings explain odd figures (stale reads, errors) after the fact.
        cp "$work/sidecar-$PORT.log" "$raw/mix-$clients-$t.log" 2>/dev/null || true
      fi
      python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[2], "rps=%.0f p50=%.0fus p99=%.0fus upstream=%.1f%% 429up=%d status=%s leaks=%d stale=%d" % (r["rps"], r["all"]["p50"], r["all"]["p99"], 100*r["upstreamShare"], r["upstream429"], r["status"], r["leaks"], r["stale"]))' \
        "$raw/mix-$clients-$t.json" "$t" >&2
      for p in "${EXTRA_PIDS[@]}"; do stop "$p"; done
      stop "$fake_pid"
      pids=()
    done
  done
fi

uptime >"$raw/uptime.after"
"$work/mix" report --raw "$raw" --out "$OUT" --rounds "$ROUNDS" --seconds "$SECS" --conns "$CONNS" \
  --mix-seconds "$MIX_SECONDS"
(cd "$OUT" && for g in *.gp; do [[ -e $g ]] && gnuplot "$g"; done) || echo "gnuplot failed; tables are in $OUT/results.md" >&2
cat "$OUT/results.md"
