# Shared helpers for the bench scripts: free ports, waiting for listeners, wrk parsing.
# Sourced, not run.

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_port() { # wait_port PORT [SECONDS]
  local port=$1 deadline=$((SECONDS + ${2:-20}))
  until (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null; do
    ((SECONDS < deadline)) || { echo "nothing listening on $port" >&2; return 1; }
    sleep 0.1
  done
}

# to_us VALUE: wrk prints "68.00us", "1.20ms", "2.00s"; print microseconds.
to_us() {
  awk -v v="$1" 'BEGIN {
    n = v + 0
    if (v ~ /us$/) print n; else if (v ~ /ms$/) print n * 1000; else if (v ~ /s$/) print n * 1000000; else print n
  }'
}

# wrk_run NAME URL CONNECTIONS SECONDS [extra wrk args]: prints "NAME rps p50us p99us".
wrk_run() {
  local name=$1 url=$2 conns=$3 secs=$4
  shift 4
  local out
  out=$(wrk -t"$(( conns < 2 ? 1 : 2 ))" -c"$conns" -d"${secs}s" --latency "$@" "$url")
  local rps p50 p99
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(to_us "$(awk '$1 == "50%" {print $2}' <<<"$out")")
  p99=$(to_us "$(awk '$1 == "99%" {print $2}' <<<"$out")")
  if grep -q 'Non-2xx' <<<"$out"; then
    echo "warning: $name had non-2xx answers: $(grep Non-2xx <<<"$out")" >&2
  fi
  echo "$name $rps $p50 $p99"
}

median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
