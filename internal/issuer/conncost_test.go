package issuer_test

import (
	"bufio"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/issuer"
	"github.com/mayfly-pki/mayfly/internal/issuerclient"
	"github.com/mayfly-pki/mayfly/internal/test/childproc"
	"github.com/mayfly-pki/mayfly/internal/test/fakeauthority"
	"github.com/mayfly-pki/mayfly/internal/test/openfiles"
	"github.com/mayfly-pki/mayfly/internal/test/testca"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// BenchmarkConnCost measures what a connected agent costs the CA: N agents
// connect over real gRPC and TLS on loopback with the issuer client's dial
// options, each holding a WatchBundle stream, as the agents of a fleet do.
// The agents run in a child process (this test binary again, running
// TestConnCostAgents), so that this process holds the CA's side only.
// Per variant (server options x client options) it reports, per
// connected agent:
//
//   - heap-B/agent, stack-B/agent, goroutines/agent: the CA's heap in use
//     and goroutine stacks after a collection, and its goroutines, above
//     what it held before the agents came;
//   - client-heap-B/agent: the same in the agents' process;
//   - idle-CPU-us/agent/s: the CA's CPU time (getrusage) while the agents
//     sit idle for MAYFLY_CONNCOST_IDLE (default 20s), per agent and second;
//   - push-CPU-us/agent, push-ms: a new bundle published until every agent
//     acknowledged it: the CA's CPU time per agent, and the wall time;
//   - call-CPU-us: one SignWorkloads call of one certificate per agent, the
//     CA's CPU time per call.
//
// MAYFLY_CONNCOST_PROFILES names a directory for the CA's heap profile of
// each variant with every agent connected (heap-<variant>.pb.gz).
//
// The push and the calls are repeated (connCostPushes, connCostCalls) and
// averaged. MAYFLY_CONNCOST_AGENTS (default 1000) sets N;
// MAYFLY_CONNCOST_VARIANTS (comma-separated names) a subset of the
// variants; MAYFLY_CONNCOST_ROUNDS (default 1) runs the variants in turn
// that many times. Run with -benchtime=1x. The table at the end gives the
// means over the rounds and their ratios to the first variant (main's
// options), measured in the same run.
func BenchmarkConnCost(b *testing.B) {
	n := envInt(b, "MAYFLY_CONNCOST_AGENTS", 1000)
	idle := 20 * time.Second
	if v := os.Getenv("MAYFLY_CONNCOST_IDLE"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			b.Fatalf("MAYFLY_CONNCOST_IDLE: %v", err)
		}
		idle = d
	}
	openfiles.Raise(b, uint64(2*n+256), strconv.Itoa(n)+" agents and the CA") // a connection each on both sides; the child inherits the limit
	only := map[string]bool{}
	for _, v := range strings.Split(os.Getenv("MAYFLY_CONNCOST_VARIANTS"), ",") {
		if v != "" {
			only[v] = true
		}
	}
	rounds := envInt(b, "MAYFLY_CONNCOST_ROUNDS", 1)
	sums := map[string]connCost{}
	runs := map[string]int{}
	var order []string
	for round := range rounds {
		for _, v := range connCostVariants() {
			if len(only) > 0 && !only[v.name] {
				continue
			}
			b.Run(v.name, func(b *testing.B) {
				var sum connCost
				for range b.N {
					sum = sum.add(measureConnCost(b, v, n, idle))
				}
				sum.div(float64(b.N)).report(b)
				sums[v.name] = sums[v.name].add(sum)
				runs[v.name] += b.N
			})
			if round == 0 {
				order = append(order, v.name)
			}
		}
	}
	means := map[string]connCost{}
	for name, sum := range sums {
		means[name] = sum.div(float64(runs[name]))
	}
	if len(order) > 1 {
		b.Log("\n" + connCostTable(order, means))
	}
}

// connCostVariant is one combination of the CA's server options and the
// agents' client options.
type connCostVariant struct {
	name   string
	server func() []grpc.ServerOption // beside grpc.Creds
	client string                     // connCostClients
	// keepalive is the agents' keepalive time; 0: their dial options'.
	keepalive time.Duration
	// encodeEachPush encodes the pushed bundle for each stream, as main
	// did (issuer.SetEncodeEachPush).
	encodeEachPush bool
}

// mainServerOptions are the issuer server's options before this benchmark
// (internal/app/caapp at the base of issue #16's fourth round).
func mainServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(8 << 20),
		grpc.ReadBufferSize(0),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time: 2 * time.Minute, Timeout: 20 * time.Second,
			MaxConnectionAge: 30 * time.Minute, MaxConnectionAgeGrace: time.Minute,
		}),
	}
}

