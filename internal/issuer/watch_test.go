package issuer_test

import (
	"context"
	"crypto/x509"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding/gzip"

	"github.com/mayfly-pki/mayfly/internal/issuer"
	"github.com/mayfly-pki/mayfly/internal/issuerclient"
	"github.com/mayfly-pki/mayfly/internal/test/fakeauthority"
	"github.com/mayfly-pki/mayfly/internal/test/testca"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
)

const (
	gaugeConnected = "mayfly_ca_agents_connected"
	gaugeCurrent   = "mayfly_ca_agents_with_current_bundle"
)

func recvBundle(t *testing.T, stream issuerv1.Issuer_WatchBundleClient) (string, []*x509.Certificate) {
	t.Helper()
	b, err := stream.Recv()
	if err != nil {
		t.Fatalf("Recv: %v", err)
	}
	roots, err := issuerclient.ParseBundle(b)
	if err != nil {
		t.Fatal(err)
	}
	return b.GetVersion(), roots
}

// watching opens a WatchBundle stream of c on ctx and reads the bundle
// sent on connect, failing the test if either step fails.
func watching(t *testing.T, ctx context.Context, c issuerv1.IssuerClient) issuerv1.Issuer_WatchBundleClient {
	t.Helper()
	s, err := c.WatchBundle(ctx)
	if err != nil {
		t.Fatal(err)
	}
	recvBundle(t, s)
	return s
}

// firstBundle opens a WatchBundle stream of c and reads the bundle sent
// on connect; it returns the error of either step.
func firstBundle(ctx context.Context, c issuerv1.IssuerClient) error {
	stream, err := c.WatchBundle(ctx)
	if err != nil {
		return err
	}
	_, err = stream.Recv()
	return err
}

func (h *harness) waitGauges(t *testing.T, connected, current float64) {
	t.Helper()
	eventually(t, "gauges", func() bool {
		return h.gauge(gaugeConnected) == connected && h.gauge(gaugeCurrent) == current
	})
}

func TestWatchBundle(t *testing.T) {
	h := newHarness(t)
	other := testca.New(t, testca.WithClock(h.clock.Now))
	agent := h.agent("node-a")
	streamCtx, cancel := context.WithCancel(ctx(t))
	defer cancel()
	stream, err := agent.WatchBundle(streamCtx)
	if err != nil {
		t.Fatal(err)
	}
	// ack acknowledges version on the stream.
	ack := func(t *testing.T, version string) {
		t.Helper()
		if err := stream.Send(&issuerv1.BundleAck{Version: version}); err != nil {
			t.Fatal(err)
		}
	}
	// ackCurrent acknowledges the version in force and waits until the agent
	// counts as current, in AllAgentsCurrent and the gauges, and OnAck has
	// seen acks acknowledgements in all.
	ackCurrent := func(t *testing.T, version string, acks int32) {
		t.Helper()
		ack(t, version)
		eventually(t, "AllAgentsCurrent", h.srv.AllAgentsCurrent)
		h.waitGauges(t, 1, 1)
		eventually(t, "OnAck", func() bool { return h.acks.Load() == acks })
	}

	// Steps run in order on one stream.
	t.Run("the bundle is sent on connect", func(t *testing.T) {
		v, roots := recvBundle(t, stream)
		if v != "v1" || len(roots) != 1 || !roots[0].Equal(h.tca.Root) {
			t.Fatalf("got %s with %d roots, want v1 with the test root", v, len(roots))
		}
		h.waitGauges(t, 1, 0)
		if h.srv.AllAgentsCurrent() {
			t.Fatal("AllAgentsCurrent before any acknowledgement")
		}
	})
	t.Run("an acknowledgement makes the agent current", func(t *testing.T) {
		ackCurrent(t, "v1", 1)
	})
	t.Run("a bundle change is pushed", func(t *testing.T) {
		h.src.Set(fakeauthority.Loaded(h.tca, "v2", h.tca.Root, other.Root), nil)
		v, roots := recvBundle(t, stream)
		if v != "v2" || len(roots) != 2 || !roots[0].Equal(h.tca.Root) || !roots[1].Equal(other.Root) {
			t.Fatalf("got %s with %d roots, want v2 with both roots", v, len(roots))
		}
		if h.srv.AllAgentsCurrent() {
			t.Fatal("AllAgentsCurrent while the agent acknowledged only v1")
		}
		h.waitGauges(t, 1, 0)
	})
	t.Run("an acknowledgement of an old version does not count", func(t *testing.T) {
		ack(t, "v1")
		eventually(t, "OnAck", func() bool { return h.acks.Load() == 2 })
		if h.srv.AllAgentsCurrent() || h.gauge(gaugeCurrent) != 0 {
			t.Fatal("a v1 acknowledgement counted for v2")
		}
	})
	t.Run("acknowledging the new version makes the agent current again", func(t *testing.T) {
		ackCurrent(t, "v2", 3)
	})
	t.Run("a closed stream is no longer counted", func(t *testing.T) {
		if err := stream.CloseSend(); err != nil {
			t.Fatal(err)
		}
		h.waitGauges(t, 0, 0)
		eventually(t, "unsubscribe", func() bool { return h.src.Subscribers() == 0 })
	})
}

