package csi

import (
	"context"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
)

// TestPublishLatency measures NodePublishVolume until the files are written,
// for 200 volumes, with an identity source that answers at once: the cost of
// the driver itself (validation, state file, atomic write with fsyncs).
// Run with MAYFLY_PERF=1.
func TestPublishLatency(t *testing.T) {
	if os.Getenv("MAYFLY_PERF") != "1" {
		t.Skip("a latency measurement; run with MAYFLY_PERF=1")
	}
	const volumes = 200
	e := newIssuedEnv(t)
	lat := make([]time.Duration, 0, volumes)
	for i := range volumes {
		req := publishRequest(fmt.Sprintf("csi-%04d", i), e.target(fmt.Sprintf("pod-%04d", i)), podContext(nil))
		start := time.Now()
		if _, err := e.d.NodePublishVolume(context.Background(), req); err != nil {
			t.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	pct := func(p float64) time.Duration { return lat[int(p*float64(len(lat)-1))] }
	t.Logf("NodePublishVolume to files written, %d volumes: p50 %s, p99 %s, max %s", volumes, pct(0.50), pct(0.99), lat[len(lat)-1])
	if n := len(e.d.Volumes()); n != volumes {
		t.Fatalf("%d volumes published, want %d", n, volumes)
	}
}

// BenchmarkPublish publishes and unpublishes one volume per iteration
// (files mode, identity source answering at once).
func BenchmarkPublish(b *testing.B) {
	e := newEnv(b)
	e.ids.push(b, e.creds.issue())
	target := e.target("pod-a")
	ctx := context.Background()
	i := 0
	for b.Loop() {
		id := fmt.Sprintf("csi-%d", i)
		i++
		if _, err := e.d.NodePublishVolume(ctx, publishRequest(id, target, podContext(nil))); err != nil {
			b.Fatal(err)
		}
		if _, err := e.d.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
			b.Fatal(err)
		}
	}
}
