package csi

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// gracePeriod bounds how long Serve waits for calls in flight at shutdown.
const gracePeriod = 5 * time.Second

// Serve serves the Identity and Node services on a unix socket at
// socketPath (usually /var/lib/kubelet/plugins/csi.mayfly.dev/csi.sock,
// registered with the kubelet by the Registrar) until ctx is done.
// A stale socket left by an earlier run is removed.
func (d *Driver) Serve(ctx context.Context, socketPath string) error {
	lis, err := listenUnix(socketPath)
	if err != nil {
		return fmt.Errorf("csi: %w", err)
	}
	gs := grpc.NewServer(grpc.ChainUnaryInterceptor(d.logCalls))
	csipb.RegisterIdentityServer(gs, d)
	csipb.RegisterNodeServer(gs, d)
	d.log.Info("CSI driver listening", "socket", socketPath, "driver", DriverName, "node", d.cfg.NodeName)
	d.listeningOnce.Do(func() { close(d.listening) })

	return serveUntilDone(ctx, gs, lis, socketPath, "csi", d.log)
}

// serveUntilDone serves gs on lis (a unix socket at path) until ctx is
// done, then stops gracefully (at most gracePeriod) and removes the socket.
// prefix names the server in errors and log lines.
func serveUntilDone(ctx context.Context, gs *grpc.Server, lis net.Listener, path, prefix string, log *slog.Logger) error {
	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(lis) }()
	select {
	case err := <-errc:
		return fmt.Errorf("%s: serve %s: %w", prefix, path, err)
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() {
		gs.GracefulStop()
		close(stopped)
	}()
	t := time.NewTimer(gracePeriod)
	defer t.Stop()
	select {
	case <-stopped:
	case <-t.C:
		gs.Stop()
	}
	if err := <-errc; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		log.Warn(prefix+": server stopped with an error", "error", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		log.Warn(prefix+": removing the socket", "socket", path, "error", err)
	}
	return nil
}

// Listening is closed once Serve listens on its socket: register with the
// kubelet (Registrar) only then, or its first NodeGetInfo finds no socket.
func (d *Driver) Listening() <-chan struct{} { return d.listening }

// listenUnix listens on a unix socket (mode 0600: only the kubelet, as
// root, connects), replacing a stale socket but nothing else.
func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("socket directory: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("%s exists and is not a socket; remove it", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		_ = lis.Close()
		return nil, fmt.Errorf("socket mode: %w", err)
	}
	return lis, nil
}

// logCalls logs failed calls (never the request: its volume context holds
// the pod's token) and every publish and unpublish at debug level.
func (d *Driver) logCalls(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	code := status.Code(err)
	attrs := []any{"method", info.FullMethod, "code", code.String(), "duration", time.Since(start)}
	if v, ok := req.(interface{ GetVolumeId() string }); ok {
		attrs = append(attrs, "volume_id", v.GetVolumeId())
	}
	switch code {
	case codes.OK, codes.Unimplemented:
		d.log.Debug("CSI call", attrs...)
	case codes.Internal, codes.Unknown:
		d.log.Error("CSI call failed", append(attrs, "error", status.Convert(err).Message())...)
	default:
		d.log.Info("CSI call failed", append(attrs, "error", status.Convert(err).Message())...)
	}
	return resp, err
}
