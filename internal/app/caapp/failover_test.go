package caapp_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/app/caapp"
	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/issuerclient"
	"github.com/mayfly-pki/mayfly/internal/test/authoritytest"
	"github.com/mayfly-pki/mayfly/internal/test/cluster"
	"github.com/mayfly-pki/mayfly/internal/test/testca"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// failoverConfig is kubeConfig with short leases (a dead leader's lease
// runs out 4s after its last renewal) and no kubelet propagation delay.
const failoverConfig = kubeConfig + `  leaseDuration: 4s
  renewDeadline: 3s
  retryPeriod: 500ms
rotation: {kubernetesPropagationDelay: 0s}
`

// TestKubernetesLeaderFailoverMidRotation runs CA replicas with real
// leader election (controller-runtime's, on a Lease) against one API
// server and one state Secret, and kills the leader in the middle of root
// rotations: after the next root is prepared but before it activates, and
// right after it activated; abruptly (its API server connection cut, so it
// can neither renew nor release the lease) and by stopping it (the lease
// released). Each time the other replica takes the lease and completes the
// rotation. Verdicts: the activated root is the one the dead leader
// prepared (no slot lost or minted twice), exactly one new intermediate per
// rotation ever reaches the Secret, and no leaf either replica signs
// chains to a root that some agent has not acknowledged.
func TestKubernetesLeaderFailoverMidRotation(t *testing.T) {
	c := cluster.Start(t)
	ctx := context.Background()
	kube := c.Client
	create(t, kube.CoreV1().Namespaces().Create, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "mayfly-system"}})
	create(t, kube.CoreV1().Namespaces().Create, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "app"}})
	create(t, kube.CoreV1().ServiceAccounts("mayfly-system").Create, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "mayfly-agent"}})
	create(t, kube.CoreV1().ServiceAccounts("app").Create, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "web"}})
	history := watchStates(t, kube)

	clock := rotate.NewFakeClock(time.Now())
	var replicas []*failoverReplica
	start := func() *failoverReplica {
		r := startFailoverReplica(t, c, clock, len(replicas)+1)
		replicas = append(replicas, r)
		return r
	}
	holder := func() string {
		l, err := kube.CoordinationV1().Leases("mayfly-system").Get(ctx, "mayfly-ca", metav1.GetOptions{})
		if err != nil || l.Spec.HolderIdentity == nil {
			return ""
		}
		return *l.Spec.HolderIdentity
	}
	// The first replica leads: the second starts once it holds the lease.
	leader := start()
	wait.For(t, "the first replica takes the lease", func() bool { return holder() != "" })
	other := start()

	roots := trustRoots(t, kube)
	var agents []*simAgent
	for _, node := range []string{"node-a", "node-b"} {
		create(t, kube.CoreV1().Nodes().Create, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}})
		agents = append(agents, newSimAgent(t, kube, clock, node, roots))
	}
	a, b := agents[0], agents[1]
	// The agents hang up before the replicas stop (their issuer API drains
	// open streams for 5s of the fake clock).
	defer func() {
		for _, ag := range agents {
			ag.hangUp()
		}
	}()
	defer func() {
		if t.Failed() {
			for i, r := range replicas {
				t.Logf("replica %d logs:\n%s", i+1, r.p.logs)
			}
		}
	}()
	// checkLeaf is the verdict on every leaf signed: its root is in the
	// bundle every agent acknowledged.
	signed := 0
	checkLeaf := func(chain []*x509.Certificate) {
		t.Helper()
		signed++
		for _, ag := range agents {
			if !slices.ContainsFunc(ag.acked(), func(r *x509.Certificate) bool { return chain[len(chain)-1].CheckSignatureFrom(r) == nil }) {
				t.Fatalf("leaf %s signed under a root that the agent of %s has not acknowledged", chain[0].SerialNumber.Text(16), ag.node)
			}
		}
	}
	// step moves the CA's clock on a second (adoption records are
	// published at most every 2s, the rotation loop retries every 10s) and
	// signs a leaf through each agent's replica.
	step := func() {
		clock.Advance(time.Second)
		for _, ag := range agents {
			if chain := ag.sign(); chain != nil {
				checkLeaf(chain)
			}
		}
	}
	// stepUntil steps every 200ms until cond holds: at most 5s of the CA's
	// clock per second, so that the agents' 1h SVIDs outlive the test. Two
	// minutes: a new leader's caches sync slowly on a loaded machine (one
	// minute timed out at a load average of 30).
	stepUntil := func(what string, cond func() bool) {
		t.Helper()
		wait.Within(t, what, 2*time.Minute, 200*time.Millisecond, func() bool { step(); return cond() })
	}
	store := authority.NewSecretStore(kube, "mayfly-system", "mayfly-ca")
	state := func() *authority.State { s, _ := authoritytest.Stored(t, store); return s }

	for i, round := range []struct {
		name                  string
		abrupt, afterActivate bool
	}{
		{"abrupt kill after prepare", true, false},
		{"stop with release after activate", false, true},
		{"stop with release after prepare", false, false},
		{"abrupt kill after activate", true, true},
	} {
		t.Logf("round %d: %s", i+1, round.name)
		// Agent a talks to the leader, agent b to the other replica.
		a.connect(leader)
		b.connect(other)
		before := state()
		stepUntil("both agents acknowledge the bundle in force", func() bool {
			return a.holds(before.Root.Current.Cert()) && b.holds(before.Root.Current.Cert())
		})
		b.holdAcks(!round.afterActivate)
		if err := authority.RequestRootRotation(ctx, store); err != nil {
			t.Fatal(err)
		}
		var next *x509.Certificate
		stepUntil("the leader prepares the next root", func() bool {
			if s := state(); s.Root.Next != nil {
				next = s.Root.Next.Cert()
			}
			return next != nil
		})
		if round.afterActivate {
			stepUntil("the leader activates the next root", func() bool {
				return state().Root.Current.Cert().Equal(next)
			})
		} else {
			stepUntil("agent a acknowledges the next root", func() bool { return a.holds(next) })
			// Past the loop's 10s retry: agent b holds the activation back.
			steps := 0
			stepUntil("15s of the CA's clock", func() bool { steps++; return steps == 15 })
			if s := state(); !s.Root.Current.Cert().Equal(before.Root.Current.Cert()) {
				t.Fatal("the next root activated while agent b had not acknowledged it")
			}
		}
		activated := state()
		was := holder()
		took := time.Now()
		if round.abrupt {
			leader.proxy.cut()
		} else {
			leader.p.stop()
		}
		// Its issuer API drains for up to 5s of the CA's clock.
		stepUntil("the old leader stops", func() bool {
			select {
			case <-leader.p.exited:
				return true
			default:
				return false
			}
		})
		switch err := leader.p.err; {
		case round.abrupt && (err == nil || !strings.Contains(err.Error(), "leader election lost")):
			t.Fatalf("the cut-off leader returned %v, want leader election lost", err)
		case !round.abrupt && err != nil:
			t.Fatalf("the stopped leader: %v", err)
		}
		leader.p.errChecked = true
		wait.For(t, "the other replica takes the lease", func() bool { h := holder(); return h != "" && h != was })
		t.Logf("round %d: the lease changed hands %s after the leader died", i+1, time.Since(took).Round(100*time.Millisecond))
		// The dead leader's agent reconnects to the new leader.
		a.connect(other)
		b.holdAcks(false)
		stepUntil("the new leader completes the rotation", func() bool {
			s := state()
			return s.Root.Current.Cert().Equal(next) && a.holds(next) && b.holds(next)
		})
		after := state()
		if !slices.ContainsFunc(after.Root.Retired, func(r authority.Retired) bool { return r.Cert.Equal(before.Root.Current.Cert()) }) {
			t.Fatal("the previous root is not kept as retired after the rotation")
		}
		if round.afterActivate && !after.Intermediate.Current.Cert().Equal(activated.Intermediate.Current.Cert()) {
			t.Fatal("the new leader replaced the intermediate the old leader activated")
		}
		for _, ag := range agents {
			stepUntil("a leaf under the new root through "+ag.node, func() bool {
				chain := ag.sign()
				return chain != nil && chain[len(chain)-1].CheckSignatureFrom(next) == nil
			})
		}
		// Two replicas again for the next round.
		leader, other = other, start()
	}

	roots0, inters := history.seen(t)
	if want := 5; len(roots0) != want || len(inters) != want {
		t.Fatalf("the Secret held %d current roots and %d current intermediates over 4 root rotations, want %d each: a slot was lost or activated twice", len(roots0), len(inters), want)
	}
	t.Logf("4 failovers: %d leaves signed and checked, %d roots and %d intermediates ever current", signed, len(roots0), len(inters))
}

