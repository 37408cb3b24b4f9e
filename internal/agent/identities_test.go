package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/test/testca"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
	"github.com/mayfly-pki/mayfly/pkg/pki"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

const (
	idWeb   = "spiffe://example.org/ns/default/sa/web"
	idDB    = "spiffe://example.org/ns/default/sa/db"
	idCache = "spiffe://example.org/ns/default/sa/cache"
	idJobs  = "spiffe://example.org/ns/default/sa/jobs"

	// gcInterval is how often Manager.Start collects idle identities.
	gcInterval = time.Minute
	// pastRenewal lies beyond the renewal point of a 1h SVID issued at
	// the start (half of its life, backdating included) and before its end.
	pastRenewal = 45 * time.Minute
)

// gcClock is the fake clock of a Manager test; it also tells the test each
// time the collector arms its timer, that is after each collection.
type gcClock struct {
	*rotate.FakeClock
	armed chan struct{}
}

func (c gcClock) NewTimer(d time.Duration) rotate.Timer {
	t := c.FakeClock.NewTimer(d)
	if d == gcInterval { // rotators never wait exactly this long
		c.armed <- struct{}{}
	}
	return t
}

type managerHarness struct {
	t   *testing.T
	clk *rotate.FakeClock
	gc  gcClock
	ca  *fakeCA
	reg *prometheus.Registry
	m   *Manager
}

// newManager returns a Manager backed by a fake CA through a real Batcher,
// with a fake clock; started unless the test wants to drive it by hand.
func newManager(t *testing.T, started bool, mods ...func(*ManagerConfig)) *managerHarness {
	t.Helper()
	clk := rotate.NewFakeClock(epoch)
	h := &managerHarness{t: t, clk: clk, gc: gcClock{FakeClock: clk, armed: make(chan struct{}, 64)}, reg: prometheus.NewRegistry()}
	h.ca = newFakeCA(t, clk)
	b := &Batcher{Signer: h.ca}
	run(t, "Batcher.Start", b.Start)
	cfg := ManagerConfig{
		Batcher:     b,
		Bundle:      staticBundle(h.ca.tca.Bundle()),
		TrustDomain: h.ca.tca.TrustDomain,
		Clock:       h.gc,
		Policy:      testPolicy(),
		Registerer:  h.reg,
	}
	for _, mod := range mods {
		mod(&cfg)
	}
	h.m = NewManager(cfg)
	if started {
		run(t, "Manager.Start", h.m.Start)
		recv(t, h.gc.armed, "the collector's first timer")
	}
	return h
}

// settle waits until n rotators (plus the collector) sleep on their timers:
// every rotation in flight is then recorded, with its events and metrics.
func (h *managerHarness) settle(n int) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(h.t.Context(), waitTimeout)
	defer cancel()
	if err := h.clk.BlockUntilContext(ctx, n+1); err != nil {
		h.t.Fatalf("waiting for %d rotators to sleep: %v (timers: %d)", n, err, h.clk.Waiters())
	}
}

// advanceGC moves the clock and waits until the collector ran.
func (h *managerHarness) advanceGC(d time.Duration) {
	h.t.Helper()
	h.clk.Advance(d)
	recv(h.t, h.gc.armed, "the collector to run")
}

func (h *managerHarness) get(spec Spec) *rotate.Credential {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(h.t.Context(), waitTimeout)
	defer cancel()
	cred, err := h.m.Obtain(ctx, spec)
	if err != nil {
		h.t.Fatalf("Obtain(%s): %v", spec.Key, err)
	}
	return cred
}

func (h *managerHarness) keys() []string {
	var out []string
	for _, s := range h.m.Status() {
		out = append(out, s.Key)
	}
	return out
}

// checkSVID checks that cred is a usable SVID of id from the test CA.
func (h *managerHarness) checkSVID(cred *rotate.Credential, id string) {
	h.t.Helper()
	if cred == nil {
		h.t.Fatalf("no credential for %s", id)
	}
	if err := cred.Validate(); err != nil {
		h.t.Fatalf("credential of %s: %v", id, err)
	}
	got, err := pki.VerifyX509SVID(cred.Leaf(), cred.Certificates[1:], h.ca.tca.Bundle(), h.clk.Now(), x509.ExtKeyUsageServerAuth)
	if err != nil {
		h.t.Fatalf("SVID of %s does not verify: %v", id, err)
	}
	if got.String() != id {
		h.t.Fatalf("SVID has ID %s, want %s", got, id)
	}
}

