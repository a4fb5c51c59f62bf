# The commands a newcomer needs. `make run` starts the sidecar on the embedded store
# (no Redis); `make test` runs the whole suite the way CI does.
GO ?= go
LDFLAGS := -s -w -X main.version=$(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

.PHONY: run test build fakeghl bench bench-floors bench-walk lint

run:
	$(GO) run ./cmd/ghlproxy serve

test:
	scripts/test.sh

# The same flags as the Dockerfile: a static binary.
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/ghlproxy ./cmd/ghlproxy

fakeghl:
	$(GO) run ./cmd/ghlproxy fakeghl

bench:
	bench/run.sh

# The pass-through floor of other HTTP stacks beside nginx (docs/bench/floors.md).
bench-floors:
	bench/floors.sh

# The functions, files and packages one request of each kind runs (docs/architecture.md).
bench-walk:
	bench/walk.sh
