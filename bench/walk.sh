#!/usr/bin/env bash
# The walk of a request through the code: which of the module's functions run while the
# sidecar serves one miss, one hit from Redis, one hit from memory and one write (two
# replicas on one Redis in front of the GHL stand-in, warmed first). bench/walk records
# coverage counters around each request; this counts the functions that ran, their files
# and packages, leaving out the stand-in and the harness. Background work of the replicas
# that happens to run during a request (a heartbeat, a registry beat) is counted too: the
# figures are an upper bound. Lists every function to $OUT/<step>.txt.
#
#   bench/walk.sh          # about 30 s; needs redis-server and go
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/out/walk}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
go build -cover -covermode=atomic -coverpkg=./... -o "$work/walk" ./bench/walk
"$work/walk" "$work/data" 2>/dev/null
mkdir -p "$OUT"
printf '| request | functions | files | packages |\n| --- | --- | --- | --- |\n'
for step in miss hit-redis hit-memory write; do
	go tool covdata func -i "$work/data/$step" |
		awk '$NF != "0.0%" && $1 ~ /^github.com\/ghlproxy\/ghlproxy\// && $1 !~ /\/(fakeghl|bench)\// {print $1, $2}' |
		sed 's#^github.com/ghlproxy/ghlproxy/##' > "$OUT/$step.txt"
	fns=$(wc -l < "$OUT/$step.txt")
	files=$(cut -d: -f1 "$OUT/$step.txt" | sort -u | wc -l)
	pkgs=$(cut -d: -f1 "$OUT/$step.txt" | xargs -n1 dirname | sort -u | wc -l)
	printf '| %s | %d | %d | %d |\n' "$step" "$fns" "$files" "$pkgs"
done
