package agent

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/test/promtest"
	"github.com/mayfly-pki/mayfly/internal/test/testca"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
	"github.com/mayfly-pki/mayfly/pkg/pki"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// epoch is where every fake clock of these tests starts.
var epoch = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// waitTimeout bounds every wait of these tests; nothing waits this long
// unless the code under test is stuck.
const waitTimeout = 20 * time.Second

// testPolicy renews at exactly half of the lifetime (no jitter), so a
// test knows where the renewal point lies.
func testPolicy() rotate.Policy { return rotate.Policy{RenewFraction: 0.5} }

// fakeCA is a Signer that answers like the issuer: it checks each CSR and
// signs it with a test CA, and answers per item; IDs and pods it was not
// told about are denied.
type fakeCA struct {
	t      *testing.T
	now    func() time.Time
	tca    *testca.CA
	signer *pki.Signer

	mu      sync.Mutex
	calls   int
	items   []*issuerv1.WorkloadRequest
	changed chan struct{} // closed and replaced after every call
	granted map[string]bool
	pods    map[string]string               // pod UID -> SPIFFE ID
	denials map[string]issuerv1.Denial_Code // SPIFFE ID or pod UID -> denial
	forge   map[string]string               // SPIFFE ID -> "other-id", "other-key" or "other-ca"
	err     error                           // fails the whole batch when set
	gate    chan struct{}                   // when set, calls wait for it to close
}

func newFakeCA(t *testing.T, clk *rotate.FakeClock) *fakeCA {
	t.Helper()
	tca := testca.New(t, testca.WithClock(clk.Now))
	return &fakeCA{
		t:       t,
		now:     clk.Now,
		tca:     tca,
		signer:  tca.Signer(clk.Now),
		changed: make(chan struct{}),
		granted: map[string]bool{},
		pods:    map[string]string{},
		denials: map[string]issuerv1.Denial_Code{},
		forge:   map[string]string{},
	}
}

// forgeFor makes the CA answer requests for id with a certificate the agent
// must refuse: for another ID ("other-id"), another key ("other-key") or
// from another CA ("other-ca").
func (f *fakeCA) forgeFor(id, how string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.forge[id] = how
}

func (f *fakeCA) grant(ids ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, id := range ids {
		f.granted[id] = true
	}
}

func (f *fakeCA) pod(uid, id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pods[uid] = id
}

func (f *fakeCA) deny(what string, code issuerv1.Denial_Code) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.denials[what] = code
}

func (f *fakeCA) failWith(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
}

// hold makes every call wait until the returned function is called.
func (f *fakeCA) hold() (release func()) {
	gate := make(chan struct{})
	f.mu.Lock()
	f.gate = gate
	f.mu.Unlock()
	var once sync.Once
	return func() { once.Do(func() { close(gate) }) }
}

func (f *fakeCA) SignWorkloads(ctx context.Context, reqs []*issuerv1.WorkloadRequest) ([]*issuerv1.WorkloadResult, error) {
	f.mu.Lock()
	gate, batchErr := f.gate, f.err
	f.items = append(f.items, reqs...)
	f.notifyLocked()
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.calls++
		f.notifyLocked()
		f.mu.Unlock()
	}()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if batchErr != nil {
		return nil, batchErr
	}
	out := make([]*issuerv1.WorkloadResult, 0, len(reqs))
	for _, r := range reqs {
		out = append(out, f.sign(r))
	}
	return out, nil
}

