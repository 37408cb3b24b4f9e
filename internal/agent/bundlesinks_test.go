package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/test/pemfile"
	"github.com/mayfly-pki/mayfly/internal/test/testca"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// readRoots returns the certificates of dir's ca.crt.
func readRoots(t *testing.T, dir string) []*x509.Certificate {
	t.Helper()
	return pemfile.Certificates(t, filepath.Join(dir, rotate.DefaultBundleFile))
}

// bundleSinkFunc is a sink that can also take a bundle alone.
type bundleSinkFunc struct {
	mu      sync.Mutex
	put     []*rotate.Credential
	bundles [][]*x509.Certificate
	err     error // of PutBundle
}

func (s *bundleSinkFunc) Put(_ context.Context, c *rotate.Credential) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.put = append(s.put, c)
	return nil
}

func (s *bundleSinkFunc) PutBundle(_ context.Context, roots []*x509.Certificate) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	s.bundles = append(s.bundles, roots)
	return nil
}

func (s *bundleSinkFunc) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.err = err
}

func (s *bundleSinkFunc) counts() (puts, bundles int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.put), len(s.bundles)
}

// mutableBundle is a BundleSource a test sets.
type mutableBundle struct {
	mu    sync.Mutex
	roots []*x509.Certificate
}

func (b *mutableBundle) Bundle() ([]*x509.Certificate, string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.roots, fmt.Sprint(len(b.roots))
}

func (b *mutableBundle) set(roots ...*x509.Certificate) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.roots = roots
}

func TestBundledSinkWritesTheBundleInForce(t *testing.T) {
	ca, next := testca.New(t), testca.New(t)
	chain, key := ca.IssueWorkload(t, spiffeid.RequireFromString(idWeb), time.Hour)
	cred := &rotate.Credential{Certificates: chain, Key: key, Bundle: ca.Bundle()}
	bundle := &mutableBundle{}
	bundle.set(ca.Root, next.Root)

	t.Run("a credential obtained before a bundle change is written with the new bundle", func(t *testing.T) {
		dir := t.TempDir()
		fs, err := rotate.NewFileSink(dir, rotate.FileSinkOptions{})
		if err != nil {
			t.Fatal(err)
		}
		s := &bundledSink{sink: fs, bundle: bundle}
		if err := s.Put(context.Background(), cred); err != nil {
			t.Fatal(err)
		}
		if got := readRoots(t, dir); len(got) != 2 || !got[1].Equal(next.Root) {
			t.Fatalf("ca.crt holds %d roots, want the 2 in force, not the credential's 1", len(got))
		}
		if len(cred.Bundle) != 1 {
			t.Fatal("Put changed the shared credential")
		}
		// The bundle changes again: only ca.crt is rewritten.
		before, err := os.ReadFile(filepath.Join(dir, rotate.DefaultCertFile))
		if err != nil {
			t.Fatal(err)
		}
		if err := s.putBundle(context.Background(), []*x509.Certificate{next.Root}); err != nil {
			t.Fatal(err)
		}
		if got := readRoots(t, dir); len(got) != 1 || !got[0].Equal(next.Root) {
			t.Fatalf("ca.crt holds %d roots after putBundle, want the next root alone", len(got))
		}
		after, err := os.ReadFile(filepath.Join(dir, rotate.DefaultCertFile))
		if err != nil {
			t.Fatal(err)
		}
		if string(before) != string(after) {
			t.Error("putBundle changed tls.crt")
		}
	})

	t.Run("a directory never written to holds no bundle to update", func(t *testing.T) {
		fs, err := rotate.NewFileSink(filepath.Join(t.TempDir(), "empty"), rotate.FileSinkOptions{})
		if err != nil {
			t.Fatal(err)
		}
		s := &bundledSink{sink: fs, bundle: bundle}
		if err := s.putBundle(context.Background(), []*x509.Certificate{next.Root}); err != nil {
			t.Fatalf("putBundle before any credential = %v, want nil", err)
		}
	})

	t.Run("a sink without PutBundle gets the bundle with its next credential", func(t *testing.T) {
		var got *rotate.Credential
		s := &bundledSink{sink: rotate.SinkFunc(func(_ context.Context, c *rotate.Credential) error { got = c; return nil }), bundle: bundle}
		if err := s.putBundle(context.Background(), []*x509.Certificate{next.Root}); err != nil {
			t.Fatal(err)
		}
		if err := s.Put(context.Background(), cred); err != nil {
			t.Fatal(err)
		}
		if len(got.Bundle) != 2 {
			t.Fatalf("Put handed %d roots, want the 2 in force", len(got.Bundle))
		}
	})

	t.Run("an unchanged bundle is not put again; a failed one is retried", func(t *testing.T) {
		inner := &bundleSinkFunc{}
		s := &bundledSink{sink: inner, bundle: bundle}
		if err := s.Put(context.Background(), cred); err != nil {
			t.Fatal(err)
		}
		roots, _ := bundle.Bundle()
		if err := s.putBundle(context.Background(), roots); err != nil {
			t.Fatal(err)
		}
		if _, n := inner.counts(); n != 0 {
			t.Fatalf("PutBundle called %d times for the bundle the sink already holds", n)
		}
		inner.fail(errors.New("disk full"))
		if err := s.putBundle(context.Background(), []*x509.Certificate{next.Root}); err == nil || !strings.Contains(err.Error(), "disk full") {
			t.Fatalf("putBundle = %v, want the sink's error", err)
		}
		inner.fail(nil)
		if err := s.putBundle(context.Background(), []*x509.Certificate{next.Root}); err != nil {
			t.Fatal(err)
		}
		if _, n := inner.counts(); n != 1 {
			t.Fatalf("PutBundle succeeded %d times, want 1", n)
		}
	})
}