func withServer(base func() []grpc.ServerOption, more ...grpc.ServerOption) func() []grpc.ServerOption {
	return func() []grpc.ServerOption { return append(base(), more...) }
}

func connCostVariants() []connCostVariant {
	const window = 1 << 20
	// 15 s: pings every 10 s meet the CA's enforcement (MinTime 10 s) at
	// its edge, and a ping seen early closes the connection (too_many_pings).
	serverKeepalive15s := grpc.KeepaliveParams(keepalive.ServerParameters{
		Time: 15 * time.Second, Timeout: 20 * time.Second,
		MaxConnectionAge: 30 * time.Minute, MaxConnectionAgeGrace: time.Minute,
	})
	return []connCostVariant{
		{name: "main", server: mainServerOptions, client: "main", encodeEachPush: true},
		{name: "current", server: issuer.ServerOptions, client: "dial"},
		{name: "server-no-shared-write-buffer", server: withServer(mainServerOptions, grpc.SharedWriteBuffer(false)), client: "main", encodeEachPush: true}, //nolint:staticcheck // measures what gRPC's default does
		{name: "server-write-buffer-0", server: withServer(mainServerOptions, grpc.WriteBufferSize(0)), client: "main", encodeEachPush: true},
		{name: "static-windows", server: withServer(mainServerOptions, grpc.StaticStreamWindowSize(window), grpc.StaticConnWindowSize(window)), client: "main+static-windows", encodeEachPush: true},
		{name: "client-read-buffer-0", server: mainServerOptions, client: "main+read-buffer-0", encodeEachPush: true},
		{name: "push-encoded-once", server: mainServerOptions, client: "main"},
		{name: "main-keepalive-15s", server: mainServerOptions, client: "main", keepalive: 15 * time.Second, encodeEachPush: true},
		{name: "current-keepalive-15s", server: issuer.ServerOptions, client: "dial", keepalive: 15 * time.Second},
		{name: "current-both-keepalive-15s", server: withServer(issuer.ServerOptions, serverKeepalive15s), client: "dial", keepalive: 15 * time.Second},
	}
}

// connCostClients are the agents' dial options by name: "dial" is
// issuerclient.Dial as it is; "main" the options it had before (a copy).
func connCostClients(name string, c issuerclient.Config, keepaliveTime time.Duration) (*grpc.ClientConn, error) {
	base, more, _ := strings.Cut(name, "+")
	var extra []grpc.DialOption
	switch more {
	case "":
	case "static-windows":
		extra = append(extra, grpc.WithStaticStreamWindowSize(1<<20), grpc.WithStaticConnWindowSize(1<<20))
	case "read-buffer-0":
		extra = append(extra, grpc.WithReadBufferSize(0))
	default:
		return nil, fmt.Errorf("unknown client option set %q", more)
	}
	if keepaliveTime != 0 {
		extra = append(extra, grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: keepaliveTime, Timeout: 10 * time.Second, PermitWithoutStream: true}))
	}
	switch base {
	case "dial":
		conn, _, err := issuerclient.Dial(c, extra...)
		return conn, err
	case "main":
		if c.Sessions == nil {
			c.Sessions = tls.NewLRUClientSessionCache(4)
		}
		opts := append([]grpc.DialOption{
			grpc.WithTransportCredentials(credentials.NewTLS(c.TLSConfig())),
			grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 2 * time.Minute, Timeout: 10 * time.Second, PermitWithoutStream: true}),
			grpc.WithConnectParams(grpc.ConnectParams{
				Backoff:           backoff.Config{BaseDelay: 200 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 3 * time.Second},
				MinConnectTimeout: 20 * time.Second,
			}),
		}, extra...)
		return grpc.NewClient(c.Address, opts...)
	}
	return nil, fmt.Errorf("unknown client %q", base)
}

// Pushes and call rounds per measurement, averaged.
const (
	connCostPushes = 5
	connCostCalls  = 3
)

// connCost is what one variant measured.
type connCost struct {
	heap, stack, goroutines float64 // CA, per agent
	clientHeap              float64 // agents' process, per agent
	idleCPU                 float64 // CA µs per agent and second
	pushCPU                 float64 // CA µs per agent
	pushMillis              float64
	callCPU                 float64 // CA µs per call
}

func (c connCost) add(o connCost) connCost {
	return connCost{c.heap + o.heap, c.stack + o.stack, c.goroutines + o.goroutines, c.clientHeap + o.clientHeap,
		c.idleCPU + o.idleCPU, c.pushCPU + o.pushCPU, c.pushMillis + o.pushMillis, c.callCPU + o.callCPU}
}

