package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mayfly-pki/mayfly/internal/workloadattest"
)

// feed is a BundleFeed with a fixed bundle whose changes the test signals.
type feed struct {
	staticBundle
	changes chan struct{}
}

func (f feed) SubscribeBundle() (<-chan struct{}, func()) { return f.changes, func() {} }

func registration(id string, uid int) workloadattest.Registration {
	return workloadattest.Registration{ID: id, SPIFFEID: spiffeid.RequireFromString(id), Selectors: workloadattest.RegistrationSelectors{UID: &uid}}
}

func unixCaller(uid int) workloadattest.Selectors { return workloadattest.Selectors{UID: &uid} }

func newSource(h *managerHarness, e Entitlements) *WorkloadSource {
	return &WorkloadSource{
		Manager:      h.m,
		Bundle:       feed{staticBundle: staticBundle(h.ca.tca.Bundle()), changes: make(chan struct{}, 1)},
		TrustDomain:  h.ca.tca.TrustDomain,
		Entitlements: e,
	}
}

func ids(t *testing.T, s *WorkloadSource, ctx context.Context, c workloadattest.Selectors) ([]string, error) {
	t.Helper()
	got, bundles, err := s.Identities(ctx, c)
	if err != nil {
		return nil, err
	}
	if roots := bundles[s.TrustDomain]; len(roots) == 0 {
		t.Errorf("no roots for %s in %v", s.TrustDomain, bundles)
	}
	var out []string
	for _, id := range got {
		out = append(out, id.ID.String())
	}
	return out, nil
}

// A workload's first fetch gets its identities directly, with no Start
// running: those issued once each had its first attempt, the refused one
// left out; a caller nothing matches gets none at once.
func TestWorkloadSourceFirstFetchIsDirect(t *testing.T) {
	h := newManager(t, false)
	h.ca.grant(idWeb, idDB)
	dir := t.TempDir()
	regs := &Registrations{Manager: h.m, WriteDir: filepath.Join(dir, "out")}
	if err := regs.Apply([]workloadattest.Registration{registration(idWeb, 1000), registration(idDB, 1000), registration(idCache, 1000), registration(idJobs, 2000)}); err != nil {
		t.Fatal(err)
	}
	s := newSource(h, regs)

	got, err := ids(t, s, t.Context(), unixCaller(1000))
	if err != nil {
		t.Fatalf("Identities: %v", err)
	}
	if want := []string{idWeb, idDB}; !slices.Equal(got, want) {
		t.Fatalf("identities %v, want %v (cache is refused)", got, want)
	}
	if _, items := h.ca.counts(); items != 3 {
		t.Errorf("the CA got %d requests, want the three first attempts", items)
	}
	if got, err := ids(t, s, t.Context(), unixCaller(3000)); err != nil || len(got) != 0 {
		t.Errorf("Identities of an unregistered caller = %v, %v; want none", got, err)
	}

	// Once started, the rotators deliver to the files without asking again.
	run(t, "Manager.Start", h.m.Start)
	recv(t, h.gc.armed, "the collector's first timer")
	h.settle(4) // web, db, cache (backing off), jobs (never asked: obtained now)
	if _, err := os.Stat(filepath.Join(dir, "out", "ns", "default", "sa", "web", "tls.crt")); err != nil {
		t.Errorf("web's file sink: %v", err)
	}

	// Registrations removed: their identities go, and so do their files'
	// renewals.
	if err := regs.Apply([]workloadattest.Registration{registration(idWeb, 1000)}); err != nil {
		t.Fatal(err)
	}
	if got := h.keys(); !slices.Equal(got, []string{idWeb}) {
		t.Errorf("identities after the registrations shrank: %v, want [%s]", got, idWeb)
	}
}

