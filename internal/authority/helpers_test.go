package authority_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// t0 is the fake start of every test's clock, on a whole second so that the
// rotation points computed from certificates are exact.
var t0 = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

var td = spiffeid.RequireTrustDomainFromString("example.org")

// testPolicy rotates fast enough to walk a root's whole life in a test: a
// 10-day root, 1-day intermediates, and an ack wait longer than the time
// between the root's prepare and activate points (so the wait is visible).
func testPolicy() authority.Policy {
	return authority.Policy{
		RootTTL:         240 * time.Hour,
		IntermediateTTL: 24 * time.Hour,
		PrepareAt:       0.5,
		ActivateAt:      2.0 / 3.0,
		RootAckWait:     72 * time.Hour,
		// The JWT key outlives every horizon of the X.509 tests (3 root
		// lifetimes); jwtkey_test.go rotates it with its own policy.
		JWTKeyTTL: 20 * 240 * time.Hour,
	}
}

func newMinter(p authority.Policy) *authority.Minter {
	return &authority.Minter{TrustDomain: td, Policy: p, KeyType: pki.KeyTypeECDSAP256, Rand: rand.Reader}
}

func bootstrap(t *testing.T, m *authority.Minter, now time.Time) *authority.State {
	t.Helper()
	s, err := m.Bootstrap(context.Background(), now)
	if err != nil {
		t.Fatalf("Bootstrap: %v", err)
	}
	return s
}

func apply(t *testing.T, m *authority.Minter, s *authority.State, step authority.Step, now time.Time) *authority.State {
	t.Helper()
	n, err := m.Apply(context.Background(), s, step, now)
	if err != nil {
		t.Fatalf("Apply(%s): %v", step, err)
	}
	return n
}

// point is the instant at fraction f of c's life.
func point(c *x509.Certificate, f float64) time.Time {
	life := c.NotAfter.Sub(c.NotBefore)
	return c.NotBefore.Add(time.Duration(float64(life) * f))
}

// signLeaf issues a workload X.509-SVID from auth at now.
func signLeaf(t *testing.T, auth pki.Authority, now time.Time) *x509.Certificate {
	t.Helper()
	key, err := pki.GenerateKey(pki.KeyTypeECDSAP256, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, err := pki.WorkloadID(td, "default", "web")
	if err != nil {
		t.Fatal(err)
	}
	s := &pki.Signer{Authority: auth, Now: func() time.Time { return now }, Rand: rand.Reader, Options: pki.DefaultWorkloadOptions()}
	cert, _, err := s.Sign(pki.SignRequest{Kind: pki.KindWorkload, PublicKey: key.Public(), ID: id, TTL: time.Hour})
	if err != nil {
		t.Fatalf("signing a leaf: %v", err)
	}
	return cert
}

// verifyLeaf verifies leaf as a relying party holding roots would, with the
// chain the issuing authority presents.
func verifyLeaf(leaf *x509.Certificate, auth pki.Authority, roots []*x509.Certificate, now time.Time) error {
	inter := append([]*x509.Certificate{auth.Cert}, auth.Chain...)
	_, err := pki.VerifyX509SVID(leaf, inter, roots, now, x509.ExtKeyUsageClientAuth)
	return err
}

func containsCert(certs []*x509.Certificate, c *x509.Certificate) bool {
	return slices.ContainsFunc(certs, func(o *x509.Certificate) bool { return o.Equal(c) })
}

// fakeUpstream is an upstream CA held in memory: a self-signed root that
// signs the intermediates mayfly asks for.
type fakeUpstream struct {
	root *x509.Certificate
	key  crypto.Signer
	now  func() time.Time
	// extra are roots the upstream lists beside its own.
	extra []*x509.Certificate
}

func newFakeUpstream(t *testing.T, now func() time.Time) *fakeUpstream {
	t.Helper()
	key, err := pki.GenerateKey(pki.KeyTypeECDSAP256, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	root, err := pki.SelfSignedRoot(key, td, 365*24*time.Hour, now(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &fakeUpstream{root: root, key: key, now: now}
}

func (u *fakeUpstream) SignIntermediate(_ context.Context, req authority.IntermediateRequest) (chain, roots []*x509.Certificate, err error) {
	c, err := authority.SignIntermediate(u.root, u.key, req.Key.Public(), req.TrustDomain, req.TTL, u.now(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	return []*x509.Certificate{c}, append([]*x509.Certificate{u.root}, u.extra...), nil
}

func (u *fakeUpstream) Name() string { return "fake" }

// memMarker is a Marker that remembers marks in memory. onMarked, when set,
// runs inside Marked (to interleave another replica deterministically).
type memMarker struct {
	mu       sync.Mutex
	marks    [][]byte
	onMarked func()
}

func (m *memMarker) Marked(context.Context) (bool, error) {
	m.mu.Lock()
	hook := m.onMarked
	m.onMarked = nil
	m.mu.Unlock()
	if hook != nil {
		hook()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.marks) > 0, nil
}

func (m *memMarker) Mark(_ context.Context, bundlePEM []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.marks = append(m.marks, slices.Clone(bundlePEM))
	return nil
}

func (m *memMarker) last() []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.marks) == 0 {
		return nil
	}
	return m.marks[len(m.marks)-1]
}
