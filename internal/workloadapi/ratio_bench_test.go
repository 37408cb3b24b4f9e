//go:build linux

package workloadapi

import (
	"context"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/mayfly-pki/mayfly/internal/test/interleave"
)

// BenchmarkFetchX509SVIDRatio is BenchmarkFetchX509SVID's c1 comparison
// in alternating rounds: one go-spiffe client fetches from mayfly's
// server (uid registration: the executable is not read), one from the bare
// server and one from mayfly's server with a path registration, 25
// fetches at a time each, b.N fetches each. A busy machine weighs on both alike, so the ratios
// (mayfly/bare for fetches/s, p50 and p99) hold where the absolute figures
// of two sequential sub-benchmarks do not.
func BenchmarkFetchX509SVIDRatio(b *testing.B) {
	e := newBenchServers(b)
	oursPath := e.serveOurs("mayfly", unixAttestor{uid: syscall.Getuid()})
	// The same with a registration that selects by path: the executable
	// is read on every stream.
	pathPath := e.serveOurs("mayfly-path", unixAttestor{uid: syscall.Getuid(), readPath: true})
	barePath := e.serveBare()

	ctx := context.Background()
	type side struct {
		name   string
		client *workloadapi.Client
		lat    []time.Duration
		wall   time.Duration
	}
	sides := []*side{{name: "mayfly"}, {name: "bare"}, {name: "mayfly-path"}}
	for i, path := range []string{oursPath, barePath, pathPath} {
		c, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+path))
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		if _, err := c.FetchX509SVID(ctx); err != nil {
			b.Fatal(err)
		}
		sides[i].client = c
		sides[i].lat = make([]time.Duration, 0, b.N)
	}
	const round = 25
	b.ReportAllocs()
	b.ResetTimer()
	interleave.Rounds(b.N, round, len(sides), func(j, n int) {
		sd := sides[j]
		start := time.Now()
		for range n {
			t0 := time.Now()
			if _, err := sd.client.FetchX509SVID(ctx); err != nil {
				b.Fatal(err)
			}
			sd.lat = append(sd.lat, time.Since(t0))
		}
		sd.wall += time.Since(start)
	})
	b.StopTimer()
	pct := func(lat []time.Duration, p int) float64 { return float64(lat[len(lat)*p/100].Nanoseconds()) / 1e3 }
	for _, sd := range sides {
		slices.Sort(sd.lat)
	}
	ours_, bare_, withPath := sides[0], sides[1], sides[2]
	for _, sd := range sides {
		b.ReportMetric(float64(len(sd.lat))/sd.wall.Seconds(), sd.name+"-fetches/s")
		b.ReportMetric(pct(sd.lat, 50), sd.name+"-p50-µs")
		b.ReportMetric(pct(sd.lat, 99), sd.name+"-p99-µs")
	}
	b.ReportMetric(bare_.wall.Seconds()/ours_.wall.Seconds(), "fetches/s-mayfly/bare")
	b.ReportMetric(pct(ours_.lat, 99)/pct(bare_.lat, 99), "p99-mayfly/bare")
	b.ReportMetric(bare_.wall.Seconds()/withPath.wall.Seconds(), "fetches/s-mayfly-path/bare")
	b.ReportMetric(pct(withPath.lat, 99)/pct(bare_.lat, 99), "p99-mayfly-path/bare")
}
