package agentapp_test

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/test/authoritytest"
	"github.com/mayfly-pki/mayfly/internal/test/handshake"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
	"github.com/mayfly-pki/mayfly/internal/upstream"
	"github.com/mayfly-pki/mayfly/internal/upstream/upstreamtest"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// Timing of the upstream tests. The CA and the agent share a fake clock
// that starts upstreamLag behind the real one, so that every certificate
// they make stays valid for go-spiffe, which verifies with the real time,
// while the fake clock walks the intermediate to its rotation points; the
// step-ca backdates what it signs far enough that the intermediate is valid
// at the fake time. With a 2h intermediate, 50m workload SVIDs, a 45m lag
// and a 161m backdate, the intermediate's prepare point lies 2m after the
// fake start and its activation point 41m20s after it, before the real
// time.
const (
	upstreamTTL      = 2 * time.Hour
	upstreamLag      = 45 * time.Minute
	upstreamBackdate = upstreamTTL + upstreamLag - 4*time.Minute
	upstreamSVIDTTL  = "50m"
)

var lateID = spiffeid.RequireFromString("spiffe://example.org/e2e/late")

// upstreamStack is a step-ca, and a CA renewing its intermediate from it,
// with an agent, both on clock.
func upstreamStack(t *testing.T, step upstream.StepCAConfig, clock *rotate.FakeClock) *stack {
	t.Helper()
	caYAML := fmt.Sprintf(`rotation: {intermediateTTL: %s}
upstream:
  stepCA:
    url: %s
    rootFile: %s
    provisioner: %s
    jwk: {keyFile: %s}
`, upstreamTTL, step.URL, step.RootFile, step.Provisioner, step.JWK.KeyFile)
	return startStackClocks(t, upstreamSVIDTTL, `healthAddress: "off"`, caYAML, clock, clock)
}

// startMTLSTicking is startMTLS with the clock moving on meanwhile (at
// 2.5 times the real pace): the agent's first retries run on it.
func startMTLSTicking(t *testing.T, s *stack, clock *rotate.FakeClock) *mtls {
	t.Helper()
	stop := make(chan struct{})
	ticked := make(chan struct{})
	go func() {
		defer close(ticked)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				clock.Advance(50 * time.Millisecond)
			}
		}
	}()
	defer func() { close(stop); <-ticked }()
	return startMTLS(t, s)
}

// caState reads the CA's state from its directory.
func caState(t *testing.T, s *stack) *authority.State {
	t.Helper()
	store, err := authority.NewDirStore(s.stateDir)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := authoritytest.Stored(t, store)
	return st
}

// rotationPoints returns the intermediate's prepare and activation points,
// and fails the test when the timing above does not put them between the
// fake start and the real time.
func rotationPoints(t *testing.T, st *authority.State, start time.Time) (prepare, activate time.Time) {
	t.Helper()
	p := authority.DefaultPolicy()
	p.IntermediateTTL = upstreamTTL
	prepare = st.Intermediate.PreparePoint(p.IntermediateSchedule())
	activate = st.Intermediate.ActivatePoint(p.IntermediateSchedule())
	if !prepare.After(start) || !activate.Before(time.Now().Add(-30*time.Second)) {
		t.Fatalf("the intermediate (%s to %s) rotates at %s and %s: want both between the fake start %s and the real time %s",
			st.Intermediate.Current.NotBefore(), st.Intermediate.Current.NotAfter(), prepare, activate, start, time.Now())
	}
	return prepare, activate
}

