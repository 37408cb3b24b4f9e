// Package issuertest serves an issuer.Server over real gRPC with TLS on
// 127.0.0.1, for the tests of the issuer and of its clients (the agent's
// CAClient). Only tests import it.
package issuertest

import (
	"crypto/tls"
	"errors"
	"net"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/issuer"
)

// Serve builds an issuer.Server from cfg and serves it with its own TLS
// configuration (and opts) on a new 127.0.0.1 port until the test ends. It
// returns the server and its address; the test fails when the server
// cannot be built or stops serving with an error.
func Serve(t testing.TB, cfg issuer.Config, opts ...grpc.ServerOption) (*issuer.Server, string) {
	t.Helper()
	srv, err := issuer.New(cfg)
	if err != nil {
		t.Fatalf("issuer.New: %v", err)
	}
	lis, err := issuer.Listen(t.Context(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ServeOn(t, lis, srv, srv.TLSConfig(), opts...)
	return srv, lis.Addr().String()
}

// ServeOn serves srv (an issuer.Server, or a test's wrapper of one) with
// tlsConfig on lis until the test ends: for a CA that starts after its
// agents, on an address chosen before, or one that answers wrongly.
func ServeOn(t testing.TB, lis net.Listener, srv issuerv1.IssuerServer, tlsConfig *tls.Config, opts ...grpc.ServerOption) {
	t.Helper()
	// The options of the CA's own server (its keepalive policy among
	// them: with gRPC's default policy the agents' pings, with or without
	// a stream, would be answered with GOAWAY too_many_pings, dropping
	// calls); opts come after them and so win.
	gs := grpc.NewServer(append(append([]grpc.ServerOption{grpc.Creds(credentials.NewTLS(tlsConfig))}, issuer.ServerOptions()...), opts...)...)
	issuerv1.RegisterIssuerServer(gs, srv)
	served := make(chan error, 1)
	go func() { served <- gs.Serve(lis) }()
	t.Cleanup(func() {
		gs.Stop()
		if err := <-served; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			t.Errorf("Serve: %v", err)
		}
	})
}