// A workload whose only identity is refused waits on its fetch for the
// first, up to its context.
func TestWorkloadSourceWaitsWhileNothingIsIssued(t *testing.T) {
	h := newManager(t, true)
	regs := &Registrations{Manager: h.m}
	if err := regs.Apply([]workloadattest.Registration{registration(idWeb, 1000)}); err != nil {
		t.Fatal(err)
	}
	s := newSource(h, regs)
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() {
		_, err := ids(t, s, ctx, unixCaller(1000))
		errc <- err
	}()
	h.ca.waitCalls(t, 1)
	h.settle(1) // the refused identity backs off; the fetch still waits
	select {
	case err := <-errc:
		t.Fatalf("Identities returned %v while nothing was issued", err)
	default:
	}
	h.ca.grant(idWeb)
	at, _ := h.clk.NextDeadline()
	h.clk.Set(at)
	if err := recv(t, errc, "the fetch to return once the retry was issued"); err != nil {
		t.Fatalf("Identities: %v", err)
	}
	cancel()

	// With a context that ends, a caller with nothing issued gets its error.
	h.ca.deny(idDB, 0)
	if err := regs.Apply([]workloadattest.Registration{registration(idDB, 2000)}); err != nil {
		t.Fatal(err)
	}
	short, cancelShort := context.WithCancel(t.Context())
	cancelShort()
	if _, err := ids(t, s, short, unixCaller(2000)); !errors.Is(err, context.Canceled) {
		t.Errorf("Identities with nothing issued and a cancelled context = %v, want context.Canceled", err)
	}
}

// Subscribe signals identity rotations and bundle changes, and holds the
// caller's pod until cancelled.
func TestWorkloadSourceSubscribe(t *testing.T) {
	h := newManager(t, true)
	h.ca.pod("uid-a", idWeb)
	pods := &PodIndex{}
	s := newSource(h, &PodIdentities{Pods: pods})
	caller := workloadattest.Selectors{Namespace: "default", ServiceAccount: "web", PodUID: "uid-a"}

	changes, cancel := s.Subscribe(caller)
	if got := pods.UIDs("default/web"); !slices.Equal(got, []string{"uid-a"}) {
		t.Fatalf("pods while subscribed: %v, want [uid-a]", got)
	}
	got, err := ids(t, s, t.Context(), caller)
	if err != nil || !slices.Equal(got, []string{idWeb}) {
		t.Fatalf("Identities = %v, %v; want [%s]", got, err, idWeb)
	}
	recv(t, changes, "a signal for the first issuance")
	h.settle(1)

	s.Bundle.(feed).changes <- struct{}{}
	recv(t, changes, "a signal for a bundle change")
	h.clk.Advance(pastRenewal)
	recv(t, changes, "a signal for the renewal")

	cancel()
	if got := pods.UIDs("default/web"); len(got) != 0 {
		t.Errorf("pods after the stream ended: %v, want none", got)
	}
	// A caller that is not a workload gets nothing.
	if got, _, err := s.Identities(t.Context(), "not selectors"); err != nil || len(got) != 0 {
		t.Errorf("Identities of an unknown caller = %v, %v; want none", got, err)
	}
}

// TestRegistrationsUsesPath: the attestor reads a caller's executable only
// while some registration selects by it.
func TestRegistrationsUsesPath(t *testing.T) {
	h := newManager(t, false)
	regs := &Registrations{Manager: h.m}
	if regs.UsesPath() {
		t.Fatal("UsesPath before any registration")
	}
	if err := regs.Apply([]workloadattest.Registration{registration(idWeb, 1000)}); err != nil {
		t.Fatal(err)
	}
	if regs.UsesPath() {
		t.Fatal("UsesPath with uid selectors only")
	}
	withPath := registration(idDB, 1000)
	withPath.Selectors.Path = "/usr/local/bin/db"
	if err := regs.Apply([]workloadattest.Registration{registration(idWeb, 1000), withPath}); err != nil {
		t.Fatal(err)
	}
	if !regs.UsesPath() {
		t.Fatal("UsesPath = false with a path selector")
	}
}
