package workloadapi

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/mayfly-pki/mayfly/internal/test/testca"
)

// fakeAttestor returns a fixed caller or error and counts its calls.
type fakeAttestor struct {
	caller Caller
	err    error
	calls  atomic.Int64
}

func (a *fakeAttestor) Attest(context.Context) (Caller, error) {
	a.calls.Add(1)
	return a.caller, a.err
}

// fakeSource holds identities by caller (a string) and one bundle set;
// notify signals every subscriber, as the agent's cache does on rotation.
type fakeSource struct {
	mu      sync.Mutex
	ids     map[Caller][]Identity
	bundles map[spiffeid.TrustDomain][]*x509.Certificate
	err     error
	subs    map[int]chan struct{}
	nextSub int
	// cancelled receives when a subscription is cancelled.
	cancelled chan struct{}
}

func newFakeSource() *fakeSource {
	return &fakeSource{
		ids:       map[Caller][]Identity{},
		bundles:   map[spiffeid.TrustDomain][]*x509.Certificate{},
		subs:      map[int]chan struct{}{},
		cancelled: make(chan struct{}, 1024),
	}
}

func (f *fakeSource) Identities(_ context.Context, c Caller) ([]Identity, map[spiffeid.TrustDomain][]*x509.Certificate, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ids[c], f.bundles, f.err
}

func (f *fakeSource) Subscribe(Caller) (<-chan struct{}, func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ch := make(chan struct{}, 1)
	n := f.nextSub
	f.nextSub++
	f.subs[n] = ch
	return ch, func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		delete(f.subs, n)
		select {
		case f.cancelled <- struct{}{}:
		default:
		}
	}
}

// set replaces the identities of c (no signal).
func (f *fakeSource) set(c Caller, ids ...Identity) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ids[c] = ids
}

// setBundle replaces the roots of td with a new map (snapshot semantics).
func (f *fakeSource) setBundle(td spiffeid.TrustDomain, roots []*x509.Certificate) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b := make(map[spiffeid.TrustDomain][]*x509.Certificate, len(f.bundles)+1)
	for k, v := range f.bundles {
		b[k] = v
	}
	b[td] = roots
	f.bundles = b
}

func (f *fakeSource) setErr(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
}

// notify signals every subscriber without blocking.
func (f *fakeSource) notify() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, ch := range f.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// issue returns an identity for id issued by ca.
func issue(t testing.TB, ca *testca.CA, id string) Identity {
	t.Helper()
	sid := spiffeid.RequireFromString(id)
	chain, key := ca.IssueWorkload(t, sid, time.Hour)
	return Identity{ID: sid, Chain: chain, Key: key}
}

// testEnv is a Server on a unix socket in a temp dir.
type testEnv struct {
	path     string
	server   *Server
	attestor *fakeAttestor
	source   *fakeSource
	reg      *prometheus.Registry
	ca       *testca.CA
}

// startServer serves a Server with cfg (a fake attestor returning caller
// "a" and a fake source holding the CA's bundle unless set) on a socket.
func startServer(t testing.TB, cfg Config) *testEnv {
	t.Helper()
	env := &testEnv{path: filepath.Join(t.TempDir(), "api.sock"), reg: prometheus.NewRegistry(), ca: testca.New(t)}
	if cfg.Attestor == nil {
		env.attestor = &fakeAttestor{caller: "a"}
		cfg.Attestor = env.attestor
	}
	if cfg.Source == nil {
		env.source = newFakeSource()
		env.source.setBundle(env.ca.TrustDomain, env.ca.Bundle())
		cfg.Source = env.source
	}
	if cfg.Registerer == nil {
		cfg.Registerer = env.reg
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	env.server = s
	serve(t, s, env.path)
	return env
}

// serve serves s, with its limits, on a new socket at each path until the
// test ends.
func serve(t testing.TB, s *Server, paths ...string) {
	t.Helper()
	g := grpc.NewServer(append(s.ServerOptions(), grpc.UnaryInterceptor(s.UnaryInterceptor()), grpc.StreamInterceptor(s.StreamInterceptor()))...)
	s.Register(g)
	for _, p := range paths {
		l, err := Listen(p, 0, 0)
		if err != nil {
			t.Fatalf("Listen: %v", err)
		}
		l = s.LimitListener(l)
		go func(l net.Listener) {
			if err := g.Serve(l); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				t.Errorf("Serve: %v", err)
			}
		}(l)
	}
	t.Cleanup(g.Stop)
}

// rawClient is a plain gRPC client of the service, which sends the header
// only when asked to.
func rawClient(t testing.TB, path string) workload.SpiffeWorkloadAPIClient {
	t.Helper()
	cc, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("grpc.NewClient: %v", err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return workload.NewSpiffeWorkloadAPIClient(cc)
}

func withHeader(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, SecurityHeader, "true")
}

func testContext(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// logBuffer collects log lines for assertions.
type logBuffer struct {
	mu    sync.Mutex
	lines []string
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.lines = append(b.lines, string(p))
	return len(p), nil
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := ""
	for _, l := range b.lines {
		out += l
	}
	return out
}

func (b *logBuffer) logger() *slog.Logger { return slog.New(slog.NewTextHandler(b, nil)) }
