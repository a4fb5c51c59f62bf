#!/usr/bin/env bash
# Runs the whole test suite the way CI does: installs what the tests need (redis-server,
# Node.js for the SDK test), checks formatting and vet, runs every Go test with the race
# detector, then runs each fuzz target briefly from its committed seed corpus.
#
#   scripts/test.sh            everything
#   FUZZTIME=0 scripts/test.sh skip the fuzz runs
#   FUZZTIME=30s scripts/test.sh fuzz each target for a while instead of a fixed count
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
if ((${#need_apt[@]})); then
  echo "installing: ${need_apt[*]}"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "need root to install ${need_apt[*]}" >&2
    exit 1
  fi
fi

# helm, promtool and dockerfile-utils, for package charts (the deployment tests).
scripts/k8s-tools.sh

echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change:" >&2
  echo "$unformatted" >&2
  exit 1
fi

echo "== go vet"
go vet ./...

echo "== go test -race"
# CI=true makes tests that need redis-server or node fail instead of skip.
go test -race -count=1 -timeout 30m ./... 2>&1 | tee /tmp/ghlproxy-test.log

echo "== prometheus check (every dashboard and alert query returns data from a sidecar under load)"
scripts/prometheus-check.sh

# A count, not a duration: with a duration, Go 1.26's fuzz coordinator can report its own
# deadline as "context deadline exceeded" and fail a target that found nothing
# (go.dev/issue/75804, fixed in Go 1.27). A count has no deadline to race.
fuzztime=${FUZZTIME:-100000x}
if [ "$fuzztime" != "0" ]; then
  echo "== fuzz ($fuzztime per target)"
  # Every Fuzz function, found in the source, run on its own for a short while.
  grep -rl --include='*_test.go' '^func Fuzz' . | while read -r f; do
    pkg=./$(dirname "${f#./}")
    for fn in $(grep -o '^func Fuzz[A-Za-z0-9_]*' "$f" | cut -d' ' -f2); do
      echo "-- $pkg $fn"
      go test -run='^$' -fuzz="^${fn}\$" -fuzztime="$fuzztime" "$pkg"
    done
  done
fi
echo "all tests passed"