func TestManagerGetWaitsForTheFirstCredential(t *testing.T) {
	h := newManager(t, true)
	h.ca.grant(idWeb)
	release := h.ca.hold()

	got := make(chan *rotate.Credential, 1)
	go func() { got <- h.get(Spec{Key: idWeb, SpiffeID: idWeb}) }()
	h.ca.waitItems(t, 1)
	select {
	case <-got:
		t.Fatal("Get returned before the CA answered")
	default:
	}
	release()
	cred := recv(t, got, "Get to return once the CA answered")
	h.checkSVID(cred, idWeb)
	if !slices.Equal(cred.Bundle, h.ca.tca.Bundle()) {
		t.Errorf("credential carries bundle %v, want the CA's", cred.Bundle)
	}
}

func TestManagerSpecsWithTheSameKeyShareOneRotator(t *testing.T) {
	h := newManager(t, true)
	h.ca.grant(idWeb)
	release := h.ca.hold()
	a := h.m.Ensure(Spec{Key: idWeb, SpiffeID: idWeb})
	b := h.m.Ensure(Spec{Key: idWeb, SpiffeID: idWeb, Pinned: true})
	if a != b {
		t.Fatal("two Specs with one Key got two rotators")
	}
	creds := make(chan *rotate.Credential, 2)
	for range 2 {
		go func() { creds <- h.get(Spec{Key: idWeb, SpiffeID: idWeb}) }()
	}
	release()
	c1, c2 := recv(t, creds, "first Get"), recv(t, creds, "second Get")
	h.settle(1)
	if c1 != c2 {
		t.Error("callers of one identity got different credentials")
	}
	h.checkSVID(c1, idWeb)
	if _, items := h.ca.counts(); items != 1 {
		t.Errorf("the CA got %d requests for one identity, want 1", items)
	}
	if got := h.keys(); !slices.Equal(got, []string{idWeb}) {
		t.Errorf("identities %v, want [%s]", got, idWeb)
	}
	// The later Spec pinned the shared identity: it outlives idleness.
	h.advanceGC(time.Hour / 4)
	if got := h.keys(); !slices.Equal(got, []string{idWeb}) {
		t.Errorf("after idling, identities %v, want the pinned [%s]", got, idWeb)
	}
}