func TestAllAgentsCurrentWaitsForEveryAgent(t *testing.T) {
	h := newHarness(t)
	var streams []issuerv1.Issuer_WatchBundleClient
	for _, node := range []string{"node-a", "node-b"} {
		streamCtx, cancel := context.WithCancel(ctx(t))
		t.Cleanup(cancel)
		streams = append(streams, watching(t, streamCtx, h.agent(node)))
	}
	h.waitGauges(t, 2, 0)
	steps := []struct {
		name string
		ack  int
		want bool
	}{
		{name: "one of two agents current is not all", ack: 0},
		{name: "both agents current is all", ack: 1, want: true},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			if err := streams[st.ack].Send(&issuerv1.BundleAck{Version: "v1"}); err != nil {
				t.Fatal(err)
			}
			h.waitGauges(t, 2, float64(st.ack+1))
			if got := h.srv.AllAgentsCurrent(); got != st.want {
				t.Fatalf("AllAgentsCurrent = %v, want %v", got, st.want)
			}
		})
	}
}

// ackLog is an issuer.AckRecorder that remembers the last version per node.
type ackLog struct {
	mu   sync.Mutex
	last map[string]string
}

func (a *ackLog) Ack(node, version string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.last[node] = version
}

func (a *ackLog) get(node string) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.last[node]
}

func TestWatchBundleRecordsAcksByNode(t *testing.T) {
	rec := &ackLog{last: map[string]string{}}
	h := newHarness(t, func(c *issuer.Config) { c.Acks = rec })
	streamCtx, cancel := context.WithCancel(ctx(t))
	defer cancel()
	stream := watching(t, streamCtx, h.agent("node-a"))
	if err := stream.Send(&issuerv1.BundleAck{Version: "v1"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the recorder sees node-a on v1", func() bool { return rec.get("node-a") == "v1" })
	// The stream's count moves with its acknowledgement; closing the stream
	// takes it out of this replica's counts.
	h.waitGauges(t, 1, 1)
	cancel()
	h.waitGauges(t, 0, 0)
	if rec.get("node-a") != "v1" {
		t.Fatal("the recorder lost node-a's acknowledgement when its stream closed")
	}
}

// TestWatchBundleSharesOneEncoding: agents' streams send the bundle
// encoded once per authority state; a stream whose requests are
// compressed gets it encoded (and compressed) for itself, and every stream
// decodes the same bundle, on connect and on a push.
func TestWatchBundleSharesOneEncoding(t *testing.T) {
	h := newHarness(t)
	other := testca.New(t, testca.WithClock(h.clock.Now))
	streamCtx, cancel := context.WithCancel(ctx(t))
	defer cancel()
	// The compressing stream opens first and alone: were its encoding
	// shared, the agents' streams would get a compressed message.
	gz, err := h.agent("node-gzip").WatchBundle(streamCtx, grpc.UseCompressor(gzip.Name))
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := recvBundle(t, gz); v != "v1" {
		t.Fatalf("compressed stream: got %s, want v1", v)
	}
	if err := gz.Send(&issuerv1.BundleAck{Version: "v1"}); err != nil {
		t.Fatal(err)
	}
	streams := []issuerv1.Issuer_WatchBundleClient{gz}
	for _, node := range []string{"node-a", "node-b"} {
		s, err := h.agent(node).WatchBundle(streamCtx)
		if err != nil {
			t.Fatal(err)
		}
		streams = append(streams, s)
	}
	check := func(t *testing.T, version string, streams []issuerv1.Issuer_WatchBundleClient, roots ...*x509.Certificate) {
		t.Helper()
		for i, s := range streams {
			v, got := recvBundle(t, s)
			if v != version || len(got) != len(roots) {
				t.Fatalf("stream %d: got %s with %d roots, want %s with %d", i, v, len(got), version, len(roots))
			}
			for j := range roots {
				if !got[j].Equal(roots[j]) {
					t.Fatalf("stream %d: root %d differs", i, j)
				}
			}
			if err := s.Send(&issuerv1.BundleAck{Version: v}); err != nil {
				t.Fatal(err)
			}
		}
		if !issuer.PushEncodedOnce(h.srv) {
			t.Error("the bundle was not encoded once for the agents' streams")
		}
	}
	check(t, "v1", streams[1:], h.tca.Root)
	h.src.Set(fakeauthority.Loaded(h.tca, "v2", h.tca.Root, other.Root), nil)
	check(t, "v2", streams, h.tca.Root, other.Root)
	eventually(t, "every stream acknowledging v2", h.srv.AllAgentsCurrent)
}
