// Package grpcserver serves a gRPC server on a unix socket for the length
// of a test or benchmark. Only tests import it.
package grpcserver

import (
	"errors"
	"net"
	"testing"

	"google.golang.org/grpc"
)

// ServeUnix serves g on a new unix socket at path, through the listener
// wrap returns when wrap is not nil (a server's connection limits), until
// the test ends: g stops at cleanup, and an error of Serve fails the test.
func ServeUnix(tb testing.TB, g *grpc.Server, path string, wrap func(net.Listener) net.Listener) {
	tb.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		tb.Fatal(err)
	}
	if wrap != nil {
		l = wrap(l)
	}
	served := make(chan error, 1)
	go func() { served <- g.Serve(l) }()
	tb.Cleanup(func() {
		g.Stop()
		if err := <-served; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			tb.Errorf("serving on %s: %v", path, err)
		}
	})
}