func TestManagerObtain(t *testing.T) {
	errDown := errors.New("CA down")
	tests := []struct {
		name      string
		setup     func(ca *fakeCA)
		spec      Spec
		bundle    func(t *testing.T) []*x509.Certificate // nil: the CA's
		wantID    string                                 // on success
		wantErr   []string                               // substrings of the error
		wantErrIs error
		wantPods  []string // pod UIDs asked for, in order
	}{
		{
			name:   "standalone identity is issued for its SPIFFE ID",
			setup:  func(ca *fakeCA) { ca.grant(idWeb) },
			spec:   Spec{Key: idWeb, SpiffeID: idWeb, TTL: 10 * time.Minute},
			wantID: idWeb,
		},
		{
			name:    "a denial names the identity and the reason",
			spec:    Spec{Key: idWeb, SpiffeID: idWeb},
			wantErr: []string{idWeb, "PERMISSION_DENIED"},
		},
		{
			name:     "first pod NOT_FOUND, second granted: issued by the second",
			setup:    func(ca *fakeCA) { ca.pod("uid-b", idDB) },
			spec:     Spec{Key: "default/db", PodUIDs: func() []string { return []string{"uid-a", "uid-b"} }},
			wantID:   idDB,
			wantPods: []string{"uid-a", "uid-b"},
		},
		{
			name: "first pod PERMISSION_DENIED, second granted: issued by the second",
			setup: func(ca *fakeCA) {
				ca.pod("uid-a", idDB)
				ca.deny("uid-a", issuerv1.Denial_PERMISSION_DENIED)
				ca.pod("uid-b", idDB)
			},
			spec:     Spec{Key: "default/db", PodUIDs: func() []string { return []string{"uid-a", "uid-b"} }},
			wantID:   idDB,
			wantPods: []string{"uid-a", "uid-b"},
		},
		{
			name:     "first pod granted: later pods are not asked for",
			setup:    func(ca *fakeCA) { ca.pod("uid-a", idDB); ca.pod("uid-b", idDB) },
			spec:     Spec{Key: "default/db", PodUIDs: func() []string { return []string{"uid-a", "uid-b"} }},
			wantID:   idDB,
			wantPods: []string{"uid-a"},
		},
		{
			name:     "every pod denied: the last denial names the identity",
			spec:     Spec{Key: "default/db", PodUIDs: func() []string { return []string{"uid-a", "uid-b"} }},
			wantErr:  []string{"default/db", "NOT_FOUND"},
			wantPods: []string{"uid-a", "uid-b"},
		},
		{
			name: "an INVALID_ARGUMENT denial is not retried with the next pod",
			setup: func(ca *fakeCA) {
				ca.deny("uid-a", issuerv1.Denial_INVALID_ARGUMENT)
				ca.pod("uid-b", idDB)
			},
			spec:     Spec{Key: "default/db", PodUIDs: func() []string { return []string{"uid-a", "uid-b"} }},
			wantErr:  []string{"default/db", "INVALID_ARGUMENT"},
			wantPods: []string{"uid-a"},
		},
		{
			name:    "no pod left on the node",
			spec:    Spec{Key: "default/db", PodUIDs: func() []string { return nil }},
			wantErr: []string{"no pod runs on this node any more", "default/db"},
		},
		{
			name:      "a batch error is returned as is",
			setup:     func(ca *fakeCA) { ca.failWith(errDown) },
			spec:      Spec{Key: idWeb, SpiffeID: idWeb},
			wantErrIs: errDown,
		},
		{
			name:  "an SVID that does not chain to the bundle is refused",
			setup: func(ca *fakeCA) { ca.grant(idWeb) },
			spec:  Spec{Key: idWeb, SpiffeID: idWeb},
			bundle: func(t *testing.T) []*x509.Certificate {
				return testca.New(t, testca.WithClock(func() time.Time { return epoch })).Bundle()
			},
			wantErr: []string{idWeb, "does not verify"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var bundle []*x509.Certificate
			if tt.bundle != nil {
				bundle = tt.bundle(t)
			}
			h := newManager(t, false, func(cfg *ManagerConfig) {
				if bundle != nil {
					cfg.Bundle = staticBundle(bundle)
				}
			})
			if tt.setup != nil {
				tt.setup(h.ca)
			}
			ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
			defer cancel()
			cred, err := h.m.obtain(ctx, &entry{spec: tt.spec})
			switch {
			case tt.wantID != "":
				if err != nil {
					t.Fatalf("obtain: %v", err)
				}
				h.checkSVID(cred, tt.wantID)
				if tt.spec.TTL != 0 {
					if got := cred.Leaf().NotAfter.Sub(h.clk.Now()); got != tt.spec.TTL {
						t.Errorf("SVID lives %s, want the TTL %s", got, tt.spec.TTL)
					}
				}
			case err == nil:
				t.Fatal("obtain succeeded, want an error")
			case tt.wantErrIs != nil && !errors.Is(err, tt.wantErrIs):
				t.Fatalf("obtain = %v, want %v", err, tt.wantErrIs)
			}
			for _, s := range tt.wantErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
			if got := h.ca.podUIDsAsked(); !slices.Equal(got, tt.wantPods) {
				t.Errorf("asked the CA for pods %v, want %v", got, tt.wantPods)
			}
		})
	}
}

func TestManagerGetFallsBackToTheNextPod(t *testing.T) {
	h := newManager(t, true)
	h.ca.pod("uid-b", idDB) // uid-a is unknown to the CA: NOT_FOUND
	cred := h.get(Spec{Key: "default/db", PodUIDs: func() []string { return []string{"uid-a", "uid-b"} }})
	h.checkSVID(cred, idDB)
	if got := h.ca.podUIDsAsked(); !slices.Equal(got, []string{"uid-a", "uid-b"}) {
		t.Errorf("asked for pods %v, want [uid-a uid-b]", got)
	}
}

