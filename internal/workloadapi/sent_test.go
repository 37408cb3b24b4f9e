package workloadapi

import (
	"context"
	"crypto/x509"
	"testing"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mayfly-pki/mayfly/internal/test/testca"
)

// observingSource is a fakeSource that is told what each stream sent, and
// records the stream context of each Identities call.
type observingSource struct {
	*fakeSource
	read chan (<-chan struct{})
	sent chan sentRecord
}

type sentRecord struct {
	stream  <-chan struct{}
	bundles map[spiffeid.TrustDomain][]*x509.Certificate
}

func (o *observingSource) Identities(ctx context.Context, c Caller) ([]Identity, map[spiffeid.TrustDomain][]*x509.Certificate, error) {
	o.read <- ctx.Done()
	return o.fakeSource.Identities(ctx, c)
}

func (o *observingSource) Sent(ctx context.Context, bundles map[spiffeid.TrustDomain][]*x509.Certificate) {
	o.sent <- sentRecord{ctx.Done(), bundles}
}

// TestSendObserver: a source that observes sends is told, after each
// response a stream handed to Send, the bundles it carried, with the
// stream's context, the one its Identities calls got.
func TestSendObserver(t *testing.T) {
	src := &observingSource{fakeSource: newFakeSource(), read: make(chan (<-chan struct{}), 16), sent: make(chan sentRecord, 16)}
	env := startServer(t, Config{Source: src})
	src.setBundle(env.ca.TrustDomain, env.ca.Bundle())
	src.set("a", issue(t, env.ca, "spiffe://example.org/ns/default/sa/w"))
	next := func(what string) sentRecord {
		t.Helper()
		select {
		case r := <-src.sent:
			return r
		case <-testContext(t).Done():
			t.Fatalf("no Sent for %s", what)
			return sentRecord{}
		}
	}
	readStream := func() <-chan struct{} {
		t.Helper()
		select {
		case d := <-src.read:
			return d
		case <-testContext(t).Done():
			t.Fatal("no Identities call")
			return nil
		}
	}

	for _, fetch := range []struct {
		name string
		open func(ctx context.Context) (func() error, error)
	}{
		{"FetchX509SVID", func(ctx context.Context) (func() error, error) {
			s, err := rawClient(t, env.path).FetchX509SVID(ctx, &workload.X509SVIDRequest{})
			return func() error { _, err := s.Recv(); return err }, err
		}},
		{"FetchX509Bundles", func(ctx context.Context) (func() error, error) {
			s, err := rawClient(t, env.path).FetchX509Bundles(ctx, &workload.X509BundlesRequest{})
			return func() error { _, err := s.Recv(); return err }, err
		}},
	} {
		t.Run(fetch.name, func(t *testing.T) {
			src.setBundle(env.ca.TrustDomain, env.ca.Bundle())
			ctx, cancel := context.WithCancel(withHeader(testContext(t)))
			defer cancel()
			recv, err := fetch.open(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := recv(); err != nil {
				t.Fatal(err)
			}
			stream := readStream()
			r := next("the first response")
			if r.stream == nil || r.stream != stream {
				t.Fatal("Sent did not get the stream context Identities got")
			}
			if roots := r.bundles[env.ca.TrustDomain]; len(roots) != 1 || !roots[0].Equal(env.ca.Root) {
				t.Fatalf("Sent with %d roots, want the bundle sent", len(roots))
			}
			other := testca.New(t)
			src.setBundle(env.ca.TrustDomain, []*x509.Certificate{env.ca.Root, other.Root})
			src.notify()
			if err := recv(); err != nil {
				t.Fatal(err)
			}
			if r := next("the bundle change"); len(r.bundles[env.ca.TrustDomain]) != 2 || r.stream != stream {
				t.Fatalf("Sent after the bundle change with %d roots, want 2 on the same stream", len(r.bundles[env.ca.TrustDomain]))
			}
			cancel()
			select { // the stream is gone before the next one starts
			case <-src.cancelled:
			case <-testContext(t).Done():
				t.Fatal("the stream did not unsubscribe")
			}
			for len(src.read) > 0 {
				<-src.read
			}
		})
	}
}
