package authority

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// IntermediateRequest asks an upstream authority for an intermediate.
type IntermediateRequest struct {
	TrustDomain spiffeid.TrustDomain
	// Key is the new intermediate's key; upstreams that want a CSR build it
	// with this key (the key never leaves the process).
	Key crypto.Signer
	TTL time.Duration
}

// Upstream is an authority above mayfly that signs its intermediates: a CA
// given as a certificate and key (file or Secret), step-ca, cfssl.
type Upstream interface {
	// SignIntermediate returns the new intermediate's chain (the
	// intermediate first, then any upstream intermediates, no root) and the
	// upstream's trust roots.
	SignIntermediate(ctx context.Context, req IntermediateRequest) (chain, roots []*x509.Certificate, err error)
	// Name names the upstream for logs and status.
	Name() string
}

// Minter creates and rotates keys. Without an Upstream it manages a
// self-signed root.
type Minter struct {
	TrustDomain spiffeid.TrustDomain
	Policy      Policy
	Upstream    Upstream
	KeyType     pki.KeyType
	Rand        io.Reader
	// Keys, when set, generates and keeps the root and intermediate keys
	// (a PKCS#11 token); without it they are generated in memory and kept
	// in the state.
	Keys KeyStore
}

// Bootstrap creates the first state: a self-signed root and an
// intermediate, or an intermediate from the upstream.
func (m *Minter) Bootstrap(ctx context.Context, now time.Time) (*State, error) {
	s := &State{}
	if m.Upstream == nil {
		root, err := m.newRoot(ctx, now)
		if err != nil {
			return nil, err
		}
		s.Root.Current = root
	}
	inter, roots, err := m.newIntermediate(ctx, s.Root.Current, now)
	if err != nil {
		m.DiscardKeys(ctx, &State{}, s)
		return nil, err
	}
	s.Intermediate.Current = inter
	if m.Upstream != nil {
		s.UpstreamRoots = roots
	}
	if s.JWT.Current, err = m.newJWTKey(now); err != nil {
		return nil, err
	}
	return s, nil
}

// Apply returns a copy of s with step applied at now.
func (m *Minter) Apply(ctx context.Context, s *State, step Step, now time.Time) (*State, error) {
	n := *s
	root, inter, jwt := &n.Root, &n.Intermediate, &n.JWT
	switch step {
	case StepDropRetired:
		*root = root.withoutExpired(now)
		*jwt = jwt.withoutExpired(now)
		n.Taints = s.withoutExpiredTaints(now)
		var err error
		if n.KeyDeletions, err = deleteDueKeys(ctx, m.Keys, s.KeyDeletions, now); err != nil {
			return nil, err
		}
	case StepPrepareRoot:
		if root.Current == nil {
			return nil, errors.New("prepare root: an upstream owns the roots")
		}
		next, err := m.newRoot(ctx, now)
		if err != nil {
			return nil, err
		}
		*root = root.prepared(next, now, true)
	case StepActivateRoot:
		if root.Next == nil {
			return nil, errors.New("activate root: no next root")
		}
		cur, _, err := m.newIntermediate(ctx, root.Next, now)
		if err != nil {
			return nil, err
		}
		// The old root stays in the bundle while an intermediate under it
		// (and so a leaf) may still be in use.
		until := inter.Current.NotAfter()
		if inter.Next != nil {
			until = maxTime(until, inter.Next.NotAfter())
		}
		*root = root.activated(until)
		*inter = inter.replaced(cur)
	case StepPrepareIntermediate:
		next, roots, err := m.newIntermediate(ctx, root.Current, now)
		if err != nil {
			return nil, err
		}
		// A successor under a root the bundle did not hold yet waits,
		// like a new root of mayfly's own, until the consumers hold the
		// bundle that now carries it.
		published := m.Upstream != nil && anchorIsNew(s.Bundle(now), roots)
		*inter = inter.prepared(next, now, published)
		m.mergeUpstreamRoots(&n, roots)
		m.settleUpstreamRoots(&n, nil, roots)
	case StepActivateIntermediate:
		if inter.Next == nil {
			return nil, errors.New("activate intermediate: no next intermediate")
		}
		outgoing := inter.Current
		*inter = inter.activated(time.Time{})
		m.settleUpstreamRoots(&n, outgoing, nil)
	case StepReplaceIntermediate:
		cur, roots, err := m.newIntermediate(ctx, root.Current, now)
		if err != nil {
			return nil, err
		}
		outgoing := inter.Current
		*inter = inter.replaced(cur)
		m.mergeUpstreamRoots(&n, roots)
		m.settleUpstreamRoots(&n, outgoing, roots)
	case StepMintJWTKey:
		if jwt.Current != nil {
			return nil, errors.New("mint JWT key: there is one")
		}
		cur, err := m.newJWTKey(now)
		if err != nil {
			return nil, err
		}
		*jwt = jwt.replaced(cur)
	case StepPrepareJWTKey:
		next, err := m.newJWTKey(now)
		if err != nil {
			return nil, err
		}
		*jwt = jwt.prepared(next, now, true)
	case StepActivateJWTKey:
		if jwt.Next == nil {
			return nil, errors.New("activate JWT key: no next key")
		}
		// The old key stays published while a token it signed may be in
		// use: the longest token lifetime, and the verifiers' skew.
		*jwt = jwt.activated(now.Add(m.Policy.jwtMaxTokenTTL() + jwtRetireSkew))
	default:
		return nil, fmt.Errorf("unknown rotation step %q", step)
	}
	// A key store's keys that left the state are deleted after a grace:
	// replicas that have not re-read the state may still sign with them.
	for _, uri := range keysDropped(s, &n) {
		n.KeyDeletions = append(slices.Clip(n.KeyDeletions), KeyDeletion{URI: uri, After: now.Add(KeyDeleteGrace)})
	}
	n.Generation++
	return &n, nil
}