func TestManagerDenialIsReportedForTheIdentity(t *testing.T) {
	h := newManager(t, true)
	rot := h.m.Ensure(Spec{Key: "default/web", SpiffeID: idWeb})
	h.ca.waitCalls(t, 1)
	h.settle(1)
	st := rot.State()
	if st.Failures != 1 || st.Current != nil {
		t.Fatalf("state %+v, want one failure and no credential", st)
	}
	for _, s := range []string{"default/web", "PERMISSION_DENIED"} {
		if !strings.Contains(st.LastError, s) {
			t.Errorf("last error %q does not say %q", st.LastError, s)
		}
	}
	// Obtain does not wait for the retries of a refused identity.
	if _, err := h.m.Obtain(t.Context(), Spec{Key: "default/web", SpiffeID: idWeb}); !errors.Is(err, ErrNotIssued) {
		t.Errorf("Obtain of a denied identity = %v, want ErrNotIssued", err)
	}
	if got := mustSample(t, h.reg, "mayfly_agent_rotations_total", "result=failure"); got != 1 {
		t.Errorf("rotations_total{result=failure} = %v, want 1", got)
	}
}

func TestManagerRemoveStopsTheIdentityAndDropsItsMetric(t *testing.T) {
	h := newManager(t, true)
	h.ca.grant(idWeb)
	h.get(Spec{Key: idWeb, SpiffeID: idWeb})
	h.settle(1)
	if _, ok := sample(t, h.reg, "mayfly_agent_svid_expiry_timestamp_seconds", "spiffe_id="+idWeb); !ok {
		t.Fatal("no expiry series before Remove")
	}
	changes, unsubscribe := h.m.Subscribe(idWeb)
	defer unsubscribe()

	h.m.Remove(idWeb)
	recv(t, changes, "subscribers to hear of the removal")
	if _, ok := sample(t, h.reg, "mayfly_agent_svid_expiry_timestamp_seconds", "spiffe_id="+idWeb); ok {
		t.Error("expiry series of a removed identity is still exported")
	}
	if got := h.keys(); len(got) != 0 {
		t.Errorf("identities after Remove: %v", got)
	}
	// Its rotator stopped: it drops its timer and never renews again.
	eventually(t, "the removed rotator to stop its timer", func() bool { return h.clk.Waiters() == 1 })
	h.advanceGC(pastRenewal)
	if calls, _ := h.ca.counts(); calls != 1 {
		t.Errorf("the CA got %d calls, want 1: a removed identity renewed", calls)
	}
	h.m.Remove(idWeb) // removing twice is harmless
}

func TestManagerCollectsIdleIdentities(t *testing.T) {
	h := newManager(t, true, func(cfg *ManagerConfig) { cfg.IdleTimeout = 5 * time.Minute })
	h.ca.grant(idWeb, idDB, idCache, idJobs)
	specs := map[string]Spec{
		"idle":    {Key: "idle", SpiffeID: idWeb},
		"recent":  {Key: "recent", SpiffeID: idDB},
		"pinned":  {Key: "pinned", SpiffeID: idCache, Pinned: true},
		"watched": {Key: "watched", SpiffeID: idJobs},
	}
	for _, s := range specs {
		h.get(s)
	}
	h.settle(len(specs))
	_, unwatch := h.m.Subscribe("watched")

	h.advanceGC(3 * time.Minute) // idle 3m: below the timeout, all kept
	if got := h.keys(); len(got) != 4 {
		t.Fatalf("after 3m, identities %v, want all four", got)
	}
	h.get(specs["recent"]) // used again at 3m

	h.advanceGC(3 * time.Minute) // 6m: idle is over the timeout, recent is not
	if got, want := h.keys(), []string{"pinned", "recent", "watched"}; !slices.Equal(got, want) {
		t.Fatalf("after 6m, identities %v, want %v", got, want)
	}
	if _, ok := sample(t, h.reg, "mayfly_agent_svid_expiry_timestamp_seconds", "spiffe_id="+idWeb); ok {
		t.Error("the collected identity's expiry series is still exported")
	}

	unwatch()                    // last watcher leaves at 6m
	h.advanceGC(6 * time.Minute) // 12m: recent idle 9m, watched idle 6m
	if got, want := h.keys(), []string{"pinned"}; !slices.Equal(got, want) {
		t.Fatalf("after 12m, identities %v, want %v", got, want)
	}
}

