package grpcserver_test

import (
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/mayfly-pki/mayfly/internal/test/grpcserver"
)

// TestServeUnix calls a health server served on a socket, with and without
// a listener wrapper, and sees each call go through the wrapper when there
// is one.
func TestServeUnix(t *testing.T) {
	for _, tc := range []struct {
		name        string
		wrap        bool
		wantAccepts int64
	}{
		{name: "bare listener"},
		{name: "wrapped listener", wrap: true, wantAccepts: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := grpc.NewServer()
			healthpb.RegisterHealthServer(g, health.NewServer())
			path := filepath.Join(t.TempDir(), "s.sock")
			var accepts atomic.Int64
			var wrap func(net.Listener) net.Listener
			if tc.wrap {
				wrap = func(l net.Listener) net.Listener { return countingListener{l, &accepts} }
			}
			grpcserver.ServeUnix(t, g, path, wrap)

			cc, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			resp, err := healthpb.NewHealthClient(cc).Check(t.Context(), &healthpb.HealthCheckRequest{})
			if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				t.Fatalf("Check = %v, %v; want SERVING", resp, err)
			}
			if accepts.Load() != tc.wantAccepts {
				t.Errorf("%d connections accepted through the wrapper, want %d", accepts.Load(), tc.wantAccepts)
			}
		})
	}
}

type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}
