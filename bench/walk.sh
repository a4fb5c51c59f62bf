#!/usr/bin/env bash
# The walk of a request through the code: which of the module's functions run while the
# sidecar serves one miss, one hit from Redis, one hit from memory and one write (two
# replicas on one Redis in front of the GHL stand-in, warmed first). bench/walk records
# coverage counters around each request; this counts the functions that ran, their files
# and packages, leaving out the stand-in and the harness. The counters are written once the
# client has read the answer: work after it (the handler's deferred metrics, the other
# replica applying an invalidation notice) may be left out, and background work that runs
# during the request (a heartbeat) is counted, so a rerun can differ by a few functions.
# Each step checks its answer's Cache-Status (a miss, a hit). Lists every function to
# $OUT/<step>.txt.
#
#   bench/walk.sh          # about 30 s; needs redis-server and go
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/out/walk}
work=$(mktemp -d)
mkdir -p "$work/exit"
trap 'rm -rf "$work"' EXIT
go build -cover -covermode=atomic -coverpkg=./... -o "$work/walk" ./bench/walk
# GOCOVERDIR: where the program's own exit writes its counters (unused, but unset it warns).
GOCOVERDIR="$work/exit" "$work/walk" "$work/data"
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