// DiscardKeys deletes the keys of the key store that next created and base
// does not hold: next was never saved (the upstream refused, another
// replica saved first), so nothing refers to them. Failures are left in
// the token (a key without a certificate signs nothing) and not returned:
// the caller is already reporting why next was dropped.
func (m *Minter) DiscardKeys(ctx context.Context, base, next *State) {
	if m.Keys == nil {
		return
	}
	for _, uri := range keysDropped(next, base) {
		if slices.ContainsFunc(base.KeyDeletions, func(d KeyDeletion) bool { return d.URI == uri }) {
			continue
		}
		_ = m.Keys.DeleteKey(ctx, uri)
	}
}

func (m *Minter) mergeUpstreamRoots(s *State, roots []*x509.Certificate) {
	if m.Upstream != nil {
		s.UpstreamRoots = mergeRoots(s.UpstreamRoots, roots)
	}
}

// settleUpstreamRoots removes from s.UpstreamRoots the roots mayfly no
// longer needs after an intermediate step, so that an upstream's old root
// does not stay in the bundle for ever. A root stays while it anchors the
// current or the next intermediate, or while the upstream lists it (listed:
// its roots at this step; nil when the step did not ask it). A root that
// anchored the outgoing intermediate is retired until that intermediate's
// NotAfter, since no leaf under it outlives it; any other root leaves at
// once. The roots never run out: the current intermediate's anchor stays.
func (m *Minter) settleUpstreamRoots(s *State, outgoing *Slot, listed []*x509.Certificate) {
	if m.Upstream == nil {
		return
	}
	live := []*Slot{s.Intermediate.Current, s.Intermediate.Next}
	var keep []*x509.Certificate
	var retired []Retired
	for _, r := range s.UpstreamRoots {
		switch {
		case slices.ContainsFunc(live, func(sl *Slot) bool { return anchors(r, sl) }),
			slices.ContainsFunc(listed, r.Equal):
			keep = append(keep, r)
		case anchors(r, outgoing):
			retired = append(retired, Retired{Cert: r, Until: outgoing.NotAfter()})
		case listed == nil:
			keep = append(keep, r)
		}
	}
	if len(keep) == 0 {
		return
	}
	s.UpstreamRoots = keep
	if len(retired) > 0 {
		s.Root.Retired = append(slices.Clip(s.Root.Retired), retired...)
	}
}

// anchors reports whether root signed the top of slot's chain.
func anchors(root *x509.Certificate, slot *Slot) bool {
	if slot == nil || len(slot.Chain) == 0 {
		return false
	}
	return slot.Chain[len(slot.Chain)-1].CheckSignatureFrom(root) == nil
}

func (m *Minter) keyType() pki.KeyType {
	if m.KeyType == "" {
		return pki.DefaultKeyType
	}
	return m.KeyType
}

