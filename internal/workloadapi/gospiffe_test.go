// go-spiffe's own Workload API client against the server.

package workloadapi

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"path/filepath"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/mayfly-pki/mayfly/internal/test/testca"
)

// attestorFunc adapts a function to Attestor.
type attestorFunc func(ctx context.Context) (Caller, error)

func (f attestorFunc) Attest(ctx context.Context) (Caller, error) { return f(ctx) }

func goSpiffeClient(t testing.TB, path string) *workloadapi.Client {
	t.Helper()
	c, err := workloadapi.New(testContext(t), workloadapi.WithAddr("unix://"+path))
	if err != nil {
		t.Fatalf("workloadapi.New: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestGoSpiffe_FetchX509SVID(t *testing.T) {
	env := startServer(t, Config{})
	id := issue(t, env.ca, "spiffe://example.org/ns/default/sa/w")
	env.source.set("a", id)
	svid, err := goSpiffeClient(t, env.path).FetchX509SVID(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID != id.ID || !svid.Certificates[0].Equal(id.Chain[0]) || len(svid.Certificates) != 2 {
		t.Fatalf("got %s with %d certificates, want %s leaf first with its intermediate", svid.ID, len(svid.Certificates), id.ID)
	}
	// The SVID verifies against the bundle the client received.
	bundles, err := goSpiffeClient(t, env.path).FetchX509Bundles(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	b, err := bundles.GetX509BundleForTrustDomain(env.ca.TrustDomain)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range b.X509Authorities() {
		roots.AddCert(r)
	}
	inter := x509.NewCertPool()
	inter.AddCert(svid.Certificates[1])
	if _, err := svid.Certificates[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("SVID does not verify against the served bundle: %v", err)
	}
}

func TestGoSpiffe_errors(t *testing.T) {
	t.Run("no_identity_is_PermissionDenied", func(t *testing.T) {
		env := startServer(t, Config{})
		_, err := goSpiffeClient(t, env.path).FetchX509SVID(testContext(t))
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("got %v, want PermissionDenied", err)
		}
	})
	t.Run("attestation_failure_is_PermissionDenied", func(t *testing.T) {
		env := startServer(t, Config{Attestor: &fakeAttestor{err: errors.New("unknown pid")}})
		_, err := goSpiffeClient(t, env.path).FetchX509Context(testContext(t))
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("got %v, want PermissionDenied", err)
		}
	})
}

// contextWatcher passes go-spiffe's watch callbacks to channels.
type contextWatcher struct {
	updates chan *workloadapi.X509Context
	errs    chan error
}

func (w *contextWatcher) OnX509ContextUpdate(c *workloadapi.X509Context) { w.updates <- c }
func (w *contextWatcher) OnX509ContextWatchError(err error) {
	select {
	case w.errs <- err:
	default:
	}
}

func TestGoSpiffe_WatchX509Context_receives_rotation(t *testing.T) {
	env := startServer(t, Config{})
	first := issue(t, env.ca, "spiffe://example.org/ns/default/sa/w")
	env.source.set("a", first)
	client := goSpiffeClient(t, env.path)

	x509ctx, err := client.FetchX509Context(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	if got := x509ctx.DefaultSVID().Certificates[0]; !got.Equal(first.Chain[0]) {
		t.Fatal("FetchX509Context: not the current SVID")
	}

	ctx, cancel := context.WithCancel(testContext(t))
	w := &contextWatcher{updates: make(chan *workloadapi.X509Context, 8), errs: make(chan error, 8)}
	done := make(chan error, 1)
	go func() { done <- client.WatchX509Context(ctx, w) }()
	next := func() *workloadapi.X509Context {
		t.Helper()
		select {
		case c := <-w.updates:
			return c
		case err := <-w.errs:
			t.Fatalf("watch error: %v", err)
		case <-ctx.Done():
			t.Fatal("no update")
		}
		return nil
	}
	if got := next().DefaultSVID().Certificates[0]; !got.Equal(first.Chain[0]) {
		t.Fatal("first update is not the current SVID")
	}
	rotated := issue(t, env.ca, "spiffe://example.org/ns/default/sa/w")
	env.source.set("a", rotated)
	env.source.notify()
	if got := next().DefaultSVID().Certificates[0]; !got.Equal(rotated.Chain[0]) {
		t.Fatalf("got serial %s after rotation, want %s", got.SerialNumber, rotated.Chain[0].SerialNumber)
	}
	cancel()
	if err := <-done; status.Code(err) != codes.Canceled && !errors.Is(err, context.Canceled) {
		t.Fatalf("WatchX509Context ended with %v", err)
	}
}

func TestGoSpiffe_X509Source_mTLS(t *testing.T) {
	ca := testca.New(t)
	serverID := spiffeid.RequireFromString("spiffe://example.org/ns/default/sa/server")
	clientID := spiffeid.RequireFromString("spiffe://example.org/ns/default/sa/client")
	source := newFakeSource()
	source.setBundle(ca.TrustDomain, ca.Bundle())
	source.set("server", issue(t, ca, serverID.String()))
	source.set("client", issue(t, ca, clientID.String()))

	// One server on two sockets; the socket a caller came through stands
	// in for attestation.
	dir := t.TempDir()
	sockets := map[string]Caller{filepath.Join(dir, "s.sock"): "server", filepath.Join(dir, "c.sock"): "client"}
	s, err := New(Config{
		Attestor: attestorFunc(func(ctx context.Context) (Caller, error) {
			p, ok := peer.FromContext(ctx)
			if !ok || p.LocalAddr == nil {
				return nil, errors.New("no peer")
			}
			c, ok := sockets[p.LocalAddr.String()]
			if !ok {
				return nil, errors.New("unknown socket")
			}
			return c, nil
		}),
		Source: source,
	})
	if err != nil {
		t.Fatal(err)
	}
	serve(t, s, filepath.Join(dir, "s.sock"), filepath.Join(dir, "c.sock"))

	newSource := func(name string) *workloadapi.X509Source {
		src, err := workloadapi.NewX509Source(testContext(t), workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+filepath.Join(dir, name))))
		if err != nil {
			t.Fatalf("NewX509Source: %v", err)
		}
		t.Cleanup(func() { _ = src.Close() })
		return src
	}
	serverSrc, clientSrc := newSource("s.sock"), newSource("c.sock")

	handshake := func() (serverSaw, clientSaw *x509.Certificate) {
		t.Helper()
		sc, cc := net.Pipe()
		srv := tls.Server(sc, tlsconfig.MTLSServerConfig(serverSrc, serverSrc, tlsconfig.AuthorizeID(clientID)))
		cli := tls.Client(cc, tlsconfig.MTLSClientConfig(clientSrc, clientSrc, tlsconfig.AuthorizeID(serverID)))
		// Close the pipe, not the TLS conns: close_notify on an unread pipe
		// would wait for its 5s write deadline.
		defer sc.Close()
		defer cc.Close()
		errs := make(chan error, 1)
		go func() {
			err := srv.HandshakeContext(testContext(t))
			if err == nil {
				_, err = srv.Write([]byte("ok"))
			}
			errs <- err
		}()
		if err := cli.HandshakeContext(testContext(t)); err != nil {
			t.Fatalf("client handshake: %v", err)
		}
		buf := make([]byte, 2)
		if _, err := io.ReadFull(cli, buf); err != nil || string(buf) != "ok" {
			t.Fatalf("read: %q %v", buf, err)
		}
		if err := <-errs; err != nil {
			t.Fatalf("server handshake: %v", err)
		}
		return srv.ConnectionState().PeerCertificates[0], cli.ConnectionState().PeerCertificates[0]
	}

	_, clientSaw := handshake()
	if id, _ := spiffeIDOf(clientSaw); id != serverID {
		t.Fatalf("client saw %v, want %v", id, serverID)
	}

	t.Run("server_rotation_reaches_new_handshakes", func(t *testing.T) {
		rotated := issue(t, ca, serverID.String())
		source.set("server", rotated)
		source.notify()
		for {
			svid, err := serverSrc.GetX509SVID()
			if err != nil {
				t.Fatal(err)
			}
			if svid.Certificates[0].Equal(rotated.Chain[0]) {
				break
			}
			if err := serverSrc.WaitUntilUpdated(testContext(t)); err != nil {
				t.Fatal("rotation not received")
			}
		}
		if _, clientSaw := handshake(); !clientSaw.Equal(rotated.Chain[0]) {
			t.Fatalf("handshake used serial %s, want the rotated %s", clientSaw.SerialNumber, rotated.Chain[0].SerialNumber)
		}
	})
}

func spiffeIDOf(cert *x509.Certificate) (spiffeid.ID, error) {
	if len(cert.URIs) != 1 {
		return spiffeid.ID{}, errors.New("not one URI SAN")
	}
	return spiffeid.FromURI(cert.URIs[0])
}
