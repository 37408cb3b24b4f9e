package agent

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/issuer"
	"github.com/mayfly-pki/mayfly/internal/test/issuertest"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
	"github.com/mayfly-pki/mayfly/pkg/pki"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// taintNode is one simulated node: an agent's CA client, batcher, identity
// manager and reissuer, in this process.
type taintNode struct {
	name string
	ca   *CAClient
	mgr  *Manager
}

// arrival is one credential a node's sink received.
type arrival struct {
	key     string
	at      time.Time
	tainted bool
}

// TestTaintReissuesEveryIdentityWithinTheWindow: identities on 10 nodes
// (200 in `make test`; MAYFLY_TAINT_PER_NODE=100 for the 1,000 of the
// figures in docs/emergency-rotation.md), against a real issuer and
// authority over gRPC on one fake clock.
// The root is tainted (forced past the adoption gate): every identity and
// every agent SVID is re-issued under the new root within the window, the
// arrivals spread over it, and after the old leaves expired and the root is
// revoked, no node's bundle holds it.
func TestTaintReissuesEveryIdentityWithinTheWindow(t *testing.T) {
	if testing.Short() {
		t.Skip("identities over gRPC on 10 nodes; skipped with -short")
	}
	const (
		nodes  = 10
		window = 10 * time.Minute
	)
	perNode := 20
	if v := os.Getenv("MAYFLY_TAINT_PER_NODE"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("MAYFLY_TAINT_PER_NODE=%q: want a positive number", v)
		}
		perNode = n
	}
	ctx := t.Context()
	clk := rotate.NewFakeClock(epoch)
	td := spiffeid.RequireTrustDomainFromString("example.org")

	store, err := authority.NewDirStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	pol := authority.DefaultPolicy()
	pol.TaintReissueWindow = window
	am := authority.NewManager(authority.ManagerOptions{
		Store:  store,
		Minter: &authority.Minter{TrustDomain: td, Policy: pol, KeyType: pki.KeyTypeECDSAP256, Rand: rand.Reader},
		Clock:  clk,
	})
	if err := am.Load(ctx); err != nil {
		t.Fatal(err)
	}
	tokens := &joinTokens{tokens: map[string]string{}}
	srv, addr := issuertest.Serve(t, issuer.Config{
		TrustDomain: td, Authority: am, Attestor: tokens, Authorizer: anyWorkload{},
		Now: clk.Now, Rand: rand.Reader,
	})
	first, err := am.Current()
	if err != nil {
		t.Fatal(err)
	}
	oldRoot := first.State.Root.Current.Cert()

	var mu sync.Mutex
	var arrivals []arrival
	taints := func() Taints { return Taints{KeyIDs: [][]byte{oldRoot.SubjectKeyId}} }

	var all []*taintNode
	for n := range nodes {
		name := fmt.Sprintf("node-%02d", n)
		tok := tokens.create(name)
		ca, err := NewCAClient(CAConfig{
			Address: addr, TrustDomain: td, InitialBundle: first.Bundle, Clock: clk, Policy: testPolicy(),
			Credential: func(context.Context) (*issuerv1.AttestAgentRequest, error) {
				return &issuerv1.AttestAgentRequest{Credential: &issuerv1.AttestAgentRequest_JoinToken{JoinToken: tok}}, nil
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		// The batching window runs on the wall clock (2ms): the fake clock
		// moves only when the test moves it.
		batcher := &Batcher{Signer: ca.Conn}
		mgr := NewManager(ManagerConfig{Batcher: batcher, Bundle: ca.Bundles, TrustDomain: td, Clock: clk, Policy: testPolicy()})
		rnd := mrand.New(mrand.NewPCG(42, uint64(n)))
		re := &Reissuer{Bundle: ca.Bundles, Clock: clk, Rand: rnd.Float64,
			Rotators: func() []*rotate.Rotator { return append(mgr.Rotators(), ca.Rotator()) }}
		run(t, name+" CAClient", ca.Start)
		run(t, name+" Batcher", batcher.Start)
		run(t, name+" Manager", mgr.Start)
		run(t, name+" Reissuer", re.Start)
		recv(t, ca.Ready(), name+" agent SVID")

		specs := make([]Spec, perNode)
		for i := range specs {
			id := fmt.Sprintf("spiffe://example.org/%s/w%03d", name, i)
			specs[i] = Spec{Key: id, SpiffeID: id, TTL: time.Hour, Pinned: true, Sinks: []rotate.Sink{rotate.SinkFunc(func(_ context.Context, c *rotate.Credential) error {
				mu.Lock()
				arrivals = append(arrivals, arrival{key: id, at: clk.Now(), tainted: taints().Chains(c.Certificates)})
				mu.Unlock()
				return nil
			})}}
		}
		creds, err := mgr.ObtainAll(ctx, specs)
		if err != nil || len(creds) != perNode {
			t.Fatalf("%s: obtained %d of %d identities: %v", name, len(creds), perNode, err)
		}
		all = append(all, &taintNode{name: name, ca: ca, mgr: mgr})
	}
	rotators := func() []*rotate.Rotator {
		var out []*rotate.Rotator
		for _, n := range all {
			out = append(out, n.mgr.Rotators()...)
			out = append(out, n.ca.Rotator())
		}
		return out
	}
	eventually(t, "every identity delivered to its sink", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(arrivals) == nodes*perNode
	})

	// ca taint --authority root --force, then the leader's rotation loop.
	if _, err := authority.TaintAuthority(ctx, store, authority.TaintRequest{Role: authority.RoleRoot, Force: true}, clk.Now()); err != nil {
		t.Fatal(err)
	}
	if err := am.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	am.RotateOnce(ctx) // PrepareRoot
	am.RotateOnce(ctx) // ActivateRoot, without waiting for the agents
	tainted, err := am.Current()
	if err != nil {
		t.Fatal(err)
	}
	if tainted.State.Root.Current.Cert().Equal(oldRoot) || len(tainted.Taints) != 1 {
		t.Fatalf("the CA did not move off the tainted root (taints announced: %d)", len(tainted.Taints))
	}
	taintedAt := clk.Now()
	mu.Lock()
	arrivals = nil
	mu.Unlock()

	// Every node received the announcement and scheduled every rotator
	// that chains to the old root.
	eventually(t, "every tainted identity scheduled for re-issue", func() bool {
		for _, r := range rotators() {
			if c := r.Current(); c != nil && taints().Chains(c.Certificates) && r.State().NextReason != rotate.ReasonRenewBy {
				return false
			}
		}
		return true
	})
	for _, n := range all {
		if len(n.ca.Bundles.Taints().KeyIDs) != 1 || n.ca.Bundles.Taints().Window != window {
			t.Fatalf("%s: taints in its bundle = %+v", n.name, n.ca.Bundles.Taints())
		}
	}

	// Walk the window one second at a time; at each step, every rotator
	// whose deadline passed has re-issued before the clock moves on.
	for s := 1; s <= int(window/time.Second); s++ {
		now := taintedAt.Add(time.Duration(s) * time.Second)
		clk.Set(now)
		// A step waits on real work (gRPC, signing under -race): give it
		// the time a loaded CI machine needs, not the unit tests' default.
		wait.Within(t, fmt.Sprintf("re-issues due by +%ds", s), 2*time.Minute, time.Millisecond, func() bool {
			for _, r := range rotators() {
				c := r.Current()
				st := r.State()
				if c != nil && taints().Chains(c.Certificates) && !now.Before(st.NextAt) {
					return false
				}
			}
			return true
		})
	}
	for _, r := range rotators() {
		if c := r.Current(); c == nil || taints().Chains(c.Certificates) {
			t.Fatalf("%s still chains to the tainted root after the window", r.State().Name)
		}
		if cur := r.Current(); !slices.ContainsFunc(tainted.Bundle, func(root *x509.Certificate) bool {
			return cur.Certificates[len(cur.Certificates)-1].CheckSignatureFrom(root) == nil && !root.Equal(oldRoot)
		}) {
			t.Fatalf("%s is not under the new root", r.State().Name)
		}
	}

	// The arrivals: each identity once, within the window, spread.
	mu.Lock()
	got := slices.Clone(arrivals)
	mu.Unlock()
	perSecond := make([]int, int(window/time.Second)+1)
	seen := map[string]bool{}
	for _, a := range got {
		if a.tainted {
			t.Fatalf("%s re-issued under the tainted root", a.key)
		}
		off := a.at.Sub(taintedAt)
		if off < 0 || off > window {
			t.Fatalf("%s re-issued at +%s, outside the window", a.key, off)
		}
		seen[a.key] = true
		perSecond[int(off/time.Second)]++
	}
	if len(seen) != nodes*perNode {
		t.Fatalf("%d identities re-issued, want %d (arrivals: %d)", len(seen), nodes*perNode, len(got))
	}
	peak, busy := 0, 0
	for _, c := range perSecond {
		peak = max(peak, c)
		if c > 0 {
			busy++
		}
	}
	var b strings.Builder
	for i := 0; i < len(perSecond); i += 60 {
		fmt.Fprintf(&b, "\n  +%3ds: %v", i, perSecond[i:min(i+60, len(perSecond))])
	}
	t.Logf("re-issue arrivals per second after the taint (%d identities, %d nodes, window %s): peak %d/s, %d of %d seconds busy, mean %.2f/s%s",
		len(got), nodes, window, peak, busy, len(perSecond), float64(len(got))/window.Seconds(), b.String())
	// Spread uniformly, n arrivals over s seconds leave about
	// s*(1-e^(-n/s)) seconds busy; all at once would leave a handful.
	expectBusy := float64(len(perSecond)) * (1 - math.Exp(-float64(len(got))/float64(len(perSecond))))
	if peak > 10 || float64(busy) < expectBusy/2 {
		t.Fatalf("arrivals not spread: peak %d/s, %d busy seconds (uniform: about %.0f)", peak, busy, expectBusy)
	}

	// Leaves under the old root live until they expire; the per-replica
	// count says so, then says none remain.
	liveUnder := func(serial string) int {
		for _, l := range srv.LiveLeaves() {
			if l.Role == authority.RoleRoot && l.Serial == serial {
				return l.Live
			}
		}
		return 0
	}
	oldSerial := oldRoot.SerialNumber.Text(16)
	if n := liveUnder(oldSerial); n != nodes*perNode+nodes {
		t.Fatalf("live leaves under the old root right after the re-issue = %d, want %d (workloads and agents)", n, nodes*perNode+nodes)
	}
	refuse := func(tn authority.Taint) error {
		if n := liveUnder(tn.Serial); n > 0 {
			return fmt.Errorf("%d live leaves", n)
		}
		return nil
	}
	if _, err := authority.RevokeAuthority(ctx, store, authority.RevokeRequest{Role: authority.RoleRoot, Check: refuse}); err == nil {
		t.Fatal("revoke succeeded while leaves under the old root live")
	}
	clk.Set(epoch.Add(time.Hour + time.Minute)) // every leaf of the old root expired
	if n := liveUnder(oldSerial); n != 0 {
		t.Fatalf("live leaves under the old root after they expired = %d", n)
	}
	if _, err := authority.RevokeAuthority(ctx, store, authority.RevokeRequest{Role: authority.RoleRoot, Check: refuse}); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	if err := am.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the revoked root gone from every node's bundle", func() bool {
		for _, n := range all {
			roots, _ := n.ca.Bundles.Bundle()
			if slices.ContainsFunc(roots, func(c *x509.Certificate) bool { return c.Equal(oldRoot) }) {
				return false
			}
		}
		return true
	})
}