// newKey generates a key for role: in the key store when there is one.
func (m *Minter) newKey(ctx context.Context, role string) (crypto.Signer, string, error) {
	if m.Keys == nil {
		key, err := pki.GenerateKey(m.keyType(), m.Rand)
		if err != nil {
			return nil, "", fmt.Errorf("%s key: %w", role, err)
		}
		return key, "", nil
	}
	uri, key, err := m.Keys.CreateKey(ctx, role, m.keyType())
	if err != nil {
		return nil, "", fmt.Errorf("%s key in %s: %w", role, m.Keys.Describe(), err)
	}
	return key, uri, nil
}

// dropKey deletes a key of the key store that no slot took.
func (m *Minter) dropKey(ctx context.Context, uri string) {
	if uri != "" {
		_ = m.Keys.DeleteKey(ctx, uri)
	}
}

func (m *Minter) newRoot(ctx context.Context, now time.Time) (*Slot, error) {
	key, uri, err := m.newKey(ctx, "root")
	if err != nil {
		return nil, err
	}
	cert, err := pki.SelfSignedRoot(key, m.TrustDomain, m.Policy.RootTTL, now, m.Rand)
	if err != nil {
		m.dropKey(ctx, uri)
		return nil, err
	}
	return &Slot{Chain: []*x509.Certificate{cert}, Key: key, KeyURI: uri}, nil
}

// newIntermediate mints an intermediate under root (self-signed mode) or
// from the upstream.
func (m *Minter) newIntermediate(ctx context.Context, root *Slot, now time.Time) (*Slot, []*x509.Certificate, error) {
	if m.Upstream == nil && root == nil {
		return nil, nil, errors.New("no root to sign the intermediate")
	}
	key, uri, err := m.newKey(ctx, "intermediate")
	if err != nil {
		return nil, nil, err
	}
	slot, roots, err := m.signIntermediate(ctx, root, key, now)
	if err != nil {
		m.dropKey(ctx, uri)
		return nil, nil, err
	}
	slot.KeyURI = uri
	return slot, roots, nil
}

func (m *Minter) signIntermediate(ctx context.Context, root *Slot, key crypto.Signer, now time.Time) (*Slot, []*x509.Certificate, error) {
	if m.Upstream != nil {
		chain, roots, err := m.Upstream.SignIntermediate(ctx, IntermediateRequest{TrustDomain: m.TrustDomain, Key: key, TTL: m.Policy.IntermediateTTL})
		if err != nil {
			return nil, nil, fmt.Errorf("upstream %s: %w", m.Upstream.Name(), err)
		}
		slot := &Slot{Chain: chain, Key: key}
		if err := CheckUpstreamResult(UpstreamResult{Slot: slot, Roots: roots, TrustDomain: m.TrustDomain, Now: now}); err != nil {
			return nil, nil, fmt.Errorf("upstream %s returned an unusable intermediate: %w", m.Upstream.Name(), err)
		}
		return slot, roots, nil
	}
	cert, err := SignIntermediate(root.Cert(), root.Key, key.Public(), m.TrustDomain, m.Policy.IntermediateTTL, now, m.Rand)
	if err != nil {
		return nil, nil, err
	}
	return &Slot{Chain: []*x509.Certificate{cert}, Key: key}, nil, nil
}

// SignIntermediate signs an intermediate of td for pub with a CA
// certificate and key (a local root, or a CA given as file or Secret).
func SignIntermediate(caCert *x509.Certificate, caKey crypto.Signer, pub crypto.PublicKey, td spiffeid.TrustDomain, ttl time.Duration, now time.Time, rand io.Reader) (*x509.Certificate, error) {
	signer := &pki.Signer{
		Authority: pki.Authority{Cert: caCert, Key: caKey},
		Now:       func() time.Time { return now },
		Rand:      rand,
		Options:   pki.DefaultIntermediateOptions(),
	}
	cert, _, err := signer.Sign(pki.SignRequest{Kind: pki.KindIntermediate, PublicKey: pub, ID: td.ID(), TTL: ttl})
	if err != nil {
		return nil, fmt.Errorf("signing intermediate: %w", err)
	}
	return cert, nil
}

// UpstreamCheck is one rule an intermediate from an upstream must meet
// before it may sign: it returns what is wrong, or nil.
type UpstreamCheck func(u UpstreamResult) error