func (c connCost) div(f float64) connCost {
	return connCost{c.heap / f, c.stack / f, c.goroutines / f, c.clientHeap / f, c.idleCPU / f, c.pushCPU / f, c.pushMillis / f, c.callCPU / f}
}

func (c connCost) report(b *testing.B) {
	b.ReportMetric(c.heap, "heap-B/agent")
	b.ReportMetric(c.stack, "stack-B/agent")
	b.ReportMetric(c.goroutines, "goroutines/agent")
	b.ReportMetric(c.clientHeap, "client-heap-B/agent")
	b.ReportMetric(c.idleCPU, "idle-CPU-us/agent/s")
	b.ReportMetric(c.pushCPU, "push-CPU-us/agent")
	b.ReportMetric(c.pushMillis, "push-ms")
	b.ReportMetric(c.callCPU, "call-CPU-us")
	b.ReportMetric(0, "ns/op")
}

func connCostTable(order []string, r map[string]connCost) string {
	var sb strings.Builder
	base := r[order[0]]
	ratio := func(v, b float64) string {
		if b == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f", v/b)
	}
	fmt.Fprintf(&sb, "| variant | CA heap B/agent | CA stack B/agent | goroutines/agent | agents' heap B/agent | idle CPU µs/agent/s | push CPU µs/agent | push ms | call CPU µs |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, name := range order {
		c := r[name]
		fmt.Fprintf(&sb, "| %s | %.0f (%s) | %.0f (%s) | %.2f | %.0f (%s) | %.2f (%s) | %.1f (%s) | %.0f (%s) | %.0f (%s) |\n", name,
			c.heap, ratio(c.heap, base.heap), c.stack, ratio(c.stack, base.stack), c.goroutines,
			c.clientHeap, ratio(c.clientHeap, base.clientHeap), c.idleCPU, ratio(c.idleCPU, base.idleCPU),
			c.pushCPU, ratio(c.pushCPU, base.pushCPU), c.pushMillis, ratio(c.pushMillis, base.pushMillis),
			c.callCPU, ratio(c.callCPU, base.callCPU))
	}
	return sb.String()
}

// allowAll grants every node the ID it asks for.
type allowAll struct{}

func (allowAll) AuthorizeWorkload(_ context.Context, _ string, req *issuerv1.WorkloadRequest) (issuer.Grant, error) {
	id, err := spiffeid.FromString(req.GetSpiffeId())
	if err != nil {
		return issuer.Grant{}, issuer.Deny(issuerv1.Denial_INVALID_ARGUMENT, "spiffe_id: %v", err)
	}
	return issuer.Grant{ID: id}, nil
}

