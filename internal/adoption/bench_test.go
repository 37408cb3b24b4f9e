package adoption_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/mayfly-pki/mayfly/internal/adoption"
	"github.com/mayfly-pki/mayfly/internal/test/cluster"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

const fleet = 10_000

func nodeNames(n int) adoption.StaticNodes {
	out := make(adoption.StaticNodes, n)
	for i := range out {
		out[i] = fmt.Sprintf("ip-10-0-%d-%d.eu-west-1.compute.internal", i/256, i%256)
	}
	return out
}

// BenchmarkTrackerAck is the cost of one acknowledgement on a replica.
func BenchmarkTrackerAck(b *testing.B) {
	names := nodeNames(fleet)
	tr := adoption.NewTracker()
	b.ResetTimer()
	for i := range b.N {
		tr.Ack(names[i%fleet], fmt.Sprint(i/fleet))
	}
}

// BenchmarkViewPending is the cost of the authority's BundleAcks for a
// 10,000-node fleet on two replicas.
func BenchmarkViewPending(b *testing.B) {
	names := nodeNames(fleet)
	a, other := adoption.NewTracker(), adoption.NewTracker()
	for i, n := range names {
		if i%2 == 0 {
			a.Ack(n, "v2")
		} else {
			other.Ack(n, "v2")
		}
	}
	view := &adoption.View{Nodes: names, Acks: []adoption.AckSource{a, other}}
	b.ResetTimer()
	for range b.N {
		if !view.Adopted("v2") {
			b.Fatal("not adopted")
		}
	}
}

// BenchmarkKubernetesAdoption10k: 10,000 simulated agents, half on each of
// two replicas, acknowledge a new bundle version; one op is the time until
// the leader (replica a) sees every node on it through the other replica's
// ConfigMap. It reports the API writes per bundle change and the size of
// one replica's record. Real time: the publishers coalesce over 2 s.
func BenchmarkKubernetesAdoption10k(b *testing.B) {
	if !cluster.Available(b) {
		return
	}
	c := cluster.Start(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ns := "bench"
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, nsObject(ns), createOpts); err != nil {
		b.Fatal(err)
	}
	var writes writeCounter
	kube, err := kubernetes.NewForConfig(writes.wrap(c.Config))
	if err != nil {
		b.Fatal(err)
	}
	names := nodeNames(fleet)
	ta, tb := adoption.NewTracker(), adoption.NewTracker()
	g := &adoption.Gatherer{Client: c.Client, Namespace: ns, Clock: rotate.RealClock{}}
	go func() { _ = g.Start(ctx) }()
	for _, p := range []*adoption.Publisher{
		{Client: kube, Namespace: ns, Replica: "a", Tracker: ta},
		{Client: kube, Namespace: ns, Replica: "b", Tracker: tb},
	} {
		go func() { _ = p.Start(ctx) }()
	}
	view := &adoption.View{Nodes: names, Acks: []adoption.AckSource{ta, g}}
	b.ResetTimer()
	start := writes.n.Load()
	for i := range b.N {
		v := fmt.Sprintf("version-%d", i)
		t0 := time.Now()
		for j, n := range names {
			if j%2 == 0 {
				ta.Ack(n, v)
			} else {
				tb.Ack(n, v)
			}
		}
		wait.Until(b, "every node acked "+v, time.Minute, 5*time.Millisecond, func(context.Context) (bool, string) {
			return view.Adopted(v), fmt.Sprintf("%d pending", len(view.Pending(v).Nodes))
		})
		b.ReportMetric(float64(time.Since(t0).Milliseconds()), "ms-to-all-acked")
	}
	b.StopTimer()
	b.ReportMetric(float64(writes.n.Load()-start)/float64(b.N), "writes/op")
	acks, _ := tb.Snapshot()
	data, err := adoption.Encode(acks)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(len(data)), "record-bytes")
}
