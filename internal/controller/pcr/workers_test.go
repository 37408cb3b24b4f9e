package pcr_test

import (
	"crypto/elliptic"
	"fmt"
	"sync"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mayfly-pki/mayfly/internal/controller/pcr"
	"github.com/mayfly-pki/mayfly/internal/kubenodes"
	"github.com/mayfly-pki/mayfly/internal/policy"
	"github.com/mayfly-pki/mayfly/internal/test/cluster"
	"github.com/mayfly-pki/mayfly/internal/test/fakeauthority"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
)

// gatedPods is the signer's pod source with a gate: every lookup waits
// until the test opens it, and the lookups in flight are counted, in all
// and per pod.
type gatedPods struct {
	next *kubenodes.PodCache
	open chan struct{}

	mu        sync.Mutex
	inFlight  int
	maxAtOnce int
	perPod    map[string]int
	twice     []string // pods looked up by two workers at once
}

func (g *gatedPods) HasSynced() bool { return g.next.HasSynced() }

func (g *gatedPods) ByUID(uid string) (policy.Pod, bool) {
	g.mu.Lock()
	g.inFlight++
	g.maxAtOnce = max(g.maxAtOnce, g.inFlight)
	g.perPod[uid]++
	if g.perPod[uid] > 1 {
		g.twice = append(g.twice, uid)
	}
	g.mu.Unlock()
	<-g.open
	g.mu.Lock()
	g.inFlight--
	g.perPod[uid]--
	g.mu.Unlock()
	return g.next.ByUID(uid)
}

func (g *gatedPods) state() (inFlight, most int, twice []string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.inFlight, g.maxAtOnce, append([]string(nil), g.twice...)
}

// TestSignerWorkers checks that the signer decides Workers requests at
// once (a request waiting on the API server does not hold up the others)
// and never more, and that no request is decided by two workers at once.
func TestSignerWorkers(t *testing.T) {
	e := newEnv(t)
	tca := signingCA(t)
	pods := &gatedPods{next: e.podCache(t), open: make(chan struct{}), perPod: map[string]int{}}
	t.Cleanup(func() {
		select {
		case <-pods.open:
		default:
			close(pods.open)
		}
	})

	const workers, requests = 3, 8
	e.startSigner(t, &pcr.Reconciler{
		Authority:   fakeauthority.New(fakeauthority.Loaded(tca, "v1"), nil),
		Pods:        pods,
		TrustDomain: tca.TrustDomain,
		Workers:     workers,
	})
	const ns = "team-w"
	e.namespace(t, ns)
	for i := range requests {
		p := e.pod(t, ns, fmt.Sprint("web-", i), "node-1", "web-sa")
		e.createPCR(t, ns, request{name: fmt.Sprint("req-", i), signer: pcr.DefaultSignerName, pod: p, node: "node-1", sa: "web-sa", maxExp: 3600, key: ecKey(t, elliptic.P256())})
	}
	wait.Within(t, fmt.Sprintf("%d requests decided at once", workers), cluster.PollTimeout, cluster.PollEvery, func() bool {
		n, _, _ := pods.state()
		return n == workers
	})
	close(pods.open)
	for i := range requests {
		req := e.waitDecided(t, ns, fmt.Sprint("req-", i))
		if c := req.Status.Conditions[0]; c.Type != "Issued" || c.Status != metav1.ConditionTrue {
			t.Errorf("req-%d: %s=%s (%s), want Issued", i, c.Type, c.Status, c.Message)
		}
	}
	if _, most, twice := pods.state(); most != workers || len(twice) > 0 {
		t.Errorf("at most %d requests decided at once (want %d); pods looked up by two workers at once: %q", most, workers, twice)
	}
}