// measureConnCost serves a CA with v's options, connects n agents of v's
// client in a child process and measures them.
func measureConnCost(b *testing.B, v connCostVariant, n int, idle time.Duration) connCost {
	b.StopTimer()
	tca := testca.New(b)
	src := fakeauthority.New(fakeauthority.Loaded(tca, "v1"), nil)
	srv, err := issuer.New(issuer.Config{
		TrustDomain: tca.TrustDomain, Authority: src, Attestor: fakeAttestor{}, Authorizer: allowAll{},
		ServerDNSNames: []string{"mayfly-ca.mayfly-system.svc"},
		AttestRate:     1e6, AttestBurst: 1e6, AttestPeerRate: 1e6, AttestPeerBurst: 1e6,
		Rand: rand.Reader, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		b.Fatal(err)
	}
	issuer.SetEncodeEachPush(srv, v.encodeEachPush)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	gs := grpc.NewServer(append([]grpc.ServerOption{grpc.Creds(credentials.NewTLS(srv.TLSConfig()))}, v.server()...)...)
	issuerv1.RegisterIssuerServer(gs, srv)
	served := make(chan error, 1)
	go func() { served <- gs.Serve(lis) }()
	defer func() {
		gs.Stop()
		if err := <-served; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			b.Errorf("Serve: %v", err)
		}
	}()

	bundleFile := b.TempDir() + "/bundle.pem"
	if err := os.WriteFile(bundleFile, tca.BundlePEM(), 0o600); err != nil {
		b.Fatal(err)
	}
	cfg, err := json.Marshal(connCostChild{
		Address: lis.Addr().String(), TrustDomain: tca.TrustDomain.Name(), BundleFile: bundleFile,
		Agents: n, Client: v.client, Keepalive: v.keepalive,
	})
	if err != nil {
		b.Fatal(err)
	}
	heap0, stack0, g0 := memAfterGC()

	cmd := childproc.Command("TestConnCostAgents", connCostChildEnv+"="+string(cfg))
	cmd.Stderr = os.Stderr
	child := childproc.Start(b, cmd)
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(child.Stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	defer func() {
		if err := child.Stop(); err != nil {
			b.Errorf("agents' process: %v", err)
		}
	}()
	expect := func(word string) []string {
		b.Helper()
		deadline := time.After(10 * time.Minute)
		for {
			select {
			case l, ok := <-lines:
				if ok && strings.HasPrefix(l, "=== RUN") { // the test binary's own line, run verbose
					continue
				}
				f := strings.Fields(l)
				if !ok || len(f) == 0 || f[0] != word {
					b.Fatalf("agents' process said %q, want %s", l, word)
				}
				return f[1:]
			case <-deadline:
				b.Fatalf("agents' process: no %s within 10 minutes", word)
			}
		}
	}

	var r connCost
	f := expect("ready")
	r.clientHeap = parseFloat(b, f[0])
	wait.Within(b, "every agent holding the first bundle", time.Minute, 10*time.Millisecond, func() bool {
		connected, current := srv.AgentCounts()
		return connected == n && current == n
	})
	heap1, stack1, g1 := memAfterGC()
	if dir := os.Getenv("MAYFLY_CONNCOST_PROFILES"); dir != "" {
		writeHeapProfile(b, dir+"/heap-"+v.name+".pb.gz")
	}
	r.heap = float64(heap1-heap0) / float64(n)
	r.stack = float64(stack1-stack0) / float64(n)
	r.goroutines = float64(g1-g0) / float64(n)

	if idle > 0 {
		cpu0 := processCPU(b)
		time.Sleep(idle) // real time: what the agents' keepalive costs per second
		r.idleCPU = float64((processCPU(b) - cpu0).Microseconds()) / float64(n) / idle.Seconds()
	}

	for i := range connCostPushes {
		cpu0, start := processCPU(b), time.Now()
		src.Set(fakeauthority.Loaded(tca, fmt.Sprintf("v%d", i+2)), nil)
		// Every agent still connected: an agent of this process whose
		// connection failed does not come back (the agents' log says so).
		wait.Within(b, "every agent acknowledging the pushed bundle", 5*time.Minute, time.Millisecond, func() bool {
			connected, current := srv.AgentCounts()
			return current == connected
		})
		r.pushMillis += float64(time.Since(start).Microseconds()) / 1000 / connCostPushes
		r.pushCPU += float64((processCPU(b) - cpu0).Microseconds()) / float64(n) / connCostPushes
	}

	for range connCostCalls {
		cpu0 := processCPU(b)
		if _, err := io.WriteString(child.Stdin, "call\n"); err != nil {
			b.Fatal(err)
		}
		expect("called")
		r.callCPU += float64((processCPU(b) - cpu0).Microseconds()) / float64(n) / connCostCalls
	}
	return r
}

// writeHeapProfile writes the heap profile of the CA's process to path.
func writeHeapProfile(b *testing.B, path string) {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		b.Fatal(err)
	}
}

func memAfterGC() (heap, stack uint64, goroutines int) {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse, ms.StackInuse, runtime.NumGoroutine()
}

func parseFloat(b *testing.B, s string) float64 {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		b.Fatalf("agents' process: %v", err)
	}
	return f
}

func envInt(b *testing.B, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		b.Fatalf("%s=%q: want a positive number", name, v)
	}
	return n
}

// connCostChildEnv carries the agents' process configuration (JSON).
const connCostChildEnv = "MAYFLY_CONNCOST_CHILD"

type connCostChild struct {
	Address, TrustDomain, BundleFile string
	Agents                           int
	Client                           string
	Keepalive                        time.Duration
}

// TestConnCostAgents is the agents' process of BenchmarkConnCost; it runs
// only as that child process.
func TestConnCostAgents(t *testing.T) {
	cfg := childproc.Getenv(t, connCostChildEnv, "BenchmarkConnCost")
	if err := runConnCostAgents(cfg, os.Stdin, os.Stdout); err != nil {
		t.Fatalf("conncost agents: %v", err)
	}
}