// failoverReplica is a CA replica whose API server connection goes
// through proxy.
type failoverReplica struct {
	p     *caProcess
	proxy *apiProxy
}

func startFailoverReplica(t *testing.T, c *cluster.Cluster, clock rotate.Clock, n int) *failoverReplica {
	t.Helper()
	cfg := rest.CopyConfig(c.Config)
	u, err := url.Parse(cfg.Host)
	if err != nil || u.Host == "" {
		t.Fatalf("API server address %q: %v", cfg.Host, err)
	}
	proxy := newAPIProxy(t, u.Host)
	u.Host = proxy.addr()
	cfg.Host = u.String()
	p := runCA(t, failoverConfig, caapp.Options{RestConfig: cfg, Clock: clock, Replica: "ca-" + string(rune('0'+n))})
	select {
	case <-p.served:
	case <-p.exited:
		t.Fatalf("replica %d exited before it served", n)
	}
	return &failoverReplica{p: p, proxy: proxy}
}

// apiProxy forwards TCP connections to the API server until cut: then the
// replica behind it loses the API server at once, as when its process or
// its node dies.
type apiProxy struct {
	lis   net.Listener
	mu    sync.Mutex
	conns []net.Conn
	done  bool
}

func newAPIProxy(t *testing.T, target string) *apiProxy {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &apiProxy{lis: lis}
	t.Cleanup(p.cut)
	go func() {
		for {
			in, err := lis.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			if !p.track(in, out) {
				return
			}
			go func() { _, _ = io.Copy(out, in); out.Close() }()
			go func() { _, _ = io.Copy(in, out); in.Close() }()
		}
	}()
	return p
}

