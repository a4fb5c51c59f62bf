#!/usr/bin/env bash
# The pass-through floors: how much latency a plain forward adds on this machine, for
# nginx and for Go proxies on three HTTP stacks, each with every core and with one
# (GOMAXPROCS=1; nginx runs one worker). It answers whether ghlproxy could meet the
# pass-through target (added latency no more than nginx's) by changing stacks:
#
#   go floor     net/http server, httputil.ReverseProxy and net/http's Transport (what
#                ghlproxy is built on; bench/mix floor)
#   fastclient   net/http server, fasthttp client: the upstream exchange in the handler's
#                goroutine (bench/floors)
#   fasthttp     fasthttp server and client, no net/http at all (bench/floors)
#   ghlproxy     the sidecar, embedded store, on the streaming pass-through path
#
# Same setup as bench/run.sh's pass-through section: 1 connection, keep-alive, a static
# nginx answer as the upstream; targets alternate, ROUNDS runs of SECONDS each, medians.
# Writes bench/out/floors.md.
#
#   bench/floors.sh                       # about 2 minutes
#   ROUNDS=5 SECONDS=4 bench/floors.sh
# shellcheck disable=SC2154 # work and pids are set by workdir (bench/lib.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
ROUNDS=${ROUNDS:-3}
SECS=${SECONDS_PER_RUN:-$(printenv SECONDS || echo 4)}
OUT=${OUT:-bench/out}
need_tools nginx=nginx-light wrk=wrk
workdir ghlfloors
mkdir -p "$OUT"
echo "building ghlproxy, bench/mix and bench/floors" >&2
go build -o "$work/ghlproxy" ./cmd/ghlproxy
go build -o "$work/mix" ./bench/mix
(cd bench/floors && go build -o "$work/floors" .)

start_static
up=$PORT
list=("direct:$up")
start_nginx "$up" off
list+=("nginx:$PORT")
for procs in "$(nproc)" 1; do
  PORT=$(free_port)
  GOMAXPROCS=$procs "$work/mix" floor --mode proxy --listen "127.0.0.1:$PORT" --upstream "http://127.0.0.1:$up" &
  pids+=("$!")
  wait_port "$PORT"
  list+=("go-floor/$procs:$PORT")
  for mode in fastclient fasthttp; do
    PORT=$(free_port)
    GOMAXPROCS=$procs "$work/floors" --mode "$mode" --listen "127.0.0.1:$PORT" --upstream "127.0.0.1:$up" &
    pids+=("$!")
    wait_port "$PORT"
    list+=("$mode/$procs:$PORT")
  done
  GOMAXPROCS=$procs start_sidecar "$up" embedded throughput
  list+=("ghlproxy/$procs:$PORT")
done

path=/bench/passthrough # not in GHL's route table: ghlproxy's streaming pass-through path
hdr=(-H "Authorization: Bearer pit-bench-token" -H "Version: 2021-07-28")
for t in "${list[@]}"; do wrk -t1 -c1 -d1s "${hdr[@]}" "http://127.0.0.1:${t#*:}$path" >/dev/null; done
raw=$work/floors.tsv
for ((i = 1; i <= ROUNDS; i++)); do
  for t in "${list[@]}"; do
    wrk_run "${t%%:*}" "http://127.0.0.1:${t#*:}$path" 1 "$SECS" "${hdr[@]}" | tee -a "$raw" >&2
  done
done

{
  echo "# Pass-through floors"
  echo
  echo "One run of \`bench/floors.sh\` on this machine ($(nproc) cores, loopback, load average $(cut -d' ' -f1-3 /proc/loadavg) at the end): 1 connection, medians of $ROUNDS runs of ${SECS} s per target, targets alternating. Added = target's p50 minus the upstream's."
  echo
  echo "| target | GOMAXPROCS | p50 | p99 | added p50 | added p50 / nginx's |"
  echo "|---|---|---|---|---|---|"
  names=()
  for t in "${list[@]}"; do names+=("${t%%:*}"); done
  med() { awk -v n="$1" -v c="$2" '$1 == n {print $c}' "$raw" | median; }
  base=$(med direct 3)
  ngx=$(awk -v a="$(med nginx 3)" -v b="$base" 'BEGIN {print a - b}')
  for n in "${names[@]}"; do
    p50=$(med "$n" 3) p99=$(med "$n" 4)
    procs=""
    [[ $n == */* ]] && procs=${n#*/}
    [[ $n == nginx ]] && procs="1 worker"
    added="" ratio=""
    if [[ $n != direct ]]; then
      added=$(awk -v a="$p50" -v b="$base" 'BEGIN {printf "+%.0f µs", a - b}')
      [[ $n != nginx ]] && ratio=$(awk -v a="$p50" -v b="$base" -v g="$ngx" 'BEGIN {printf "%.2f", (a - b) / g}')
    fi
    echo "| ${n%/*} | $procs | $p50 µs | $p99 µs | $added | $ratio |"
  done
} >"$OUT/floors.md"
cat "$OUT/floors.md"
