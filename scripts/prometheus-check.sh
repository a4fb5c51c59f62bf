#!/usr/bin/env bash
# Every dashboard query and alert expression returns data from a real Prometheus scraping a
# real sidecar under load.
#
# Starts `ghlproxy fakeghl` and `ghlproxy serve` (a tight rate limit, so requests queue),
# drives a bounded mix of reads, repeated reads, concurrent identical reads, searches and
# writes through the sidecar with curl (the stand-in reporting the writes by webhook, and
# one unsigned delivery refused), runs Debian's prometheus scraping the sidecar's ops
# port every second, then evaluates each panel query of charts/ghlproxy/dashboards/
# ghlproxy.json and each alert expression of the chart's PrometheusRule through the HTTP
# API. Alert expressions are evaluated without their threshold comparison: an alert that
# does not fire is fine, a query over series that do not exist is not. Fails on any query
# that returns no series. Everything listens on 127.0.0.1 and is stopped on exit.
#
#   scripts/prometheus-check.sh            (needs helm, prometheus: scripts/k8s-tools.sh)
#   KEEP=1 scripts/prometheus-check.sh     keep the temp dir (logs, Prometheus data)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export PATH="$(go env GOPATH)/bin:$PATH"
for t in helm prometheus python3 curl; do
  command -v "$t" >/dev/null || { echo "prometheus-check: $t not found (scripts/k8s-tools.sh installs helm and prometheus)" >&2; exit 1; }