// addLateWorkload registers lateID (the agent re-reads its registrations
// file every 2s of its clock), checks that its SVID is signed by under,
// and returns a handshake from it to a server on server's SVID that admits
// any member of the trust domain.
func addLateWorkload(t *testing.T, s *stack, clock *rotate.FakeClock, server *workloadapi.X509Source, under *x509.Certificate) func() error {
	t.Helper()
	regs := filepath.Join(filepath.Dir(s.stateDir), "registrations.yaml")
	raw, err := os.ReadFile(regs)
	if err != nil {
		t.Fatal(err)
	}
	raw = append(raw, fmt.Sprintf("  - spiffeID: %s\n    selectors: {uid: %d}\n    ttl: %s\n", lateID, os.Getuid(), upstreamSVIDTTL)...)
	if err := os.WriteFile(regs, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+s.socket)), pick(lateID))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	// The registrations watcher polls every 2s of the clock. Move the
	// clock by that much only: the next intermediate's own activation
	// point is a minute or two of fake time ahead.
	served := func() bool {
		svid, err := src.GetX509SVID()
		return err == nil && svid.ID == lateID
	}
	moved, next := 0, time.Now()
	wait.Within(t, "the agent serves the late workload's SVID", 45*time.Second, 20*time.Millisecond, func() bool {
		if served() {
			return true
		}
		if moved < 3 && !time.Now().Before(next) {
			clock.Advance(2100 * time.Millisecond)
			moved, next = moved+1, time.Now().Add(10*time.Second)
		}
		return false
	})
	svid, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if len(svid.Certificates) < 2 || !svid.Certificates[1].Equal(under) {
		t.Fatal("the workload registered after the activation did not get an SVID under the new intermediate")
	}
	return serveMTLS(t, server, tlsconfig.AuthorizeMemberOf(lateID.TrustDomain()), src)
}

// TestEndToEndUpstreamRenewal: a CA renews its intermediate from a step-ca
// started in-process while two go-spiffe workloads do mTLS through the
// agent's Workload API. The fake clock walks the intermediate to its
// prepare point (a new intermediate signed by the step-ca) and its
// activation point; a workload registered afterwards gets an SVID under
// the new intermediate and talks to the server whose SVID is under the old
// one. No handshake may fail on the way.
func TestEndToEndUpstreamRenewal(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test with a step-ca renewal; skipped with -short")
	}
	start := time.Now().Add(-upstreamLag).Truncate(time.Second)
	clock := rotate.NewFakeClock(start)
	step := upstreamtest.NewStepCA(t, upstreamtest.StepCAOptions{Backdate: upstreamBackdate})
	s := upstreamStack(t, step.Config, clock)
	m := startMTLSTicking(t, s, clock)
	first := caState(t, s).Intermediate.Current.Cert()
	prepare, activate := rotationPoints(t, caState(t, s), start)

	// Each phase lasts at least minRounds rounds of handshakes, so that
	// handshakes run on both sides of every change.
	const minRounds = 10
	phase, phaseRound := 0, 0
	var second *x509.Certificate
	var late func() error
	c := handshake.Until(t, "the upstream renewal", 3*time.Minute, 100*time.Millisecond, []handshake.Pair{{Name: "go-spiffe pair", Handshake: m.handshake}}, func(round int) (bool, string) {
		if round-phaseRound < minRounds {
			return false, fmt.Sprintf("phase %d, round %d", phase, round)
		}
		next := func() { phase, phaseRound = phase+1, round }
		st := caState(t, s)
		switch phase {
		case 0: // renew: the step-ca signs the next intermediate
			clock.Set(prepare.Add(time.Second))
			if st.Intermediate.Next != nil {
				second = st.Intermediate.Next.Cert()
				if second.CheckSignatureFrom(first) == nil || second.Equal(first) {
					t.Fatal("the next intermediate is not a new one from the step-ca")
				}
				next()
			}
		case 1: // activate it
			clock.Set(activate.Add(time.Second))
			if st.Intermediate.Current.Cert().Equal(second) {
				next()
			}
		case 2: // a new workload gets an SVID under it
			late = addLateWorkload(t, s, clock, m.serverSrc, second)
			next()
		case 3:
			if err := late(); err != nil {
				t.Errorf("the workload under the new intermediate could not talk to the server under the old one: %v", err)
			}
			return true, ""
		}
		return false, fmt.Sprintf("phase %d (0: prepare, 1: activate, 2: late workload)", phase)
	})
	t.Logf("upstream renewal from step-ca: %d rounds of handshakes, %d failed", c.Rounds, c.Failed)
}

