//go:build linux

package workloadapi

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"

	"github.com/mayfly-pki/mayfly/internal/test/childproc"
	"github.com/mayfly-pki/mayfly/internal/test/grpcserver"
	"github.com/mayfly-pki/mayfly/internal/workloadattest"

	"github.com/mayfly-pki/mayfly/internal/test/testca"
)

// bareServer is the service with nothing but a fixed response: the
// baseline for the cost of our attestation, lookups and bookkeeping.
type bareServer struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	resp *workload.X509SVIDResponse
}

func (b *bareServer) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	if err := stream.Send(b.resp); err != nil {
		return err
	}
	<-stream.Context().Done() // a Workload API stream stays open like ours
	return nil
}

func BenchmarkFetchX509SVID(b *testing.B) {
	// Ours: the agent's real standalone attestation (SO_PEERCRED pinned by a
	// pidfd, /proc/<pid>/exe read, the pidfd re-checked), the identity cached
	// in the source. Bare: the same response, precomputed and pre-encoded as
	// ours is.
	e := newBenchServers(b)
	oursPath := e.serveOurs("mayfly", unixAttestor{uid: syscall.Getuid()})
	barePath := e.serveBare()

	for _, conc := range []int{1, 16} {
		for _, srv := range []struct{ name, path string }{{"mayfly", oursPath}, {"bare", barePath}} {
			b.Run(fmt.Sprintf("%s/c%d", srv.name, conc), func(b *testing.B) {
				benchFetches(b, srv.path, conc)
			})
		}
	}
	// The same at one client, with the client in its own process, as a
	// workload is: the agent's latency without the client's garbage
	// collection in the same heap.
	for _, srv := range []struct{ name, path string }{{"mayfly", oursPath}, {"bare", barePath}} {
		b.Run(srv.name+"/c1-client-process", func(b *testing.B) {
			benchFetchesInChild(b, srv.path)
		})
	}
}

// benchServers serves one cached identity over unix sockets in a
// temporary directory, from mayfly's server and from the bare baseline.
type benchServers struct {
	b      *testing.B
	dir    string
	id     Identity
	source *fakeSource
	bundle map[spiffeid.TrustDomain][]*x509.Certificate
}

func newBenchServers(b *testing.B) *benchServers {
	ca := testca.New(b)
	e := &benchServers{
		b:      b,
		dir:    b.TempDir(),
		id:     issue(b, ca, "spiffe://example.org/ns/default/sa/bench"),
		source: newFakeSource(),
		bundle: map[spiffeid.TrustDomain][]*x509.Certificate{ca.TrustDomain: ca.Bundle()},
	}
	e.source.setBundle(ca.TrustDomain, ca.Bundle())
	e.source.set("bench", e.id)
	return e
}

// serveOurs serves mayfly's server, attesting callers with att, as the
// agent does (peer credentials, limits) on name.sock; it returns the path.
func (e *benchServers) serveOurs(name string, att unixAttestor) string {
	s, err := New(Config{Attestor: att, Source: e.source, Registerer: prometheus.NewRegistry()})
	if err != nil {
		e.b.Fatal(err)
	}
	g := grpc.NewServer(append(s.ServerOptions(), grpc.Creds(workloadattest.NewCredentials()), grpc.UnaryInterceptor(s.UnaryInterceptor()), grpc.StreamInterceptor(s.StreamInterceptor()))...)
	s.Register(g)
	path := filepath.Join(e.dir, name+".sock")
	grpcserver.ServeUnix(e.b, g, path, s.LimitListener)
	return path
}

// serveBare serves the bare server on bare.sock and returns the path.
func (e *benchServers) serveBare() string {
	r, err := buildX509Response([]Identity{e.id}, e.bundle)
	if err != nil {
		e.b.Fatal(err)
	}
	g := grpc.NewServer()
	workload.RegisterSpiffeWorkloadAPIServer(g, &bareServer{resp: r.encoded})
	path := filepath.Join(e.dir, "bare.sock")
	grpcserver.ServeUnix(e.b, g, path, nil)
	return path
}