// TestManagerDropsIdentityOfDeletedPods: once every pod of an identity left
// the node and nothing watches it, its next renewal drops it (no retries
// every half-life, no expiry series running out until the idle
// collection); while a volume or stream watches it, it is kept.
func TestManagerDropsIdentityOfDeletedPods(t *testing.T) {
	h := newManager(t, true)
	h.ca.pod("uid-a", idDB)
	var mu sync.Mutex
	pods := []string{"uid-a"}
	spec := Spec{Key: "default/db", PodUIDs: func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(pods)
	}}
	h.get(spec)
	h.settle(1)
	_, unwatch := h.m.Subscribe("default/db")
	mu.Lock()
	pods = nil // the pod was deleted
	mu.Unlock()

	h.clk.Advance(pastRenewal) // watched: kept, the renewal fails
	h.settle(1)
	if got := h.keys(); !slices.Equal(got, []string{"default/db"}) {
		t.Fatalf("watched identity without pods: identities %v, want it kept", got)
	}
	unwatch()
	h.clk.Advance(pastRenewal) // nothing holds it: dropped at the next renewal
	wait.Until(t, "the orphan identity dropped", waitTimeout, time.Millisecond, func(context.Context) (bool, string) {
		got := h.keys()
		return len(got) == 0, fmt.Sprintf("identities %v", got)
	})
	if _, ok := sample(t, h.reg, "mayfly_agent_svid_expiry_timestamp_seconds", "identity=default/db"); ok {
		t.Error("the dropped identity's expiry series is still exported")
	}
}

func TestManagerSubscribeFiresAfterRotation(t *testing.T) {
	h := newManager(t, true)
	h.ca.grant(idWeb)
	first := h.get(Spec{Key: idWeb, SpiffeID: idWeb})
	h.settle(1)
	changes, unsubscribe := h.m.Subscribe(idWeb)
	defer unsubscribe()
	select {
	case <-changes:
		t.Fatal("a new subscription fired before any rotation")
	default:
	}

	h.clk.Advance(pastRenewal)
	recv(t, changes, "a signal after the rotation")
	second := h.get(Spec{Key: idWeb, SpiffeID: idWeb})
	h.checkSVID(second, idWeb)
	if second.Leaf().SerialNumber.Cmp(first.Leaf().SerialNumber) == 0 {
		t.Fatal("the subscription fired but the credential did not change")
	}
	if !second.Leaf().NotAfter.After(first.Leaf().NotAfter) {
		t.Errorf("renewed SVID ends %s, not after the first's %s", second.Leaf().NotAfter, first.Leaf().NotAfter)
	}
	if got := mustSample(t, h.reg, "mayfly_agent_rotations_total", "result=success"); got != 2 {
		t.Errorf("rotations_total{result=success} = %v, want 2", got)
	}

	// An unknown identity: the subscription never fires, cancel is harmless.
	none, cancel := h.m.Subscribe("nobody")
	cancel()
	select {
	case <-none:
		t.Error("subscription to an unknown identity fired")
	default:
	}
}

