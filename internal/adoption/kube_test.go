package adoption_test

import (
	"context"
	"crypto/rand"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"

	"github.com/mayfly-pki/mayfly/internal/adoption"
	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/test/authoritytest"
	"github.com/mayfly-pki/mayfly/internal/test/cluster"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
	"github.com/mayfly-pki/mayfly/pkg/pki"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

var t0 = time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)

func testPolicy() authority.Policy {
	return authority.Policy{
		RootTTL: 240 * time.Hour, IntermediateTTL: 24 * time.Hour,
		PrepareAt: 0.5, ActivateAt: 2.0 / 3.0, RootAckWait: 6 * time.Hour,
	}
}

// writeCounter counts the API writes to ConfigMaps through a client.
type writeCounter struct{ n atomic.Int64 }

func (w *writeCounter) wrap(cfg *rest.Config) *rest.Config {
	c := rest.CopyConfig(cfg)
	c.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) {
			if r.Method != http.MethodGet && strings.Contains(r.URL.Path, "/configmaps") {
				w.n.Add(1)
			}
			return rt.RoundTrip(r)
		})
	}
	return c
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// env is one scenario: its own namespace (the CA's), its own Nodes
// (labelled with the scenario), one fake clock.
type env struct {
	t      *testing.T
	c      *cluster.Cluster
	ns     string
	clock  *rotate.FakeClock
	nodes  *adoption.KubeNodes
	store  *authority.SecretStore
	writes writeCounter
}

func newEnv(t *testing.T, c *cluster.Cluster, name string, nodes ...string) *env {
	t.Helper()
	e := &env{t: t, c: c, ns: name, clock: rotate.NewFakeClock(t0)}
	ctx := context.Background()
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		e.createNode(n)
	}
	// A Node of another scenario (another label) never counts.
	e.createNodeLabelled(name+"-other", "elsewhere")
	meta, err := metadata.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	e.nodes = &adoption.KubeNodes{Client: meta, Selector: labels.SelectorFromSet(labels.Set{"scenario": name})}
	e.run(e.nodes.Start)
	wait.For(t, "the Node list", func() bool { _, ok := e.nodes.Nodes(); return ok })
	e.store = authority.NewSecretStore(c.Client, name, "mayfly-ca")
	return e
}

func (e *env) createNode(name string) { e.createNodeLabelled(name, e.ns) }

func (e *env) createNodeLabelled(name, scenario string) {
	e.t.Helper()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"scenario": scenario}}}
	if _, err := e.c.Client.CoreV1().Nodes().Create(context.Background(), n, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

// run starts f until the test ends (or the returned cancel is called).
func (e *env) run(f func(context.Context) error) context.CancelFunc {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f(ctx) }()
	stop := func() {
		cancel()
		if err := <-done; err != nil {
			e.t.Errorf("runnable: %v", err)
		}
	}
	var once atomic.Bool
	e.t.Cleanup(func() {
		if once.CompareAndSwap(false, true) {
			stop()
		}
	})
	return func() {
		if once.CompareAndSwap(false, true) {
			stop()
		}
	}
}

// replica is one CA replica: the tracker its issuer feeds, its publisher,
// its gatherer, its authority manager and its view of the adoption.
type replica struct {
	name     string
	tracker  *adoption.Tracker
	gatherer *adoption.Gatherer
	view     *adoption.View
	mgr      *authority.Manager
	stop     context.CancelFunc // stops the publisher: the replica is gone
}