func (f *fakeCA) sign(r *issuerv1.WorkloadRequest) *issuerv1.WorkloadResult {
	res := &issuerv1.WorkloadResult{RequestId: r.GetRequestId()}
	deny := func(code issuerv1.Denial_Code, format string, args ...any) *issuerv1.WorkloadResult {
		res.Result = &issuerv1.WorkloadResult_Denial{Denial: &issuerv1.Denial{Code: code, Message: fmt.Sprintf(format, args...)}}
		return res
	}
	f.mu.Lock()
	id := r.GetSpiffeId()
	code, denied := f.denials[id]
	if uid := r.GetPodUid(); uid != "" {
		var known bool
		id, known = f.pods[uid]
		code, denied = f.denials[uid]
		if !known && !denied {
			code, denied = issuerv1.Denial_NOT_FOUND, true
		}
	} else if !denied && !f.granted[id] {
		code, denied = issuerv1.Denial_PERMISSION_DENIED, true
	}
	forge := f.forge[id]
	f.mu.Unlock()
	if denied {
		return deny(code, "fake CA refuses %s%s", id, r.GetPodUid())
	}
	csr, err := pki.ParseCSR(r.GetCsr())
	if err != nil {
		return deny(issuerv1.Denial_INVALID_ARGUMENT, "csr: %v", err)
	}
	sid, err := spiffeid.FromString(id)
	if err != nil {
		return deny(issuerv1.Denial_INVALID_ARGUMENT, "spiffe_id: %v", err)
	}
	ttl := time.Duration(r.GetTtlSeconds()) * time.Second
	if ttl == 0 {
		ttl = time.Hour
	}
	pub, signer, inter := csr.PublicKey, f.signer, f.tca.Intermediate
	switch forge {
	case "other-id":
		sid = spiffeid.RequireFromPath(sid.TrustDomain(), "/ns/kube-system/sa/admin")
	case "other-key":
		k, err := pki.GenerateKey(pki.KeyTypeECDSAP256, rand.Reader)
		if err != nil {
			return deny(issuerv1.Denial_INTERNAL, "%v", err)
		}
		pub = k.Public()
	case "other-ca":
		other := testca.New(f.t, testca.WithClock(f.now))
		signer, inter = other.Signer(f.now), other.Intermediate
	}
	leaf, der, err := signer.Sign(pki.SignRequest{Kind: pki.KindWorkload, PublicKey: pub, ID: sid, DNSNames: r.GetDnsNames(), TTL: ttl})
	if err != nil {
		return deny(issuerv1.Denial_INVALID_ARGUMENT, "%v", err)
	}
	res.Result = &issuerv1.WorkloadResult_Issued{Issued: &issuerv1.Issued{
		SpiffeId:         id,
		CertificateChain: [][]byte{der, inter.Raw},
		NotAfterUnix:     leaf.NotAfter.Unix(),
		SerialNumber:     leaf.SerialNumber.Text(16),
	}}
	return res
}

func (f *fakeCA) notifyLocked() {
	close(f.changed)
	f.changed = make(chan struct{})
}

// waitCalls blocks until the fake CA has answered n calls in all.
func (f *fakeCA) waitCalls(t *testing.T, n int) {
	t.Helper()
	f.waitUntil(t, fmt.Sprintf("%d answered calls", n), func() bool { return f.calls >= n })
}

// waitItems blocks until the fake CA has received n request items in all
// (answered or not).
func (f *fakeCA) waitItems(t *testing.T, n int) {
	t.Helper()
	f.waitUntil(t, fmt.Sprintf("%d request items", n), func() bool { return len(f.items) >= n })
}

// waitUntil waits, without polling, until cond holds under f.mu.
func (f *fakeCA) waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(waitTimeout)
	for {
		f.mu.Lock()
		ok, changed := cond(), f.changed
		f.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("the fake CA never saw %s", what)
		}
	}
}

func (f *fakeCA) counts() (calls, items int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls, len(f.items)
}

func (f *fakeCA) podUIDsAsked() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, r := range f.items {
		if uid := r.GetPodUid(); uid != "" {
			out = append(out, uid)
		}
	}
	return out
}

// staticBundle is a BundleSource that never changes.
type staticBundle []*x509.Certificate

func (b staticBundle) Bundle() ([]*x509.Certificate, string) { return b, "v1" }

func (staticBundle) SubscribeBundle() (<-chan struct{}, func()) {
	return make(chan struct{}), func() {}
}

// recv waits for one value from ch.
func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitTimeout):
		t.Fatalf("timed out waiting for %s", what)
		var zero T
		return zero
	}
}

// eventually polls cond; only for effects that have no event to wait on,
// such as a goroutine that stops a timer on its way out. Never used to wait
// for a rotation: the fake clock drives those.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	wait.Within(t, what, waitTimeout, time.Millisecond, cond)
}

// run starts f in a goroutine and, at cleanup, cancels it and checks that
// it returned nil. It returns the cancel function, which also waits.
func run(t *testing.T, name string, f func(context.Context) error) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("%s returned %v", name, err)
				}
			case <-time.After(waitTimeout):
				t.Errorf("%s did not return after its context ended", name)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func newCSR(t *testing.T) (crypto.Signer, []byte) {
	t.Helper()
	key := testca.Key(t)
	return key, testca.CSR(t, key)
}

// gather returns the families of reg, after checking them with promlint.
func gather(t *testing.T, reg *prometheus.Registry) []*dto.MetricFamily {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatalf("promlint: %v", err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
	return mfs
}

// sample returns the value of the series of name whose labels include
// labels (name="value" pairs), and whether there is one.
func sample(t *testing.T, reg *prometheus.Registry, name string, labels ...string) (float64, bool) {
	t.Helper()
	return promtest.Find(gather(t, reg), name, labels...)
}

func mustSample(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	v, ok := sample(t, reg, name, labels...)
	if !ok {
		t.Fatalf("no series %s%v", name, labels)
	}
	return v
}