// TestTaintsOfBoundsTheAnnouncement: what a bundle announces is bounded:
// empty and oversized key IDs are ignored, at most 64 are kept, the window
// is clamped to [0, 24h] and is zero without a taint.
func TestTaintsOfBoundsTheAnnouncement(t *testing.T) {
	many := make([][]byte, 100)
	for i := range many {
		many[i] = []byte{byte(i + 1)}
	}
	for _, tc := range []struct {
		name       string
		b          *issuerv1.Bundle
		wantIDs    int
		wantWindow time.Duration
	}{
		{"none", &issuerv1.Bundle{ReissueWindowSeconds: 600}, 0, 0},
		{"one", &issuerv1.Bundle{TaintedKeyIds: [][]byte{{1}}, ReissueWindowSeconds: 600}, 1, 10 * time.Minute},
		{"empty_and_oversized_ids_ignored", &issuerv1.Bundle{TaintedKeyIds: [][]byte{{}, make([]byte, 65), {1}}, ReissueWindowSeconds: 60}, 1, time.Minute},
		{"negative_window", &issuerv1.Bundle{TaintedKeyIds: [][]byte{{1}}, ReissueWindowSeconds: -5}, 1, 0},
		{"huge_window", &issuerv1.Bundle{TaintedKeyIds: [][]byte{{1}}, ReissueWindowSeconds: 1 << 62}, 1, 24 * time.Hour},
		{"too_many_ids", &issuerv1.Bundle{TaintedKeyIds: many, ReissueWindowSeconds: 1}, 64, time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := taintsOf(tc.b)
			if len(got.KeyIDs) != tc.wantIDs || got.Window != tc.wantWindow {
				t.Fatalf("taintsOf = %d IDs, window %s; want %d, %s", len(got.KeyIDs), got.Window, tc.wantIDs, tc.wantWindow)
			}
		})
	}
}