func (e *env) replica(name string) *replica {
	e.t.Helper()
	kube, err := kubernetes.NewForConfig(e.writes.wrap(e.c.Config))
	if err != nil {
		e.t.Fatal(err)
	}
	r := &replica{name: name, tracker: adoption.NewTracker()}
	r.gatherer = &adoption.Gatherer{Client: e.c.Client, Namespace: e.ns, Clock: e.clock, Stale: 10 * time.Minute}
	r.view = &adoption.View{Nodes: e.nodes, Acks: []adoption.AckSource{r.tracker, r.gatherer}}
	r.mgr = authority.NewManager(authority.ManagerOptions{
		Store:  e.store,
		Minter: &authority.Minter{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"), Policy: testPolicy(), KeyType: pki.KeyTypeECDSAP256, Rand: rand.Reader},
		Clock:  e.clock,
		Acks: func() bool {
			l, err := r.mgr.Current()
			return err == nil && r.view.Adopted(l.BundleVersion)
		},
	})
	if err := r.mgr.Load(context.Background()); err != nil {
		e.t.Fatal(err)
	}
	e.run(r.gatherer.Start)
	wait.For(e.t, "the gatherer's first list", r.gatherer.HasSynced)
	r.stop = e.run((&adoption.Publisher{Client: kube, Namespace: e.ns, Replica: name, Tracker: r.tracker, Clock: e.clock}).Start)
	return r
}

// settle waits for cond, moving the fake clock over the publishers'
// coalescing interval (never further) so that their writes go out.
func (e *env) settle(what string, cond func() bool) {
	e.t.Helper()
	wait.For(e.t, what, func() bool {
		if cond() {
			return true
		}
		if d, ok := e.clock.NextDeadline(); ok && !d.After(e.clock.Now().Add(adoption.DefaultInterval)) {
			e.clock.Set(d)
		}
		return false
	})
}

func (e *env) state() *authority.State {
	e.t.Helper()
	s, _ := authoritytest.Stored(e.t, e.store)
	return s
}

// prepare has leader request and prepare a root rotation, and returns the
// bundle version carrying the next root.
func (e *env) prepare(leader *replica) (string, *authority.State) {
	e.t.Helper()
	ctx := context.Background()
	if err := authority.RequestRootRotation(ctx, e.store); err != nil {
		e.t.Fatal(err)
	}
	if err := leader.mgr.Reload(ctx); err != nil {
		e.t.Fatal(err)
	}
	leader.mgr.RotateOnce(ctx)
	leader.mgr.RotateOnce(ctx)
	s := e.state()
	if s.Root.Next == nil {
		e.t.Fatal("no next root was prepared")
	}
	l, _ := leader.mgr.Current()
	return l.BundleVersion, s
}

func (e *env) pending(r *replica, version string) []string { return r.view.Pending(version).Nodes }

// activated reports whether the root prepared in prepared is the current one.
func (e *env) activated(prepared *authority.State) bool {
	s := e.state()
	return s.Root.Current.Cert().Equal(prepared.Root.Next.Cert())
}

func TestKubernetesAdoption(t *testing.T) {
	c := cluster.Start(t)

	t.Run("a root activates only after the agents of both replicas hold it", func(t *testing.T) {
		e := newEnv(t, c, "split", "n1", "n2", "n3", "n4")
		a, b := e.replica("ca-a"), e.replica("ca-b")
		v, prepared := e.prepare(a)
		ctx := context.Background()

		if a.view.Adopted(v) || len(e.pending(a, v)) != 4 {
			t.Fatalf("with no agent connected and 4 Nodes, pending = %v", e.pending(a, v))
		}
		before := e.writes.n.Load()
		a.tracker.Ack("n1", v)
		a.tracker.Ack("n2", v)
		b.tracker.Ack("n3", "old-version")
		e.settle("leader sees the old version at ca-b", func() bool {
			return !b.gatherer.Holds("n3", v) && a.gatherer.Holds("n1", v) && slices.Equal(e.pending(b, v), []string{"n3", "n4"})
		})
		a.mgr.RotateOnce(ctx)
		if e.activated(prepared) {
			t.Fatal("activated while the agents of ca-b do not hold the new root")
		}
		b.tracker.Ack("n3", v)
		b.tracker.Ack("n4", v)
		e.settle("the leader sees every node", func() bool { return a.view.Adopted(v) })
		a.mgr.RotateOnce(ctx)
		if !e.activated(prepared) {
			t.Fatal("not activated although every node holds the new root")
		}
		// Two replicas, two bundle-version changes of acks: each replica
		// wrote at most once per change (plus its first create).
		if w := e.writes.n.Load() - before; w > 2*3 {
			t.Errorf("%d ConfigMap writes for 4 acks on 2 replicas, want at most 6", w)
		}
	})

	t.Run("a deleted Node stops blocking", func(t *testing.T) {
		e := newEnv(t, c, "deleted", "d1", "d2")
		a := e.replica("ca-a")
		v, prepared := e.prepare(a)
		a.tracker.Ack("d1", v)
		a.mgr.RotateOnce(context.Background())
		if e.activated(prepared) {
			t.Fatal("activated while d2 does not hold the new root")
		}
		if err := c.Client.CoreV1().Nodes().Delete(context.Background(), "d2", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		e.settle("d2 no longer expected", func() bool { return a.view.Adopted(v) })
		a.mgr.RotateOnce(context.Background())
		if !e.activated(prepared) {
			t.Fatal("not activated after the blocking Node was deleted")
		}
	})

	t.Run("a node whose agent is down blocks until the maximum wait", func(t *testing.T) {
		e := newEnv(t, c, "down", "w1", "w2", "w3")
		a, b := e.replica("ca-a"), e.replica("ca-b")
		v, prepared := e.prepare(a)
		a.tracker.Ack("w1", v)
		b.tracker.Ack("w2", v)
		e.settle("only w3 pending", func() bool { return slices.Equal(e.pending(a, v), []string{"w3"}) })
		a.mgr.RotateOnce(context.Background())
		if e.activated(prepared) {
			t.Fatal("activated while w3 does not hold the new root")
		}
		col := &adoption.Collector{View: a.view, Now: e.clock.Now, Wait: func() (string, time.Time, bool) {
			l, _ := a.mgr.Current()
			return adoption.RootWait(l, testPolicy())
		}}
		st := col.StatusOf()
		if st == nil || st.Pending != 1 || !slices.Equal(st.PendingNodes, []string{"w3"}) || st.WaitRemaining <= 0 || st.WaitRemaining > testPolicy().RootAckWait {
			t.Fatalf("status = %+v, want w3 pending and the wait running", st)
		}
		e.clock.Set(prepared.Root.NextPublishedAt.Add(testPolicy().RootAckWait))
		a.mgr.RotateOnce(context.Background())
		if !e.activated(prepared) {
			t.Fatal("not activated after rotation.rootAckWait")
		}
	})

	t.Run("the operator override activates despite pending nodes", func(t *testing.T) {
		e := newEnv(t, c, "override", "o1", "o2")
		a := e.replica("ca-a")
		_, prepared := e.prepare(a)
		if err := authority.RequestRootActivation(context.Background(), e.store); err != nil {
			t.Fatal(err)
		}
		if err := a.mgr.Reload(context.Background()); err != nil {
			t.Fatal(err)
		}
		a.mgr.RotateOnce(context.Background())
		if !e.activated(prepared) {
			t.Fatal("the override did not activate the next root")
		}
		if s := e.state(); s.Root.ActivateNow || s.Root.Requested {
			t.Fatal("the override stayed set after the activation")
		}
	})

	t.Run("the leader dies after prepare: the other replica completes the rotation", func(t *testing.T) {
		e := newEnv(t, c, "failover", "f1", "f2")
		a, b := e.replica("ca-a"), e.replica("ca-b")
		v, prepared := e.prepare(a)
		a.tracker.Ack("f1", v)
		e.settle("ca-b sees f1 through ca-a's record", func() bool { return b.gatherer.Holds("f1", v) })
		a.stop() // ca-a is gone; its record goes stale, its agent reconnects to ca-b
		e.clock.Advance(11 * time.Minute)
		e.settle("ca-a's record is stale", func() bool { _, stale := b.gatherer.Replicas(); return slices.Contains(stale, "mayfly-adoption-ca-a") })
		if b.view.Adopted(v) {
			t.Fatal("a gone replica's record still counts")
		}
		b.tracker.Ack("f1", v)
		b.tracker.Ack("f2", v)
		ctx := context.Background()
		if err := b.mgr.Reload(ctx); err != nil {
			t.Fatal(err)
		}
		gen := e.state().Generation
		b.mgr.RotateOnce(ctx)
		if !e.activated(prepared) {
			t.Fatal("the new leader did not activate the root the old leader prepared")
		}
		after := e.state()
		if len(after.Root.Retired) != 1 || after.Root.Next != nil || after.Generation != gen+1 {
			t.Fatalf("after failover: %d retired roots, next %v, generation %d (was %d)", len(after.Root.Retired), after.Root.Next != nil, after.Generation, gen)
		}
		// The old leader comes back with its stale state: its save
		// conflicts, and no second activation happens.
		a.mgr.RotateOnce(ctx)
		a.mgr.RotateOnce(ctx)
		again := e.state()
		if !again.Root.Current.Cert().Equal(after.Root.Current.Cert()) || !again.Intermediate.Current.Cert().Equal(after.Intermediate.Current.Cert()) || len(again.Root.Retired) != 1 {
			t.Fatal("the returning old leader changed the rotated state")
		}
	})

	t.Run("the leader dies after activate: the other replica carries on", func(t *testing.T) {
		e := newEnv(t, c, "failover-late", "g1")
		a, b := e.replica("ca-a"), e.replica("ca-b")
		v, prepared := e.prepare(a)
		a.tracker.Ack("g1", v)
		a.mgr.RotateOnce(context.Background())
		if !e.activated(prepared) {
			t.Fatal("not activated")
		}
		a.stop()
		after := e.state()
		if err := b.mgr.Reload(context.Background()); err != nil {
			t.Fatal(err)
		}
		b.mgr.RotateOnce(context.Background())
		now := e.state()
		if now.Generation != after.Generation || !now.Intermediate.Current.Cert().Equal(after.Intermediate.Current.Cert()) {
			t.Fatal("the new leader rotated again right after the old leader's activation")
		}
		l, err := b.mgr.Current()
		if err != nil || !l.State.Root.Current.Cert().Equal(prepared.Root.Next.Cert()) {
			t.Fatal("the new leader does not sign under the activated root")
		}
	})
}

func nsObject(name string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
}

var createOpts = metav1.CreateOptions{}