func TestManagerMetrics(t *testing.T) {
	h := newManager(t, true)
	h.ca.grant(idWeb)
	cred := h.get(Spec{Key: idWeb, SpiffeID: idWeb, Pinned: true})
	h.settle(1)
	agentID := spiffeid.RequireFromString("spiffe://example.org/mayfly/agent/node-a")
	agentChain, _ := h.ca.tca.IssueWorkload(t, agentID, 20*time.Minute)
	h.m.SetAgentSVID(agentChain[0])

	checks := func(label string, wantMin time.Duration, success, failure float64) {
		t.Helper()
		for _, c := range []struct {
			name   string
			labels []string
			want   float64
		}{
			{"mayfly_agent_svid_expiry_timestamp_seconds", []string{"spiffe_id=" + idWeb}, float64(cred.Leaf().NotAfter.Unix())},
			{"mayfly_agent_svid_expiry_timestamp_seconds", []string{"spiffe_id=" + agentID.String()}, float64(agentChain[0].NotAfter.Unix())},
			{"mayfly_agent_min_remaining_seconds", nil, wantMin.Seconds()},
			{"mayfly_agent_rotations_total", []string{"result=success"}, success},
			{"mayfly_agent_rotations_total", []string{"result=failure"}, failure},
		} {
			if got := mustSample(t, h.reg, c.name, c.labels...); math.Abs(got-c.want) > 1e-9 {
				t.Errorf("%s: %s%v = %v, want %v", label, c.name, c.labels, got, c.want)
			}
		}
	}
	// The agent SVID (20m) is the node's first outage, before web (1h).
	checks("at start", 20*time.Minute, 1, 0)
	h.advanceGC(5 * time.Minute)
	checks("after 5m", 15*time.Minute, 1, 0)

	h.ca.failWith(errors.New("CA down"))
	h.m.Ensure(Spec{Key: idWeb}).Trigger()
	h.ca.waitCalls(t, 2)
	h.settle(1)
	checks("after a failed renewal", 15*time.Minute, 1, 1)

	// A new agent ID replaces the old series.
	otherAgent := spiffeid.RequireFromString("spiffe://example.org/mayfly/agent/node-b")
	otherChain, _ := h.ca.tca.IssueWorkload(t, otherAgent, time.Hour)
	h.m.SetAgentSVID(otherChain[0])
	if _, ok := sample(t, h.reg, "mayfly_agent_svid_expiry_timestamp_seconds", "spiffe_id="+agentID.String()); ok {
		t.Error("the replaced agent SVID is still exported")
	}
	if got, want := mustSample(t, h.reg, "mayfly_agent_min_remaining_seconds"), cred.Leaf().NotAfter.Sub(h.clk.Now()).Seconds(); got != want {
		t.Errorf("min_remaining_seconds = %v, want %v (web's)", got, want)
	}
}

func TestManagerMinRemainingIsZeroWithoutSVIDs(t *testing.T) {
	h := newManager(t, false)
	if got := mustSample(t, h.reg, "mayfly_agent_min_remaining_seconds"); got != 0 {
		t.Errorf("min_remaining_seconds = %v, want 0 with no SVID held", got)
	}
	for _, result := range []string{"success", "failure"} {
		if got := mustSample(t, h.reg, "mayfly_agent_rotations_total", "result="+result); got != 0 {
			t.Errorf("rotations_total{result=%s} = %v, want an initialized 0", result, got)
		}
	}
}

func TestManagerRotationFinishingAfterRemoveExportsNoExpiry(t *testing.T) {
	h := newManager(t, true)
	h.ca.grant(idWeb)
	h.get(Spec{Key: idWeb, SpiffeID: idWeb})
	h.settle(1)
	h.m.mu.Lock()
	e := h.m.entries[idWeb]
	h.m.mu.Unlock()

	h.m.Remove(idWeb)
	// The removed rotator's last rotation reports in late.
	h.m.onEvent(e, rotate.Event{Kind: rotate.EventRotated})
	if _, ok := sample(t, h.reg, "mayfly_agent_svid_expiry_timestamp_seconds", "spiffe_id="+idWeb); ok {
		t.Error("a late rotation of a removed identity exports its expiry again")
	}
	if got := mustSample(t, h.reg, "mayfly_agent_rotations_total", "result=success"); got != 2 {
		t.Errorf("rotations_total{result=success} = %v, want 2: the rotation still happened", got)
	}
}

// A workload with a refused identity and a granted one: Obtain answers for
// each after its first attempt, without waiting for the refused one's
// retries; WaitAnyReady returns once the granted one is there, and waits
// (up to its context) while none is.
func TestManagerRefusedIdentityDoesNotHoldUpTheOthers(t *testing.T) {
	h := newManager(t, true)
	h.ca.grant(idDB)
	refused := Spec{Key: "default/web", SpiffeID: idWeb}
	granted := Spec{Key: "default/db", SpiffeID: idDB}

	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	if err := h.m.WaitAnyReady(ctx, []Spec{refused, granted}); err != nil {
		t.Fatalf("WaitAnyReady: %v", err)
	}
	cred, err := h.m.Obtain(ctx, granted)
	if err != nil {
		t.Fatalf("Obtain(granted): %v", err)
	}
	h.checkSVID(cred, idDB)
	if _, err := h.m.Obtain(ctx, refused); !errors.Is(err, ErrNotIssued) {
		t.Fatalf("Obtain(refused) = %v, want ErrNotIssued", err)
	}

	short, cancelShort := context.WithCancel(t.Context())
	cancelShort()
	if err := h.m.WaitAnyReady(short, []Spec{refused}); !errors.Is(err, context.Canceled) {
		t.Fatalf("WaitAnyReady with only a refused identity = %v, want the context's error", err)
	}
}