// UpstreamResult is what an upstream returned for a request, with what the
// checks need to judge it.
type UpstreamResult struct {
	Slot        *Slot
	Roots       []*x509.Certificate
	TrustDomain spiffeid.TrustDomain
	Now         time.Time
}

// UpstreamChecks are the rules of an upstream's answer, in order: the
// first that fails names the problem. An answer that fails any of them
// never replaces the intermediate in service.
var UpstreamChecks = []UpstreamCheck{
	checkNotEmpty,
	checkIsCA,
	checkPathLenZero,
	checkKeyIsOurs,
	checkTrustDomainSAN,
	checkChainLinks,
	checkChainsToRoots,
	checkLifeLeft,
}

func checkNotEmpty(u UpstreamResult) error {
	switch {
	case u.Slot == nil || len(u.Slot.Chain) == 0:
		return errors.New("empty chain")
	case len(u.Roots) == 0:
		return errors.New("no trust roots")
	}
	return nil
}

func checkIsCA(u UpstreamResult) error {
	c := u.Slot.Cert()
	if !c.BasicConstraintsValid || !c.IsCA {
		return errors.New("a leaf certificate, not a CA (the upstream's profile or template must make a CA: cfssl ca_constraint.is_ca, step-ca basicConstraints.isCA)")
	}
	if c.KeyUsage&x509.KeyUsageCertSign == 0 {
		return errors.New("a CA without keyCertSign in its key usage")
	}
	return nil
}

func checkPathLenZero(u UpstreamResult) error {
	c := u.Slot.Cert()
	if c.MaxPathLen != 0 || !c.MaxPathLenZero {
		pl := "unlimited"
		if c.MaxPathLen > 0 {
			pl = fmt.Sprint(c.MaxPathLen)
		}
		return fmt.Errorf("path length %s, want 0 (mayfly's intermediate signs leaves only; cfssl needs max_path_len_zero: true)", pl)
	}
	return nil
}

func checkKeyIsOurs(u UpstreamResult) error {
	if !pki.KeyMatches(u.Slot.Cert(), u.Slot.Key) {
		return errors.New("the certificate is for another key than the one in the request")
	}
	return nil
}

func checkTrustDomainSAN(u UpstreamResult) error {
	want := u.TrustDomain.ID().URL().String()
	for _, uri := range u.Slot.Cert().URIs {
		if uri.String() == want {
			return nil
		}
	}
	return fmt.Errorf("the certificate lacks the URI SAN %s (the upstream must copy the request's SANs)", want)
}

func checkChainLinks(u UpstreamResult) error {
	c := u.Slot.Chain
	for i := 0; i+1 < len(c); i++ {
		if err := c[i].CheckSignatureFrom(c[i+1]); err != nil {
			return fmt.Errorf("chain[%d] is not signed by chain[%d]: %w", i, i+1, err)
		}
	}
	return nil
}

func checkChainsToRoots(u UpstreamResult) error {
	pool := x509.NewCertPool()
	for _, r := range u.Roots {
		pool.AddCert(r)
	}
	inter := x509.NewCertPool()
	for _, c := range u.Slot.Chain[1:] {
		inter.AddCert(c)
	}
	if _, err := u.Slot.Cert().Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, CurrentTime: u.Now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("does not chain to the upstream roots: %w", err)
	}
	return nil
}

func checkLifeLeft(u UpstreamResult) error {
	if left := u.Slot.NotAfter().Sub(u.Now); left < pki.MinIntermediateTTL {
		return fmt.Errorf("valid for %s more, below the minimum of %s", left.Round(time.Second), pki.MinIntermediateTTL)
	}
	return nil
}

// CheckUpstreamResult applies UpstreamChecks in order.
func CheckUpstreamResult(u UpstreamResult) error {
	for _, check := range UpstreamChecks {
		if err := check(u); err != nil {
			return err
		}
	}
	return nil
}

// anchorIsNew reports whether roots adds a root that known lacks.
func anchorIsNew(known, roots []*x509.Certificate) bool {
	for _, r := range roots {
		if !slices.ContainsFunc(known, r.Equal) {
			return true
		}
	}
	return false
}

func mergeRoots(a, b []*x509.Certificate) []*x509.Certificate {
	return dedupe(append(append([]*x509.Certificate(nil), a...), b...))
}
