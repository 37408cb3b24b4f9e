//go:build linux

package workloadapi

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
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
	ca := testca.New(b)
	id := issue(b, ca, "spiffe://example.org/ns/default/sa/bench")
	bundles := map[spiffeid.TrustDomain][]*x509.Certificate{ca.TrustDomain: ca.Bundle()}
	dir := b.TempDir()

	// Ours: the agent's real standalone attestation (SO_PEERCRED pinned by a
	// pidfd, /proc/<pid>/exe read, the pidfd re-checked), the identity cached
	// in the source.
	source := newFakeSource()
	source.setBundle(ca.TrustDomain, ca.Bundle())
	source.set("bench", id)
	s, err := New(Config{
		Attestor:   unixAttestor{uid: syscall.Getuid()},
		Source:     source,
		Registerer: prometheus.NewRegistry(),
	})
	if err != nil {
		b.Fatal(err)
	}
	ours := grpc.NewServer(append(s.ServerOptions(), grpc.Creds(workloadattest.NewCredentials()), grpc.UnaryInterceptor(s.UnaryInterceptor()), grpc.StreamInterceptor(s.StreamInterceptor()))...)
	s.Register(ours)
	oursPath := filepath.Join(dir, "mayfly.sock")
	startBench(b, ours, oursPath, s.LimitListener)

	// Bare: the same response, precomputed and pre-encoded as ours is.
	r, err := buildX509Response([]Identity{id}, bundles)
	if err != nil {
		b.Fatal(err)
	}
	bare := grpc.NewServer()
	workload.RegisterSpiffeWorkloadAPIServer(bare, &bareServer{resp: r.encoded})
	barePath := filepath.Join(dir, "bare.sock")
	startBench(b, bare, barePath, nil)

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

// startBench serves g on path, the listener wrapped by limit if not nil.
func startBench(b *testing.B, g *grpc.Server, path string, limit func(net.Listener) net.Listener) {
	b.Helper()
	l, err := Listen(path, 0, 0)
	if err != nil {
		b.Fatal(err)
	}
	if limit != nil {
		l = limit(l)
	}
	go func() { _ = g.Serve(l) }()
	b.Cleanup(g.Stop)
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
	cmd := exec.Command(os.Args[0], "-test.run=^TestFetchClientProcess$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), "MAYFLY_FETCH_SOCKET="+path, "MAYFLY_FETCH_N="+strconv.Itoa(b.N))
	out, err := cmd.CombinedOutput()
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
	path := os.Getenv("MAYFLY_FETCH_SOCKET")
	if path == "" {
		t.Skip("helper process of BenchmarkFetchX509SVID/*/c1-client-process; runs only as its child")
	}
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