// benchFetches runs b.N FetchX509SVID calls (a new stream each) over conc
// go-spiffe clients, one connection each, and reports fetches/s and, for
// one client, the p50 and p99 latencies and the garbage collections per
// 1,000 fetches (client and servers share this heap: the p99 at one client
// is where the fetches that met a collection's stop-the-world pauses sit).
func benchFetches(b *testing.B, path string, conc int) {
	ctx := context.Background()
	clients := make([]*workloadapi.Client, conc)
	for i := range clients {
		c, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+path))
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		if _, err := c.FetchX509SVID(ctx); err != nil { // connect and warm up
			b.Fatal(err)
		}
		clients[i] = c
	}
	var lat []time.Duration
	if conc == 1 {
		lat = make([]time.Duration, b.N)
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	gcs := ms.NumGC
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				n := next.Add(1) - 1
				if n >= int64(b.N) {
					return
				}
				t0 := time.Now()
				if _, err := c.FetchX509SVID(ctx); err != nil {
					b.Error(err)
					return
				}
				if lat != nil {
					lat[n] = time.Since(t0)
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "fetches/s")
	if lat != nil {
		slices.Sort(lat)
		b.ReportMetric(float64(lat[len(lat)*50/100].Nanoseconds())/1e3, "p50-µs")
		b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-µs")
		runtime.ReadMemStats(&ms)
		b.ReportMetric(float64(ms.NumGC-gcs)*1000/float64(b.N), "gc/1k-fetches")
	}
}

// unixAttestor is the agent's standalone attestation (internal/workloadattest) with
// a one-entry registration: the caller's uid.
type unixAttestor struct {
	uid int
	// readPath reads the executable as with a path registration.
	readPath bool
}

func (a unixAttestor) Attest(ctx context.Context) (Caller, error) {
	p, ok := workloadattest.PeerFromContext(ctx)
	if !ok {
		return nil, errors.New("no peer credentials")
	}
	// The registration selects by uid alone, so the agent does not read
	// the executable (agent.Registrations.UsesPath).
	sel, err := workloadattest.UnixAttestor{PathSelectors: func() bool { return a.readPath }}.Attest(ctx, p)
	if err != nil {
		return nil, err
	}
	if sel.UID == nil || *sel.UID != a.uid {
		return nil, errors.New("no registration for this uid")
	}
	return "bench", nil
}

// benchFetchesInChild runs b.N fetches from a child process (this test
// binary, running TestFetchClientProcess) and reports what it measured.
func benchFetchesInChild(b *testing.B, path string) {
	out, err := childproc.Command("TestFetchClientProcess", "MAYFLY_FETCH_SOCKET="+path, "MAYFLY_FETCH_N="+strconv.Itoa(b.N)).CombinedOutput()
	if err != nil {
		b.Fatalf("client process: %v\n%s", err, out)
	}
	var n int
	var secs float64
	var p50, p99 int64
	for _, line := range strings.Split(string(out), "\n") {
		if _, err := fmt.Sscanf(strings.TrimSpace(line), "RESULT %d %g %d %d", &n, &secs, &p50, &p99); err == nil {
			b.ReportMetric(float64(n)/secs, "fetches/s")
			b.ReportMetric(float64(p50), "p50-µs")
			b.ReportMetric(float64(p99), "p99-µs")
			return
		}
	}
	b.Fatalf("client process printed no result:\n%s", out)
}

// TestFetchClientProcess is the client half of benchFetchesInChild; it runs
// only as that child process.
func TestFetchClientProcess(t *testing.T) {
	path := childproc.Getenv(t, "MAYFLY_FETCH_SOCKET", "BenchmarkFetchX509SVID/*/c1-client-process")
	n, err := strconv.Atoi(os.Getenv("MAYFLY_FETCH_N"))
	if err != nil || n < 1 {
		t.Fatalf("MAYFLY_FETCH_N: %v", err)
	}
	ctx := context.Background()
	c, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+path))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.FetchX509SVID(ctx); err != nil {
		t.Fatal(err)
	}
	lat := make([]time.Duration, n)
	start := time.Now()
	for i := range lat {
		t0 := time.Now()
		if _, err := c.FetchX509SVID(ctx); err != nil {
			t.Fatal(err)
		}
		lat[i] = time.Since(t0)
	}
	elapsed := time.Since(start)
	slices.Sort(lat)
	fmt.Printf("RESULT %d %g %d %d\n", n, elapsed.Seconds(), lat[n/2].Microseconds(), lat[n*99/100].Microseconds())
}
