# syntax=docker/dockerfile:1
# ghlproxy: a static binary on a distroless base, running as a non-root user.
#
#   docker build --build-arg VERSION=$(git describe --tags --always) -t ghlproxy .
#
# The build command matches the Makefile's `build` target (charts/dockerfile_test.go checks
# that, and CI builds the binary with these flags, since no Docker engine runs there).

FROM golang:1.26 AS build
WORKDIR /src
# Modules first, so a source change does not refetch them.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/ghlproxy ./cmd/ghlproxy

# static: no libc, no shell; nonroot: uid 65532. The sidecar needs nothing else.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ghlproxy /ghlproxy
USER 65532:65532
# 8080: proxy (GHL traffic), 9090: ops (/metrics, /healthz, /readyz), 8443: injector webhook.
EXPOSE 8080 9090 8443
ENTRYPOINT ["/ghlproxy"]
CMD ["serve"]
