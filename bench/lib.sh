# shellcheck shell=bash
# shellcheck disable=SC2154 # $work and pids belong to the sourcing script
# Shared helpers for the bench scripts: tools, free ports, waiting for listeners, starting
# the stand-in, Redis and sidecars, wrk parsing. Sourced, not run.
# CACHE_TTL (seconds, default 60) is the TTL of every cache the start_* helpers
# start: nginx's proxy_cache_valid, Varnish's beresp.ttl, the sidecar's in throughput mode. The start_* helpers need
# the caller's $work (a scratch directory holding the ghlproxy binary) and pids (an array of
# what to stop on exit); each sets PORT and PID.

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

# need_tools COMMAND=PACKAGE...: installs the Debian packages of missing commands when root,
# else names them and exits. The packages' own services are stopped: the scripts start their
# own instances on free ports.
need_tools() {
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%=*}" >/dev/null || missing+=("${pair#*=}")
  done
  ((${#missing[@]})) || return 0
  if ((EUID != 0)); then
    echo "missing tools: ${missing[*]} (apt-get install them, or run as root)" >&2
    exit 1
  fi
  echo "installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  local s
  for s in nginx varnish redis-server; do service "$s" stop >/dev/null 2>&1 || true; done
}

start_fake() { # start_fake LATENCY LIMIT: the GHL stand-in
  PORT=$(free_port)
  "$work/ghlproxy" fakeghl --listen "127.0.0.1:$PORT" --latency "$1" --limit "$2" \
    --daily 1000000000 --log-level warn --base-url "http://127.0.0.1:$PORT" & PID=$!
  pids+=("$PID")
  wait_port "$PORT"
}

start_static() { # an nginx answering one fixed contact: the pass-through upstream
  PORT=$(free_port)
  mkdir -p "$work/static"
  cat >"$work/static/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $work/static/nginx.pid;
error_log $work/static/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  server {
    listen 127.0.0.1:$PORT;
    location / {
      default_type application/json;
      return 200 '{"contact":{"id":"ocQHyuzHvysMo5N5VsXc","firstName":"Ada","email":"ada@example.com"}}';
    }
  }
}
NGINX
  nginx -c "$work/static/nginx.conf" -p "$work/static" & PID=$!
  pids+=("$PID")
  wait_port $PORT
}

start_nginx() { # start_nginx UPSTREAM_PORT CACHE(on|off) [LIMIT(limit)]
  PORT=$(free_port)
  local d=$work/nginx-$PORT cache="" limiter="" up=$1 pass=backend
  mkdir -p "$d/cache"
  if [[ ${3:-} == limit ]]; then
    # The peer that honours the sidecar's budget: GHL's 280/min per location, as
    # limit_req per token at NGINX_LIMIT_PER_TOKEN (140r/m: the mix's locations have two
    # tokens each), queueing first come first served (no nodelay) up to a deep burst and
    # answering 429 past it. It limits what goes upstream only: a second server behind the
    # cache, so hits are not counted against the budget.
    local lport
    lport=$(free_port)
    limiter="limit_req_zone \$http_authorization zone=budget:10m rate=${NGINX_LIMIT_PER_TOKEN:-140r/m};
  limit_req_status 429;
  server {
    listen 127.0.0.1:$lport backlog=4096;
    keepalive_requests 1000000;
    location / {
      limit_req zone=budget burst=${NGINX_LIMIT_BURST:-2000};
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
    }
  }
  upstream limited { server 127.0.0.1:$lport; keepalive 256; }"
    pass=limited
  fi
  if [[ $2 == on ]]; then
    # Keyed by credential (and Version): without $http_authorization in the key one
    # caller's contacts would be served to another.
    cache="proxy_cache ghl;
      proxy_cache_key \"\$request_method\$request_uri\$http_authorization\$http_version\";
      proxy_cache_lock on;
      proxy_cache_valid 200 ${CACHE_TTL:-60}s;
      proxy_ignore_headers Cache-Control Expires Set-Cookie Vary X-Accel-Expires;
      add_header X-Cache-Status \$upstream_cache_status;"
  fi
  cat >"$d/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $d/nginx.pid;
error_log $d/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 16384; }
http {
  access_log off;
  proxy_cache_path $d/cache levels=1:2 keys_zone=ghl:32m max_size=256m inactive=10m;
  upstream backend { server 127.0.0.1:$up; keepalive 256; }
  $limiter
  server {
    listen 127.0.0.1:$PORT backlog=4096;
    keepalive_requests 1000000;
    location / {
      proxy_pass http://$pass;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      $cache
    }
  }
}
NGINX
  nginx -c "$d/nginx.conf" -p "$d" & PID=$!
  pids+=("$PID")
  wait_port $PORT
}

start_varnish() { # start_varnish UPSTREAM_PORT
  PORT=$(free_port)
  local d=$work/varnish-$PORT
  mkdir -p "$d"
  cat >"$d/bench.vcl" <<VCL
vcl 4.1;
backend default { .host = "127.0.0.1"; .port = "$1"; }
sub vcl_recv {
  if (req.method != "GET" && req.method != "HEAD") { return (pass); }
  # The built-in VCL refuses to cache requests with Authorization (every GHL call has one);
  # the credential goes into the hash instead.
  return (hash);
}
sub vcl_hash {
  hash_data(req.http.Authorization);
  hash_data(req.http.Version);
}
sub vcl_backend_response {
  if (beresp.status == 200) {
    set beresp.ttl = ${CACHE_TTL:-60}s;
    set beresp.uncacheable = false;
    unset beresp.http.Set-Cookie;
    return (deliver);
  }
}
VCL
  chmod -R a+rX "$d"
  varnishd -F -a 127.0.0.1:$PORT -f "$d/bench.vcl" -s malloc,256m -n "$d/n" \
    -p listen_depth=4096 >"$d/log" 2>&1 & PID=$!
  pids+=("$PID")
  wait_port $PORT 30
}

start_floor() { # start_floor UPSTREAM_PORT proxy|cache: the Go floor peer (bench/mix floor)
  PORT=$(free_port)
  "$work/mix" floor --mode "$2" --listen 127.0.0.1:$PORT --upstream http://127.0.0.1:$1 & PID=$!
  pids+=("$PID")
  wait_port $PORT
}

start_redis() {
  PORT=$(free_port)
  redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
    --loglevel warning --dir "$work" >"$work/redis-$PORT.log" 2>&1 & PID=$!
  pids+=("$PID")
  wait_port "$PORT"
}

# start_sidecar UPSTREAM_PORT STORE MODE: STORE is embedded, redis (a Redis of its own) or a
# redis:// URL (shared with other replicas); MODE is throughput (a bucket too large to
# matter, TTLs of CACHE_TTL seconds) or ghl (the defaults). Also sets OPS (its ops listener's port); logs go
# to $work/sidecar-PORT.log.
start_sidecar() {
  PORT=$(free_port)
  local args=()
  OPS=$(free_port)
  case $2 in
  redis)
    local port=$PORT
    start_redis
    args+=(--redis.url "redis://127.0.0.1:$PORT")
    PORT=$port
    ;;
  redis://*) args+=(--redis.url "$2") ;;
  esac
  if [[ $3 == throughput ]]; then
    # A bucket too large to matter: these runs measure the pipeline, not the limit. The
    # same TTL as the peers' proxy_cache_valid and beresp.ttl.
    args+=(--ratelimit.rate 1000000000 --ratelimit.burst 1000000000 --cache.default_ttl "${CACHE_TTL:-60}s")
  fi
  "$work/ghlproxy" serve --listen "127.0.0.1:$PORT" --ops_listen "127.0.0.1:$OPS" \
    --upstream "http://127.0.0.1:$1" --log.level warn --identity.secret bench-secret \
    "${args[@]}" >>"$work/sidecar-$PORT.log" 2>&1 & PID=$!
  pids+=("$PID")
  wait_port "$PORT"
}

# workdir NAME: a temporary directory in $work for the processes the script starts, whose
# PIDs go into pids; all are stopped and the directory removed when the script exits. Also
# raises the open-file limit: 2,500 clients need 2,500 sockets in the generator, as many in
# the proxy and more upstream.
workdir() {
  ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
  work=$(mktemp -d "/tmp/$1.XXXXXX")
  chmod 755 "$work" # varnishd drops privileges and must read its workdir
  pids=()
  trap cleanup EXIT
}

cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