// runConnCostAgents is the agents' process of BenchmarkConnCost: it
// attests cfg.Agents agents, connects each on its own connection with a
// WatchBundle stream that acknowledges every bundle, says "ready" with its
// heap per agent, then makes one SignWorkloads call per agent on each
// "call" line of in, until in ends.
func runConnCostAgents(cfgJSON string, in io.Reader, out io.Writer) error {
	var cfg connCostChild
	if err := json.Unmarshal([]byte(cfgJSON), &cfg); err != nil {
		return err
	}
	td, err := spiffeid.TrustDomainFromString(cfg.TrustDomain)
	if err != nil {
		return err
	}
	pemBytes, err := os.ReadFile(cfg.BundleFile)
	if err != nil {
		return err
	}
	roots, err := pki.DecodeCertificates(pemBytes, pki.PEMLimits{})
	if err != nil {
		return err
	}
	ic := issuerclient.Config{Address: cfg.Address, TrustDomain: td, Bundle: func() []*x509.Certificate { return roots }}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// Attest every agent on one connection without client certificate.
	attestConn, err := connCostClients("main", ic, 0)
	if err != nil {
		return err
	}
	certs := make([]*tls.Certificate, cfg.Agents)
	for i := range certs {
		key, csr, err := newKeyAndCSR()
		if err != nil {
			return err
		}
		resp, err := issuerv1.NewIssuerClient(attestConn).AttestAgent(ctx, &issuerv1.AttestAgentRequest{
			Csr: csr, Credential: &issuerv1.AttestAgentRequest_JoinToken{JoinToken: fmt.Sprintf("good-node-%d", i)},
		})
		if err != nil {
			return fmt.Errorf("attesting node-%d: %w", i, err)
		}
		certs[i] = &tls.Certificate{Certificate: resp.GetCertificateChain(), PrivateKey: key}
	}
	_ = attestConn.Close()
	heap0, _, _ := memAfterGC()

	conns := make([]*grpc.ClientConn, cfg.Agents)
	clients := make([]issuerv1.IssuerClient, cfg.Agents)
	var g errgroup.Group
	g.SetLimit(32)
	for i := range conns {
		c := ic
		cert := certs[i]
		c.Certificate = func() *tls.Certificate { return cert }
		conn, err := connCostClients(cfg.Client, c, cfg.Keepalive)
		if err != nil {
			return err
		}
		conns[i], clients[i] = conn, issuerv1.NewIssuerClient(conn)
		first := make(chan error, 1)
		g.Go(func() error {
			go watchAndAck(ctx, clients[i], first)
			return <-first
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	heap1, _, _ := memAfterGC()
	if _, err := fmt.Fprintf(out, "ready %.0f\n", float64(heap1-heap0)/float64(cfg.Agents)); err != nil {
		return err
	}

	sc := bufio.NewScanner(in)
	for sc.Scan() {
		if sc.Text() != "call" {
			return fmt.Errorf("unknown command %q", sc.Text())
		}
		var g errgroup.Group
		g.SetLimit(16)
		for i, c := range clients {
			g.Go(func() error {
				_, csr, err := newKeyAndCSR()
				if err != nil {
					return err
				}
				resp, err := c.SignWorkloads(ctx, &issuerv1.SignWorkloadsRequest{Requests: []*issuerv1.WorkloadRequest{{
					RequestId: "1", Csr: csr, SpiffeId: fmt.Sprintf("spiffe://%s/node-%d/w", td.Name(), i),
				}}})
				if err != nil {
					return err
				}
				if len(resp.GetResults()) != 1 || resp.GetResults()[0].GetIssued() == nil {
					return fmt.Errorf("node-%d: not issued: %v", i, resp.GetResults())
				}
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			return err
		}
		if _, err := fmt.Fprintln(out, "called"); err != nil {
			return err
		}
	}
	cancel()
	for _, conn := range conns {
		_ = conn.Close()
	}
	return sc.Err()
}

// newKeyAndCSR returns a P-256 key and a CSR of it, as an agent makes
// them for its own SVID and for a workload's.
func newKeyAndCSR() (crypto.Signer, []byte, error) {
	key, err := pki.GenerateKey(pki.KeyTypeECDSAP256, rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	csr, err := pki.CreateCSR(key, rand.Reader)
	return key, csr, err
}

// watchAndAck holds a WatchBundle stream of c and acknowledges every
// bundle, reporting the first one (or the stream's failure) on first.
func watchAndAck(ctx context.Context, c issuerv1.IssuerClient, first chan<- error) {
	stream, err := c.WatchBundle(ctx)
	if err != nil {
		first <- err
		return
	}
	reported := false
	for {
		b, err := stream.Recv()
		if err == nil {
			err = stream.Send(&issuerv1.BundleAck{Version: b.GetVersion()})
		}
		if !reported {
			first <- err
			reported = true
		} else if err != nil && ctx.Err() == nil {
			fmt.Fprintln(os.Stderr, "conncost agents: bundle stream ended:", err)
		}
		if err != nil {
			return
		}
	}
}