// TestManagerDeliverBundle: a bundle change reaches the files of every
// identity without a leaf rotation; a sink that fails is reported and
// counted, and a removed identity's sinks are no longer asked.
func TestManagerDeliverBundle(t *testing.T) {
	next := testca.New(t)
	bundle := &mutableBundle{}
	h := newManager(t, true, func(c *ManagerConfig) {
		bundle.set(c.Bundle.(staticBundle)...)
		c.Bundle = bundle
	})
	h.ca.grant(idWeb, idDB)
	dir := t.TempDir()
	fs, err := rotate.NewFileSink(dir, rotate.FileSinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	failing := &bundleSinkFunc{}
	ctx := context.Background()
	web := h.m.Ensure(Spec{Key: idWeb, SpiffeID: idWeb, Sinks: []rotate.Sink{fs}, Pinned: true})
	db := h.m.Ensure(Spec{Key: idDB, SpiffeID: idDB, Pinned: true})
	removeFailing := h.m.AddSink(db, failing)
	for _, rot := range []*rotate.Rotator{web, db} {
		if _, err := rot.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "both sinks hold the first credential", func() bool {
		puts, _ := failing.counts()
		return puts == 1 && web.State().PendingSinks == 0
	})
	certBefore, err := os.ReadFile(filepath.Join(dir, rotate.DefaultCertFile))
	if err != nil {
		t.Fatal(err)
	}

	roots := []*x509.Certificate{h.ca.tca.Root, next.Root}
	bundle.set(roots...)
	failing.fail(errors.New("read-only file system"))
	pending, err := h.m.DeliverBundle(ctx, roots)
	if pending != 1 || err == nil || !strings.Contains(err.Error(), "read-only file system") || !strings.Contains(err.Error(), "1 of 2 certificate directories") {
		t.Fatalf("DeliverBundle with a failing sink = %d, %v; want 1 pending, naming the failure", pending, err)
	}
	if got := readRoots(t, dir); len(got) != 2 {
		t.Fatalf("ca.crt holds %d roots, want the 2 delivered although another sink failed", len(got))
	}
	if certAfter, _ := os.ReadFile(filepath.Join(dir, rotate.DefaultCertFile)); string(certAfter) != string(certBefore) {
		t.Error("delivering a bundle changed tls.crt")
	}
	failing.fail(nil)
	if pending, err := h.m.DeliverBundle(ctx, roots); pending != 0 || err != nil {
		t.Fatalf("DeliverBundle once the sink recovered = %d, %v", pending, err)
	}

	// A removed sink and a removed identity are not asked any more.
	removeFailing()
	h.m.Remove(idWeb)
	failing.fail(errors.New("gone"))
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if pending, err := h.m.DeliverBundle(ctx, []*x509.Certificate{next.Root}); pending != 0 || err != nil {
		t.Fatalf("DeliverBundle after removals = %d, %v; want nothing left to deliver to", pending, err)
	}
}

// TestWorkloadSourceDeliverBundle: a bundle is delivered once every open
// stream read it and handed it to Send; streams that ended, and contexts
// that are no stream, do not count.
func TestWorkloadSourceDeliverBundle(t *testing.T) {
	old, next := testca.New(t), testca.New(t)
	td := spiffeid.RequireTrustDomainFromString("example.org")
	oldRoots, newRoots := []*x509.Certificate{old.Root}, []*x509.Certificate{old.Root, next.Root}
	s := &WorkloadSource{TrustDomain: td}
	bundles := func(roots []*x509.Certificate) map[spiffeid.TrustDomain][]*x509.Certificate {
		return map[spiffeid.TrustDomain][]*x509.Certificate{td: roots}
	}
	short := func() context.Context {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
		t.Cleanup(cancel)
		return ctx
	}
	if n, err := s.DeliverBundle(short(), newRoots); n != 0 || err != nil {
		t.Fatalf("DeliverBundle without streams = %d, %v", n, err)
	}

	streamA, endA := context.WithCancel(context.Background())
	streamB, endB := context.WithCancel(context.Background())
	defer endB()
	s.record(streamA, func(b *streamBundles) { b.read = oldRoots })
	s.Sent(streamA, bundles(oldRoots))
	s.record(streamB, func(b *streamBundles) { b.read = oldRoots }) // not sent yet
	s.record(context.Background(), func(b *streamBundles) { b.read = oldRoots })
	n, err := s.DeliverBundle(short(), newRoots)
	if n != 2 || err == nil || !strings.Contains(err.Error(), "2 of 2 Workload API streams") {
		t.Fatalf("DeliverBundle with two streams on the old bundle = %d, %v", n, err)
	}

	done := make(chan error, 1)
	go func() {
		_, err := s.DeliverBundle(context.Background(), newRoots)
		done <- err
	}()
	// A stream that read the new bundle but has not sent it yet still
	// holds the old one.
	s.record(streamA, func(b *streamBundles) { b.read = newRoots })
	s.record(streamB, func(b *streamBundles) { b.read = newRoots })
	s.Sent(streamB, bundles(newRoots))
	select {
	case err := <-done:
		t.Fatalf("DeliverBundle returned %v while a stream had not sent the new bundle", err)
	case <-time.After(20 * time.Millisecond):
	}
	s.Sent(streamA, bundles(newRoots))
	if err := recv(t, done, "DeliverBundle once both streams sent the bundle"); err != nil {
		t.Fatal(err)
	}

	// A stream that ended is forgotten.
	s.Sent(streamA, bundles(oldRoots))
	endA()
	eventually(t, "the ended stream is forgotten", func() bool {
		behind, total := s.behind(newRoots)
		return behind == 0 && total == 1
	})
}

// fakeBundleStream is the agent's end of WatchBundle: the test sends
// bundles on in and reads acks from acks.
type fakeBundleStream struct {
	grpc.ClientStream
	ctx  context.Context
	in   chan *issuerv1.Bundle
	acks chan string
}

func (s *fakeBundleStream) Recv() (*issuerv1.Bundle, error) {
	select {
	case b := <-s.in:
		return b, nil
	case <-s.ctx.Done():
		return nil, io.EOF
	}
}

func (s *fakeBundleStream) Send(a *issuerv1.BundleAck) error {
	s.acks <- a.GetVersion()
	return nil
}

func (s *fakeBundleStream) Header() (metadata.MD, error) { return nil, nil }
func (s *fakeBundleStream) CloseSend() error             { return nil }

type fakeBundleClient struct {
	issuerv1.IssuerClient
	stream *fakeBundleStream
}

func (c *fakeBundleClient) WatchBundle(ctx context.Context, _ ...grpc.CallOption) (grpc.BidiStreamingClient[issuerv1.BundleAck, issuerv1.Bundle], error) {
	c.stream.ctx = ctx
	return c.stream, nil
}

type fakeIssuerSource struct{ client *fakeBundleClient }

func (s fakeIssuerSource) Client() (issuerv1.IssuerClient, <-chan struct{}, error) {
	return s.client, make(chan struct{}), nil
}

// fakeTarget is a BundleTarget that reports each call and fails while err
// is set.
type fakeTarget struct {
	mu    sync.Mutex
	err   error
	calls chan []*x509.Certificate
}

func (f *fakeTarget) DeliverBundle(_ context.Context, roots []*x509.Certificate) (int, error) {
	f.mu.Lock()
	err := f.err
	f.mu.Unlock()
	f.calls <- roots
	if err != nil {
		return 1, err
	}
	return 0, nil
}

func (f *fakeTarget) fail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
}

