# syntax=docker/dockerfile:1
# mayfly node agent. Build from the repository root:
#   docker build -f deploy/docker/agent.Dockerfile -t ghcr.io/mayfly-pki/mayfly-agent:v0.1.0 .
FROM golang:1.26.8-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 GOOS=linux go build -trimpath -ldflags "-s -w" -o /out/agent ./cmd/agent

# The agent runs as root: it reads other pods' /proc/<pid> (hostPID) for
# attestation and, as the CSI node plugin, mounts volumes into pods under
# /var/lib/kubelet/pods. Same distroless base as the CA (no shell, no package
# manager; the DaemonSet keeps the root filesystem read-only), with its
# default user 65532 replaced by root. The DaemonSet asks for uid 0 as well.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/agent /usr/local/bin/agent
USER 0:0
EXPOSE 9444
ENTRYPOINT ["/usr/local/bin/agent"]