func (p *apiProxy) addr() string { return p.lis.Addr().String() }

func (p *apiProxy) track(conns ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		for _, c := range conns {
			c.Close()
		}
		return false
	}
	p.conns = append(p.conns, conns...)
	return true
}

// cut closes the listener and every connection.
func (p *apiProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done = true
	p.lis.Close()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// simAgent is a node agent as the CA sees it: attested with its pod's
// ServiceAccount token, on one replica's WatchBundle stream, acknowledging
// each bundle it receives (unless told to hold back), and signing the
// leaf of a pod on its node.
type simAgent struct {
	t     *testing.T
	node  string
	token string
	pod   *corev1.Pod // the workload on the node
	clock rotate.Clock

	mu      sync.Mutex
	trusted []*x509.Certificate // every root received (to verify the CA)
	holding bool
	last    *issuerv1.Bundle // received, not acknowledged while holding
	ack     []*x509.Certificate
	client  issuerv1.IssuerClient
	stream  issuerv1.Issuer_WatchBundleClient
	close   func()
}

func newSimAgent(t *testing.T, kube kubernetes.Interface, clock rotate.Clock, node string, roots []*x509.Certificate) *simAgent {
	t.Helper()
	pod := cluster.CreatePod(t, kube, "mayfly-system", "agent-"+node, "mayfly-agent", node)
	web := cluster.CreatePod(t, kube, "app", "web-"+node, "web", node)
	ag := &simAgent{t: t, node: node, token: agentToken(t, kube, pod), pod: web, clock: clock, trusted: roots, ack: roots}
	t.Cleanup(ag.hangUp)
	return ag
}

// hangUp closes the agent's connection, if any.
func (ag *simAgent) hangUp() {
	ag.mu.Lock()
	defer ag.mu.Unlock()
	if ag.close != nil {
		ag.close()
		ag.close = nil
	}
	ag.client, ag.stream = nil, nil
}

func (ag *simAgent) dial(r *failoverReplica, cert *tls.Certificate) (issuerv1.IssuerClient, func()) {
	ag.t.Helper()
	conn, client, err := issuerclient.Dial(issuerclient.Config{
		Address: r.p.addr, TrustDomain: td, Now: ag.clock.Now,
		Bundle: func() []*x509.Certificate {
			ag.mu.Lock()
			defer ag.mu.Unlock()
			return ag.trusted
		},
		Certificate: func() *tls.Certificate { return cert },
	})
	if err != nil {
		ag.t.Fatal(err)
	}
	return client, func() { _ = conn.Close() }
}

// connect attests to replica r (closing any earlier connection) and opens
// its WatchBundle stream.
func (ag *simAgent) connect(r *failoverReplica) {
	ag.t.Helper()
	ag.hangUp()
	key := testca.Key(ag.t)
	var cert *tls.Certificate
	wait.For(ag.t, "attestation of the agent of "+ag.node, func() bool {
		client, closeConn := ag.dial(r, nil)
		defer closeConn()
		resp, err := client.AttestAgent(context.Background(), &issuerv1.AttestAgentRequest{Csr: testca.CSR(ag.t, key),
			Credential: &issuerv1.AttestAgentRequest_ServiceAccountToken{ServiceAccountToken: ag.token}})
		if err != nil {
			return false
		}
		cert = &tls.Certificate{Certificate: resp.GetCertificateChain(), PrivateKey: key}
		return true
	})
	client, closeConn := ag.dial(r, cert)
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := client.WatchBundle(ctx)
	if err != nil {
		ag.t.Fatal(err)
	}
	ag.mu.Lock()
	ag.client, ag.stream = client, stream
	ag.close = func() { cancel(); closeConn() }
	ag.mu.Unlock()
	go func() {
		for {
			b, err := stream.Recv()
			if err != nil {
				return
			}
			ag.received(stream, b)
		}
	}()
}

func (ag *simAgent) received(stream issuerv1.Issuer_WatchBundleClient, b *issuerv1.Bundle) {
	ag.mu.Lock()
	defer ag.mu.Unlock()
	if stream != ag.stream {
		return // an earlier connection's
	}
	for _, der := range b.GetX509Authorities() {
		if c, err := x509.ParseCertificate(der); err == nil && !slices.ContainsFunc(ag.trusted, c.Equal) {
			ag.trusted = append(ag.trusted, c)
		}
	}
	ag.last = b
	if !ag.holding {
		ag.acknowledge()
	}
}

// acknowledge sends the ack of the last bundle received; mu is held.
func (ag *simAgent) acknowledge() {
	if ag.last == nil || ag.stream == nil {
		return
	}
	var roots []*x509.Certificate
	for _, der := range ag.last.GetX509Authorities() {
		if c, err := x509.ParseCertificate(der); err == nil {
			roots = append(roots, c)
		}
	}
	if err := ag.stream.Send(&issuerv1.BundleAck{Version: ag.last.GetVersion()}); err == nil {
		ag.ack = roots
	}
	ag.last = nil
}

// holdAcks stops (true) or resumes (false) the acknowledgements; resuming
// acknowledges the last bundle received.
func (ag *simAgent) holdAcks(hold bool) {
	ag.mu.Lock()
	defer ag.mu.Unlock()
	ag.holding = hold
	if !hold {
		ag.acknowledge()
	}
}

// acked returns the roots of the bundle the agent acknowledged last.
func (ag *simAgent) acked() []*x509.Certificate {
	ag.mu.Lock()
	defer ag.mu.Unlock()
	return ag.ack
}

func (ag *simAgent) holds(root *x509.Certificate) bool {
	return slices.ContainsFunc(ag.acked(), root.Equal)
}

// sign asks the agent's replica for a leaf of the pod on its node; nil
// when the replica does not answer (it died) or denies.
func (ag *simAgent) sign() []*x509.Certificate {
	ag.mu.Lock()
	client := ag.client
	ag.mu.Unlock()
	if client == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := client.SignWorkloads(ctx, &issuerv1.SignWorkloadsRequest{Requests: []*issuerv1.WorkloadRequest{
		{RequestId: "web", Csr: testca.CSR(ag.t, testca.Key(ag.t)), PodUid: string(ag.pod.UID)},
	}})
	if err != nil || resp.GetResults()[0].GetIssued() == nil {
		return nil
	}
	chain, err := issuerclient.ParseChain(resp.GetResults()[0].GetIssued().GetCertificateChain())
	if err != nil {
		ag.t.Fatal(err)
	}
	return chain
}

// stateHistory is every root and intermediate that was current in any
// version of the state Secret.
type stateHistory struct {
	mu            sync.Mutex
	roots, inters []*x509.Certificate
	errs          []error // versions that did not decode
}

func (h *stateHistory) seen(t *testing.T) (roots, inters []*x509.Certificate) {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := errors.Join(h.errs...); err != nil {
		t.Fatal(err)
	}
	return slices.Clone(h.roots), slices.Clone(h.inters)
}

// watchStates watches the state Secret from before it exists and records
// what each of its versions holds as current.
func watchStates(t *testing.T, kube kubernetes.Interface) *stateHistory {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	sel := fields.OneTermEqualSelector("metadata.name", "mayfly-ca").String()
	list, err := kube.CoreV1().Secrets("mayfly-system").List(ctx, metav1.ListOptions{FieldSelector: sel})
	if err != nil {
		t.Fatal(err)
	}
	w, err := watchtools.NewRetryWatcherWithContext(ctx, list.ResourceVersion, &cache.ListWatch{
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = sel
			return kube.CoreV1().Secrets("mayfly-system").Watch(ctx, o)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	h := &stateHistory{}
	add := func(list *[]*x509.Certificate, c *x509.Certificate) {
		if c != nil && !slices.ContainsFunc(*list, c.Equal) {
			*list = append(*list, c)
		}
	}
	go func() {
		for ev := range w.ResultChan() {
			sec, ok := ev.Object.(*corev1.Secret)
			if !ok || ev.Type == watch.Deleted {
				continue
			}
			s, err := authority.Decode(sec.Data)
			h.mu.Lock()
			if err != nil {
				h.errs = append(h.errs, fmt.Errorf("state Secret version %s: %w", sec.ResourceVersion, err))
			} else {
				add(&h.roots, s.Root.Current.Cert())
				add(&h.inters, s.Intermediate.Current.Cert())
			}
			h.mu.Unlock()
		}
	}()
	return h
}