// TestBundleWatcherAcknowledgesOnceDelivered: the agent acknowledges a
// bundle to the CA only after every target delivered it; a failed delivery
// is retried after a backoff and not acknowledged meanwhile.
func TestBundleWatcherAcknowledgesOnceDelivered(t *testing.T) {
	old, next := testca.New(t), testca.New(t)
	clk := rotate.NewFakeClock(epoch)
	reg := prometheus.NewRegistry()
	w, err := NewBundleWatcher(BundleWatcherConfig{Initial: old.Bundle(), Clock: clk, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	files, streams := &fakeTarget{calls: make(chan []*x509.Certificate, 16)}, &fakeTarget{calls: make(chan []*x509.Certificate, 16)}
	w.DeliverTo(files, streams)
	stream := &fakeBundleStream{in: make(chan *issuerv1.Bundle, 1), acks: make(chan string, 16)}
	run(t, "BundleWatcher.Watch", func(ctx context.Context) error {
		return w.Watch(ctx, fakeIssuerSource{&fakeBundleClient{stream: stream}})
	})
	noAck := func(what string) {
		t.Helper()
		select {
		case v := <-stream.acks:
			t.Fatalf("%s: acknowledged %q", what, v)
		default:
		}
	}

	stream.in <- bundleMsg("v1", old.Root)
	recv(t, files.calls, "delivery of v1 to the files")
	recv(t, streams.calls, "delivery of v1 to the streams")
	if v := recv(t, stream.acks, "the ack of v1"); v != "v1" {
		t.Fatalf("acknowledged %q, want v1", v)
	}

	// v2 cannot be written to a file: no ack, retried after 1s.
	files.fail(errors.New("read-only file system"))
	stream.in <- bundleMsg("v2", old.Root, next.Root)
	if got := recv(t, files.calls, "delivery of v2"); len(got) != 2 {
		t.Fatalf("delivered %d roots, want v2's 2", len(got))
	}
	recv(t, streams.calls, "delivery of v2 to the streams")
	eventually(t, "the pending gauge counts the failed sink", func() bool {
		v, ok := sample(t, reg, "mayfly_agent_bundle_sinks_pending")
		return ok && v == 1
	})
	clk.BlockUntil(1) // the retry timer
	noAck("after a failed delivery")
	files.fail(nil)
	clk.Advance(time.Second)
	recv(t, files.calls, "the retry of v2")
	recv(t, streams.calls, "the retry of v2 to the streams")
	if v := recv(t, stream.acks, "the ack of v2"); v != "v2" {
		t.Fatalf("acknowledged %q, want v2", v)
	}
	if v := mustSample(t, reg, "mayfly_agent_bundle_sinks_pending"); v != 0 {
		t.Errorf("pending gauge %v after the delivery, want 0", v)
	}
}