done

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ "${KEEP:-}" = 1 ]; then echo "prometheus-check: kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
# waitfor URL SECONDS: poll until URL answers 2xx, or fail.
waitfor() {
  local deadline=$((SECONDS + $2))
  until curl -fs -o /dev/null --max-time 2 "$1"; do
    if ((SECONDS > deadline)); then echo "prometheus-check: $1 not up after $2s" >&2; tail -20 "$tmp"/*.log >&2; exit 1; fi
    sleep 0.2
  done
}

echo "== build"
go build -o "$tmp/ghlproxy" ./cmd/ghlproxy
commands=$("$tmp/ghlproxy" help)
for c in serve fakeghl; do
  grep -q "^  $c " <<<"$commands" || { echo "prometheus-check: this ghlproxy has no '$c' command yet" >&2; exit 1; }
done

fake=$(freeport); proxy=$(freeport); ops=$(freeport); prom=$(freeport)
echo "== fakeghl :$fake, sidecar :$proxy (ops :$ops), prometheus :$prom"
# The stand-in sends its signed webhooks to the sidecar, which trusts the stand-in's key.
"$tmp/ghlproxy" fakeghl --listen "127.0.0.1:$fake" --latency 5ms \
  --webhook-url "http://127.0.0.1:$proxy/_ghlproxy/webhooks/ghl" >"$tmp/fakeghl.log" 2>&1 &
pids+=($!)
waitfor "http://127.0.0.1:$fake/_fake/stats" 30
webhook_key=$(curl -fsS --max-time 5 "http://127.0.0.1:$fake/_fake/webhooks" | python3 -c 'import json,sys; print(json.load(sys.stdin)["publicKey"])')

GHLPROXY_LISTEN="127.0.0.1:$proxy" GHLPROXY_OPS_LISTEN="127.0.0.1:$ops" \
  GHLPROXY_UPSTREAM="http://127.0.0.1:$fake" \
  GHLPROXY_RATELIMIT_RATE=1200 GHLPROXY_RATELIMIT_PER=1m GHLPROXY_RATELIMIT_BURST=5 \
  GHLPROXY_LOG_LEVEL=warn GHLPROXY_WEBHOOKS_PUBLIC_KEY="$webhook_key" \
  "$tmp/ghlproxy" serve >"$tmp/sidecar.log" 2>&1 &
pids+=($!)
waitfor "http://127.0.0.1:$ops/readyz" 60

# Prometheus adds namespace and pod as a PodMonitor would, so the dashboard's filters and
# the alerts' "by (namespace, pod)" have something to group on.
cat >"$tmp/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: ghlproxy
    static_configs:
      - targets: ["127.0.0.1:$ops"]
        labels: {namespace: check, pod: sidecar-0}
EOF
prometheus --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/data" \
  --web.listen-address="127.0.0.1:$prom" >"$tmp/prometheus.log" 2>&1 &
pids+=($!)
waitfor "http://127.0.0.1:$prom/-/ready" 60

echo "== load"
base="http://127.0.0.1:$proxy"
auth=(-H "Authorization: Bearer pit-prometheus-check-0001" -H "Version: 2021-07-28" -H "Content-Type: application/json")
loc=promcheckloc0001
req() { curl -s -o /dev/null --max-time 30 "${auth[@]}" "$@" || true; }
export -f req
export base loc
authq=$(printf '%q ' "${auth[@]}")
# Writes, several at once so the batcher groups them (bounded: 40).
seq 1 40 | xargs -P 10 -I{} bash -c "curl -s -o /dev/null --max-time 30 $authq -X POST '$base/contacts/' -d '{\"locationId\":\"$loc\",\"email\":\"c{}@check.test\"}' || true"
id=$(curl -s --max-time 30 "${auth[@]}" -X POST "$base/contacts/" -d "{\"locationId\":\"$loc\",\"email\":\"one@check.test\"}" |
  python3 -c 'import json,sys; d=json.load(sys.stdin); print((d.get("contact") or d).get("id",""))' 2>/dev/null || true)
# load ROUNDS SECONDS: at most ROUNDS rounds, and no more than SECONDS, of repeated reads (miss, then hits), concurrent
# identical reads (folded), a search (query cache), an update (write), an unknown route (pass).
load() {
  local end=$((SECONDS + $2)) round=0
  while ((SECONDS < end && round < $1)); do
    round=$((round + 1))
    list="$base/contacts/?locationId=$loc&limit=$((round % 3 + 1))"
    seq 1 8 | xargs -P 8 -I{} bash -c "curl -s -o /dev/null --max-time 30 $authq '$list' || true"
    # The same reads again, one after another and before any write: cache hits.
    for _ in 1 2 3; do req "$list"; done
    [ -n "$id" ] && req "$base/contacts/$id" && req "$base/contacts/$id"
    req -X POST "$base/contacts/search" -d "{\"locationId\":\"$loc\",\"pageLimit\":10}"
    [ -n "$id" ] && req -X PUT "$base/contacts/$id" -d "{\"firstName\":\"R$round\"}"
    req "$base/no-such-route/$round"
  done
}
load 20 60
# An unsigned delivery, refused: the refused series of the webhook panel and alert.
curl -s -o /dev/null --max-time 5 -X POST "$base/_ghlproxy/webhooks/ghl" -H "Content-Type: application/json" \
  -d '{"type":"ContactUpdate","locationId":"x","id":"y"}' || true
# Then GHL fails a third of the calls for a while, so the error panels and alerts have series.
curl -fsS -o /dev/null --max-time 5 -X POST "http://127.0.0.1:$fake/_fake/faults" -d '{"errorRate":0.3,"errorStatus":502}'
load 8 30
# A fast machine finishes those rounds while the sidecar's own bucket still queues most of
# them, so the rounds alone may not reach GHL often enough to meet a failure. Go on, one
# request at a time (each waits for its token), until GHL's 502s were seen through the
# sidecar a few times: bounded by count and time.
seen=0 end=$((SECONDS + 60)) i=0
while ((seen < 3 && SECONDS < end && i < 200)); do
  i=$((i + 1))
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 30 "${auth[@]}" "$base/no-such-route/fault-$i" || true)
  [ "$code" = 502 ] && seen=$((seen + 1))
done
((seen > 0)) || { echo "prometheus-check: no 502 came through the sidecar while GHL failed calls" >&2; exit 1; }
curl -fsS -o /dev/null --max-time 5 -X POST "http://127.0.0.1:$fake/_fake/faults" -d '{"errorRate":0}'
# A few scrapes after the load, so rates over the last minute see it.
python3 - "$prom" <<'EOF'
import json, sys, time, urllib.parse, urllib.request
port = sys.argv[1]
deadline = time.time() + 60
while time.time() < deadline:
    q = urllib.parse.urlencode({"query": 'count_over_time(ghlproxy_requests_total[1m])'})
    try:
        r = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/query?{q}", timeout=5))
        if r["data"]["result"] and max(float(s["value"][1]) for s in r["data"]["result"]) >= 5:
            sys.exit(0)
    except Exception:
        pass
    time.sleep(1)
sys.exit("prometheus-check: Prometheus did not scrape the sidecar 5 times in 60s")
EOF

echo "== queries"
helm template check charts/ghlproxy --kube-version 1.33.0 --set monitoring.prometheusRule.enabled=true \
  --show-only templates/prometheusrule.yaml >"$tmp/rules.yaml"
python3 - "$prom" "$root/charts/ghlproxy/dashboards/ghlproxy.json" "$tmp/rules.yaml" <<'EOF'
import json, re, sys, urllib.parse, urllib.request
port, dash_path, rules_path = sys.argv[1:4]

def query(expr):
    q = urllib.parse.urlencode({"query": expr})
    r = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/query?{q}", timeout=30))
    if r.get("status") != "success":
        raise RuntimeError(r)
    return r["data"]["result"]

def grafana(expr):
    for k, v in {"$__rate_interval": "1m", "$__interval": "1s", "$namespace": ".*", "$pod": ".*"}.items():
        expr = expr.replace(k, v)
    return expr

checks = []
dash = json.load(open(dash_path))
for p in dash["panels"]:
    for t in p.get("targets", []):
        checks.append((f'panel "{p["title"]}" {t["refId"]}', grafana(t["expr"])))
for v in dash["templating"]["list"]:
    if v["type"] == "query":
        m = re.match(r"label_values\((.*),\s*(\w+)\)$", v["definition"])
        checks.append((f'variable {v["name"]}', grafana(m.group(1))))
# The rule file is YAML; the expressions are one line each after "expr: ".
threshold = re.compile(r"\s*(>=|<=|==|!=|>|<)\s*[-+0-9.eE]+\s*$")
for line in open(rules_path):
    m = re.match(r"\s*- alert: (\S+)", line)
    if m:
        alert = m.group(1)
    m = re.match(r"\s*expr: (.*)$", line)
    if m:
        expr = m.group(1).strip()
        bare = threshold.sub("", expr)
        if bare == expr:
            sys.exit(f"prometheus-check: alert {alert}: no threshold comparison to strip: {expr}")
        checks.append((f"alert {alert} (without threshold)", bare))

failed = 0
for name, expr in checks:
    try:
        res = query(expr)
    except Exception as e:
        print(f"FAIL  {name}: {e}\n      {expr}")
        failed += 1
        continue
    if not res:
        print(f"FAIL  {name}: no data\n      {expr}")
        failed += 1
    else:
        print(f"ok    {name}: {len(res)} series")
print(f"{len(checks) - failed} passed, {failed} failed")
sys.exit(1 if failed else 0)
EOF
