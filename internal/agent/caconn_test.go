package agent

import (
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	"github.com/mayfly-pki/mayfly/internal/test/testca"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

func TestCAConnReplacesAndRetiresConnectionsOnTheClock(t *testing.T) {
	clk := rotate.NewFakeClock(epoch)
	tca := testca.New(t, testca.WithClock(clk.Now))
	chain, key := tca.IssueWorkload(t, spiffeid.RequireFromString("spiffe://example.org/mayfly/agent/node-a"), time.Hour)
	cert := tlsCertificate(chain, key)
	// Connections are lazy: nothing needs to listen.
	c := NewCAConn(CAConnConfig{Address: "127.0.0.1:1", TrustDomain: tca.TrustDomain, Bundle: staticBundle(tca.Bundle()), Clock: clk})

	_, replaced, err := c.Client()
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("Client before an SVID = %v, want Unavailable", err)
	}
	if _, err := c.SignWorkloads(t.Context(), nil); status.Code(err) != codes.Unavailable {
		t.Fatalf("SignWorkloads before an SVID = %v, want Unavailable", err)
	}
	if err := c.Use(cert); err != nil {
		t.Fatal(err)
	}
	recv(t, replaced, "the first connection to be announced")
	conn := func() *grpc.ClientConn {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.conn
	}
	first := conn()

	if err := c.Use(cert); err != nil {
		t.Fatal(err)
	}
	second := conn()
	ctx := t.Context()
	if err := clk.BlockUntilContext(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if first.GetState() == connectivity.Shutdown {
		t.Fatal("the replaced connection closed before its grace period")
	}
	clk.Advance(retireAfter)
	eventually(t, "the replaced connection to close after its grace period", func() bool { return first.GetState() == connectivity.Shutdown })
	if second.GetState() == connectivity.Shutdown {
		t.Fatal("the connection in use closed")
	}

	// Close ends the connection in use and, without waiting, those retiring.
	if err := c.Use(cert); err != nil {
		t.Fatal(err)
	}
	third := conn()
	c.Close()
	eventually(t, "every connection to close", func() bool {
		return second.GetState() == connectivity.Shutdown && third.GetState() == connectivity.Shutdown
	})
	if err := c.Use(cert); err == nil {
		t.Error("Use after Close succeeded")
	}
	c.Close() // twice is harmless
}