// The first request for an identity obtains it directly: with no Start
// running, Obtain returns the credential; the rotator, once started, does
// not obtain it again but renews it at its renewal point.
func TestManagerFirstRequestObtainsDirectly(t *testing.T) {
	h := newManager(t, false)
	h.ca.grant(idWeb)
	spec := Spec{Key: idWeb, SpiffeID: idWeb}
	cred := h.get(spec)
	h.checkSVID(cred, idWeb)
	if calls, _ := h.ca.counts(); calls != 1 {
		t.Fatalf("the CA got %d calls for the first request, want 1", calls)
	}
	if again := h.get(spec); again != cred {
		t.Fatal("a second request did not get the credential already issued")
	}
	changes, unsubscribe := h.m.Subscribe(idWeb)
	defer unsubscribe()

	run(t, "Manager.Start", h.m.Start)
	recv(t, h.gc.armed, "the collector's first timer")
	h.settle(1)
	if calls, _ := h.ca.counts(); calls != 1 {
		t.Fatalf("the CA got %d calls once the rotator ran, want still 1", calls)
	}
	if st := h.m.Ensure(spec).State(); st.Rotations != 1 || !st.NextAt.After(h.clk.Now()) {
		t.Fatalf("rotator state %+v, want the first credential recorded and a renewal ahead", st)
	}
	h.clk.Advance(pastRenewal)
	recv(t, changes, "a signal after the renewal")
	renewed := h.get(spec)
	if renewed.Leaf().SerialNumber.Cmp(cred.Leaf().SerialNumber) == 0 {
		t.Fatal("the rotator did not renew the credential the first request obtained")
	}
	if got := mustSample(t, h.reg, "mayfly_agent_rotations_total", "result=success"); got != 2 {
		t.Errorf("rotations_total{result=success} = %v, want 2 (first request + renewal)", got)
	}
}

// A refused first request counts as the rotator's first attempt: it
// retries after the backoff, not at once.
func TestManagerRefusedFirstRequestIsRetriedAfterBackoff(t *testing.T) {
	h := newManager(t, false)
	spec := Spec{Key: idWeb, SpiffeID: idWeb}
	if _, err := h.m.Obtain(t.Context(), spec); !errors.Is(err, ErrNotIssued) {
		t.Fatalf("Obtain of a refused identity = %v, want ErrNotIssued", err)
	}
	run(t, "Manager.Start", h.m.Start)
	recv(t, h.gc.armed, "the collector's first timer")
	h.settle(1)
	if calls, _ := h.ca.counts(); calls != 1 {
		t.Fatalf("the CA got %d calls before the backoff, want 1", calls)
	}
	st := h.m.Ensure(spec).State()
	if st.Failures != 1 || !strings.Contains(st.LastError, "PERMISSION_DENIED") {
		t.Fatalf("rotator state %+v, want the refused first request as its failure", st)
	}
	h.ca.grant(idWeb)
	h.clk.Set(st.NextAt)
	h.ca.waitCalls(t, 2)
	h.settle(1)
	h.checkSVID(h.get(spec), idWeb)
}

// A first request whose caller goes away is no attempt: the identity is
// not marked refused, and the next request obtains it.
func TestManagerFirstRequestCancelledByItsCallerIsNoAttempt(t *testing.T) {
	h := newManager(t, false)
	h.ca.grant(idWeb)
	spec := Spec{Key: idWeb, SpiffeID: idWeb}
	release := h.ca.hold()
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() {
		_, err := h.m.Obtain(ctx, spec)
		errc <- err
	}()
	h.ca.waitItems(t, 1)
	cancel()
	if err := recv(t, errc, "Obtain to return when its caller left"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Obtain = %v, want context.Canceled", err)
	}
	release()
	if st := h.m.Ensure(spec).State(); st.Failures != 0 || st.Current != nil {
		t.Fatalf("rotator state %+v, want no attempt recorded", st)
	}
	h.checkSVID(h.get(spec), idWeb)
}