// TestEndToEndUpstreamRootRotation: the step-ca moves to a new root (it is
// stopped and started again on its address with a new root and
// intermediate, the provisioner kept) while two go-spiffe workloads do
// mTLS through the agent. The next intermediate, under the new root,
// brings the root into every bundle and takes over only once the agent
// acknowledged the bundle; no SVID under the new root is served before
// both workloads trust it, the old root stays trusted, and a workload
// registered afterwards (under the new root) talks to the server (under
// the old). No handshake may fail on the way.
func TestEndToEndUpstreamRootRotation(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test with a step-ca root rotation; skipped with -short")
	}
	start := time.Now().Add(-upstreamLag).Truncate(time.Second)
	clock := rotate.NewFakeClock(start)
	oldRoot := upstreamtest.NewCA(t, "Corp step root 1", nil, -1)
	newRoot := upstreamtest.NewCA(t, "Corp step root 2", nil, -1)
	step := upstreamtest.NewStepCA(t, upstreamtest.StepCAOptions{Root: oldRoot, Backdate: upstreamBackdate})
	// The operator's file of step-ca TLS roots holds both: the step-ca's
	// TLS certificate moves to the new root with it.
	cfg := step.Config
	cfg.RootFile = upstreamtest.WriteCert(t, t.TempDir(), "step-roots.crt", oldRoot.Cert, newRoot.Cert)
	s := upstreamStack(t, cfg, clock)
	m := startMTLSTicking(t, s, clock)
	prepare, activate := rotationPoints(t, caState(t, s), start)

	step.Stop()
	upstreamtest.NewStepCA(t, upstreamtest.StepCAOptions{Root: newRoot, Backdate: upstreamBackdate, Address: step.Addr, JWK: step.JWK})

	sources := map[string]*workloadapi.X509Source{"server": m.serverSrc, "client": m.clientSrc}
	trusts := func(src *workloadapi.X509Source, root *x509.Certificate) bool {
		return slices.ContainsFunc(roots(t, src), root.Equal)
	}
	// underNew reports whether a workload holds an SVID under the new
	// root, and fails the test when one does before every workload
	// trusts that root, or when a bundle dropped the old root.
	underNew := func() bool {
		found := false
		for name, src := range sources {
			for other, osrc := range sources {
				if !trusts(osrc, oldRoot.Cert) {
					t.Fatalf("%s's bundle dropped the old root", other)
				}
			}
			svid, err := src.GetX509SVID()
			if err != nil {
				t.Fatal(err)
			}
			if svid.Certificates[len(svid.Certificates)-1].CheckSignatureFrom(oldRoot.Cert) == nil {
				continue
			}
			for other, osrc := range sources {
				if !trusts(osrc, newRoot.Cert) {
					t.Fatalf("%s was served an SVID under the new root before %s trusted it", name, other)
				}
			}
			found = true
		}
		return found
	}
	const minRounds = 10
	phase, phaseRound := 0, 0
	var second *x509.Certificate
	var late func() error
	c := handshake.Until(t, "the upstream root rotation", 3*time.Minute, 100*time.Millisecond, []handshake.Pair{{Name: "go-spiffe pair", Handshake: m.handshake}}, func(round int) (bool, string) {
		underNew()
		if round-phaseRound < minRounds {
			return false, fmt.Sprintf("phase %d, round %d", phase, round)
		}
		next := func() { phase, phaseRound = phase+1, round }
		st := caState(t, s)
		switch phase {
		case 0: // the next intermediate, under the new root, is published with it
			clock.Set(prepare.Add(time.Second))
			if n := st.Intermediate.Next; n != nil {
				second = n.Cert()
				if len(n.Chain) < 2 || n.Chain[len(n.Chain)-1].CheckSignatureFrom(newRoot.Cert) != nil {
					t.Fatal("the next intermediate does not chain to the step-ca's new root")
				}
				if st.Intermediate.NextPublishedAt.IsZero() {
					t.Fatal("the intermediate under a new root is not held back for adoption")
				}
				next()
			}
		case 1: // both workloads trust the new root
			if trusts(m.serverSrc, newRoot.Cert) && trusts(m.clientSrc, newRoot.Cert) {
				next()
			}
		case 2: // past the activation point it takes over (the agent acknowledged the bundle)
			clock.Set(activate.Add(time.Second))
			if st.Intermediate.Current.Cert().Equal(second) {
				next()
			}
		case 3: // a workload registered now gets an SVID under the new root
			late = addLateWorkload(t, s, clock, m.serverSrc, second)
			next()
		case 4:
			if err := late(); err != nil {
				t.Errorf("the workload under the new root could not talk to the server under the old one: %v", err)
			}
			return true, ""
		}
		return false, fmt.Sprintf("phase %d (0: prepare, 1: bundles, 2: activate, 3: late workload)", phase)
	})
	t.Logf("upstream root rotation at step-ca: %d rounds of handshakes, %d failed", c.Rounds, c.Failed)
}
