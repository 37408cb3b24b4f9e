# syntax=docker/dockerfile:1
# mayfly CA control plane. Build from the repository root:
#   docker build -f deploy/docker/ca.Dockerfile -t ghcr.io/mayfly-pki/mayfly-ca:v0.1.0 .
FROM golang:1.26.8-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 GOOS=linux go build -trimpath -ldflags "-s -w" -o /out/ca ./cmd/ca

# Static binary, no shell, no package manager; uid/gid 65532.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ca /usr/local/bin/ca
USER 65532:65532
EXPOSE 8443 9443
ENTRYPOINT ["/usr/local/bin/ca"]
