//go:build linux

package agent

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	gsworkload "github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"

	"github.com/mayfly-pki/mayfly/internal/test/grpcserver"
	"github.com/mayfly-pki/mayfly/internal/workloadapi"
	"github.com/mayfly-pki/mayfly/internal/workloadattest"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// oneSpec entitles every caller to one standalone identity.
type oneSpec struct{ spec Spec }

func (o oneSpec) Hold(workloadattest.Selectors) ([]Spec, func()) { return []Spec{o.spec}, func() {} }

type staticJWTKeys map[string]crypto.PublicKey

func (k staticJWTKeys) JWTKeys() map[string]crypto.PublicKey { return k }

// unixCallers attests callers as the agent does standalone (peer
// credentials pinned by a pidfd).
type unixCallers struct{}

func (unixCallers) Attest(ctx context.Context) (workloadapi.Caller, error) {
	p, ok := workloadattest.PeerFromContext(ctx)
	if !ok {
		return nil, errors.New("no peer credentials")
	}
	return workloadattest.UnixAttestor{}.Attest(ctx, p)
}

// bareJWT answers FetchJWTSVID with a fixed response: the baseline, as
// workloadapi's bareServer is for FetchX509SVID.
type bareJWT struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	resp *workload.JWTSVIDResponse
}

func (b *bareJWT) FetchJWTSVID(context.Context, *workload.JWTSVIDRequest) (*workload.JWTSVIDResponse, error) {
	return b.resp, nil
}

// BenchmarkFetchJWTSVID: cached FetchJWTSVID through the agent's Workload
// API (real attestation over a unix socket, the JWT cache) against a bare
// server answering the same token, at 1 and 16 go-spiffe clients.
// Report: fetches/s of each; the ratio mayfly/bare is the figure.
func BenchmarkFetchJWTSVID(b *testing.B) {
	oursPath, barePath := serveJWTBench(b)
	for _, conc := range []int{1, 16} {
		for _, srv := range []struct{ name, path string }{{"mayfly", oursPath}, {"bare", barePath}} {
			b.Run(fmt.Sprintf("%s/c%d", srv.name, conc), func(b *testing.B) { benchJWTFetches(b, srv.path, conc) })
		}
	}
}

// serveJWTBench serves one cached JWT-SVID (audience "api") from the
// agent's Workload API (real attestation over a unix socket, the JWT cache)
// and from the bare server answering the same token; it returns their
// socket paths.
func serveJWTBench(b *testing.B) (oursPath, barePath string) {
	clock := rotate.NewFakeClock(time.Now()) // go-spiffe checks exp on the wall clock; the cache stays before its half-life
	ca := newFakeJWTCA(b, clock)
	ca.ttl = time.Hour
	cache, err := NewJWTCache(ca, clock, nil)
	if err != nil {
		b.Fatal(err)
	}
	spec := Spec{Key: "bench", SpiffeID: "spiffe://example.org/bench"}
	td := spiffeid.RequireTrustDomainFromString("example.org")
	src := &WorkloadSource{TrustDomain: td, Entitlements: oneSpec{spec}, JWT: cache, JWTKeys: staticJWTKeys{}}
	s, err := workloadapi.New(workloadapi.Config{Attestor: unixCallers{}, Source: src, Registerer: prometheus.NewRegistry(), Now: clock.Now})
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	ours := grpc.NewServer(append(s.ServerOptions(), grpc.Creds(workloadattest.NewCredentials()),
		grpc.UnaryInterceptor(s.UnaryInterceptor()), grpc.StreamInterceptor(s.StreamInterceptor()))...)
	s.Register(ours)
	oursPath = filepath.Join(dir, "mayfly.sock")
	grpcserver.ServeUnix(b, ours, oursPath, s.LimitListener)

	_, tok, err := cache.Fetch(b.Context(), spec, []string{"api"})
	if err != nil {
		b.Fatal(err)
	}
	bare := grpc.NewServer()
	workload.RegisterSpiffeWorkloadAPIServer(bare, &bareJWT{resp: &workload.JWTSVIDResponse{Svids: []*workload.JWTSVID{{SpiffeId: spec.SpiffeID, Svid: tok}}}})
	barePath = filepath.Join(dir, "bare.sock")
	grpcserver.ServeUnix(b, bare, barePath, nil)
	return oursPath, barePath
}

// jwtClient is a go-spiffe client of the Workload API on path, connected
// and past its first JWT-SVID fetch (audience "api"); closed at cleanup.
func jwtClient(b *testing.B, path string) *gsworkload.Client {
	b.Helper()
	ctx := context.Background()
	c, err := gsworkload.New(ctx, gsworkload.WithAddr("unix://"+path))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Close() })
	if _, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "api"}); err != nil {
		b.Fatal(err)
	}
	return c
}

func benchJWTFetches(b *testing.B, path string, conc int) {
	ctx := context.Background()
	params := jwtsvid.Params{Audience: "api"}
	clients := make([]*gsworkload.Client, conc)
	for i := range clients {
		clients[i] = jwtClient(b, path)
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for _, c := range clients {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) {
				if _, err := c.FetchJWTSVID(ctx, params); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "fetches/s")
}

// BenchmarkFetchJWTSVIDRatio alternates rounds of 50 cached fetches from
// the agent's Workload API and from the bare server (one client each), so
// that a shared machine's load falls on both alike, and reports
// mayfly/bare fetches/s.
func BenchmarkFetchJWTSVIDRatio(b *testing.B) {
	oursPath, barePath := serveJWTBench(b)
	ctx := context.Background()
	params := jwtsvid.Params{Audience: "api"}
	clients := [2]*gsworkload.Client{jwtClient(b, oursPath), jwtClient(b, barePath)}
	var spent [2]time.Duration
	for b.Loop() {
		for i, c := range clients {
			t0 := time.Now()
			for range 50 {
				if _, err := c.FetchJWTSVID(ctx, params); err != nil {
					b.Fatal(err)
				}
			}
			spent[i] += time.Since(t0)
		}
	}
	b.ReportMetric(float64(50*b.N)/spent[0].Seconds(), "mayfly-fetches/s")
	b.ReportMetric(float64(50*b.N)/spent[1].Seconds(), "bare-fetches/s")
	b.ReportMetric(spent[1].Seconds()/spent[0].Seconds(), "ratio")
}
