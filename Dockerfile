# pgwarden's images for real registries. What goes into them is listed once, in
# e2e/testbed/images.conf; the test bed builds its local images from that list and
# `go test ./e2e/testbed/...` checks this file against it. Change both together.
#
#   docker build -t <registry>/pgwarden:<tag> .                           # instance (default)
#   docker build --target operator -t <registry>/pgwarden-operator:<tag> .
#
# Keep .testbed/ (the local test cluster's state, with sockets and mounts) and bin/ out of the
# build context with a .dockerignore.

ARG GO_VERSION=1.26
ARG PG_MAJOR=15

FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X github.com/pgwarden/pgwarden/pkg/version.Version=${VERSION}" \
      -o /out/pgwarden ./cmd/pgwarden
# The instance image's build leaves the operator out (-tags noperator): PID 1 of every Postgres
# pod then idles at ~18 MiB instead of ~30 MiB (`make build-instance`).
RUN CGO_ENABLED=0 go build -trimpath -tags noperator \
      -ldflags "-s -w -X github.com/pgwarden/pgwarden/pkg/version.Version=${VERSION}" \
      -o /out/pgwarden-instance ./cmd/pgwarden

# The operator: the same binary, nothing else.
FROM scratch AS operator
COPY --from=build /out/pgwarden /usr/local/bin/pgwarden
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/pgwarden","operator"]

# The instance: the official PostgreSQL image, with pgwarden as PID 1. Its postgres user is
# uid 999, gid 999; the numeric form lets Kubernetes verify runAsNonRoot.
FROM postgres:${PG_MAJOR} AS instance
COPY --from=build /out/pgwarden-instance /usr/local/bin/pgwarden
ENV PGDATA=/var/lib/postgresql/data/pgdata PG_BIN_DIR=/usr/lib/postgresql/15/bin
USER 999:999
EXPOSE 5432 8000 9187
ENTRYPOINT ["/usr/local/bin/pgwarden","instance","run"]
