package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Kind is the kind of certificate to issue.
type Kind string

// The certificate kinds mayfly issues.
const (
	// KindWorkload is a workload X.509-SVID, spiffe://<td>/ns/<ns>/sa/<sa>.
	KindWorkload Kind = "workload"
	// KindAgent is an X.509-SVID of a mayfly component: a node agent,
	// spiffe://<td>/mayfly/agent/<node>, or the CA's serving certificate,
	// spiffe://<td>/mayfly/ca. It carries OIDComponentPolicy.
	KindAgent Kind = "agent"
	// KindIntermediate is an intermediate CA certificate (pathLen 0).
	KindIntermediate Kind = "intermediate"
	// KindRoot is a self-signed root CA certificate; see SelfSignedRoot.
	KindRoot Kind = "root"
)

// IsLeaf reports whether certificates of kind k are X.509-SVID leaves.
func (k Kind) IsLeaf() bool { return k == KindWorkload || k == KindAgent }

const (
	// Backdate is how far notBefore lies before the signing time, to absorb
	// clock skew between the CA and relying parties (a tenth of the TTL for
	// TTLs under 10 minutes).
	Backdate = time.Minute
	// LeafOrganization is the only subject attribute a leaf may carry (O=).
	LeafOrganization = "mayfly"
	// serialBytes is the size of random serial numbers (128 bits).
	serialBytes = 16
)

var (
	// ErrInvalidRequest is wrapped by errors about a SignRequest that no
	// policy could make valid (unknown kind, missing key or ID, TTL <= 0).
	ErrInvalidRequest = errors.New("invalid sign request")
	// ErrPolicy is wrapped by errors of SignOptions that deny a request.
	ErrPolicy = errors.New("denied by policy")
	// ErrAuthority is wrapped by errors about the issuing Authority (missing
	// key, key not matching the certificate, not a CA, not valid now).
	ErrAuthority = errors.New("invalid authority")
)

// Authority is an issuing CA: its certificate, its private key, and the
// intermediates above it up to but excluding the root.
type Authority struct {
	// Cert is the issuing CA certificate.
	Cert *x509.Certificate
	// Key is the private key of Cert.
	Key crypto.Signer
	// Chain holds the intermediates above Cert, nearest first, not the root.
	Chain []*x509.Certificate
}

// Validate checks that the authority can issue: a CA certificate with
// keyCertSign and a subject key identifier, and a key matching it.
func (a Authority) Validate() error {
	switch {
	case a.Cert == nil:
		return fmt.Errorf("%w: certificate is nil", ErrAuthority)
	case a.Key == nil:
		return fmt.Errorf("%w: key is nil", ErrAuthority)
	case !a.Cert.BasicConstraintsValid || !a.Cert.IsCA:
		return fmt.Errorf("%w: certificate %s is not a CA", ErrAuthority, a.Cert.Subject)
	case a.Cert.KeyUsage&x509.KeyUsageCertSign == 0:
		return fmt.Errorf("%w: certificate %s lacks keyCertSign", ErrAuthority, a.Cert.Subject)
	case len(a.Cert.SubjectKeyId) == 0:
		return fmt.Errorf("%w: certificate %s lacks a subject key identifier", ErrAuthority, a.Cert.Subject)
	}
	if !KeyMatches(a.Cert, a.Key) {
		return fmt.Errorf("%w: key does not match certificate %s", ErrAuthority, a.Cert.Subject)
	}
	return nil
}

// TrustDomain returns the trust domain named by the authority certificate's
// SPIFFE URI SAN (spiffe://<td>); ok is false if it has none.
func (a Authority) TrustDomain() (td spiffeid.TrustDomain, ok bool) {
	if a.Cert == nil {
		return spiffeid.TrustDomain{}, false
	}
	return caTrustDomain(a.Cert)
}

// ChainFor returns leaf followed by the authority's certificate and Chain:
// what a TLS peer presents.
func (a Authority) ChainFor(leaf *x509.Certificate) []*x509.Certificate {
	out := make([]*x509.Certificate, 0, 2+len(a.Chain))
	out = append(out, leaf, a.Cert)
	return append(out, a.Chain...)
}

// caTrustDomain returns the trust domain of the first SPIFFE URI SAN of a CA
// certificate, if any.
func caTrustDomain(c *x509.Certificate) (spiffeid.TrustDomain, bool) {
	for _, u := range c.URIs {
		if u.Scheme != "spiffe" {
			continue
		}
		id, err := ParseID(u.String())
		if err != nil {
			return spiffeid.TrustDomain{}, false
		}
		return id.TrustDomain(), true
	}
	return spiffeid.TrustDomain{}, false
}

// SignRequest describes the certificate to issue. Sign takes names only from
// here, never from a CSR.
type SignRequest struct {
	// Kind is the kind of certificate: KindWorkload, KindAgent or
	// KindIntermediate (roots are made by SelfSignedRoot).
	Kind Kind
	// PublicKey is the subject's public key, e.g. from ParseCSR.
	PublicKey crypto.PublicKey
	// ID is the SPIFFE ID. Leaves need a non-empty path; intermediates carry
	// the trust domain ID (spiffe://<td>).
	ID spiffeid.ID
	// DNSNames are extra DNS SANs of a leaf; the caller decides which names
	// a workload may have, options check their syntax.
	DNSNames []string
	// TTL is the requested lifetime; the result may be shorter (capped by
	// Signer.MaxTTL and the issuer's notAfter).
	TTL time.Duration
	// Subject is the subject of CA kinds (default O=mayfly, CN=mayfly
	// intermediate <td>). Leaves must leave it empty or set exactly
	// O=mayfly.
	Subject pkix.Name
}

// SignOption is one step of the signing policy: a validator that denies a
// request (returning an error wrapping ErrPolicy) or a modifier that changes
// the template. Options run in order after the template is built from the
// request; Sign re-applies its invariants (validity caps) afterwards and
// self-checks the result, so no option can produce a certificate that breaks
// the X.509-SVID rules.
type SignOption interface {
	Apply(req *SignRequest, tmpl *x509.Certificate) error
}

// SignOptionFunc adapts a function to a SignOption.
type SignOptionFunc func(req *SignRequest, tmpl *x509.Certificate) error

// Apply calls f.
func (f SignOptionFunc) Apply(req *SignRequest, tmpl *x509.Certificate) error { return f(req, tmpl) }

// Signer issues certificates from an Authority. It holds no mutable state;
// one Signer may be used concurrently if Now and Rand may.
type Signer struct {
	// Authority is the issuing CA.
	Authority Authority
	// Now returns the current time.
	Now func() time.Time
	// Rand is the source of serial numbers (and of signatures, where the
	// standard library uses it).
	Rand io.Reader
	// Options are the policy, applied in order.
	Options []SignOption
	// MaxTTL caps every lifetime when > 0 (silently, like the issuer's
	// notAfter).
	MaxTTL time.Duration
	// StandardPath makes Sign build every certificate with
	// x509.CreateCertificate, which also verifies its own signature. By
	// default leaves are encoded directly (direct.go): the same bytes,
	// signed once, at a fraction of the cost. The switch is kept for
	// comparison (benchmarks, the CA's issuance.standardPath setting).
	StandardPath bool
}

// Sign issues a certificate for req and returns it parsed and as DER.
//
// For leaves (KindWorkload, KindAgent) the result is an X.509-SVID as
// CheckSVIDRules defines it: one URI SAN, cA=false, critical key usage
// digitalSignature (+keyEncipherment for RSA keys), EKU serverAuth and
// clientAuth, 128-bit random serial from Rand, subject and authority key IDs.
// Agent leaves, and only they, carry the certificate policy
// OIDComponentPolicy. notBefore is Now minus Backdate, or minus a tenth of
// the TTL when that is shorter (rounded up to the second, and not before the
// issuer's notBefore); notAfter is Now plus TTL, capped by MaxTTL and the
// issuer's notAfter.
func (s *Signer) Sign(req SignRequest) (*x509.Certificate, []byte, error) {
	cert, der, err := s.sign(req)
	if err != nil {
		return nil, nil, fmt.Errorf("sign %s certificate for %q: %w", req.Kind, req.ID, err)
	}
	return cert, der, nil
}

func (s *Signer) sign(req SignRequest) (*x509.Certificate, []byte, error) {
	if s.Now == nil || s.Rand == nil {
		return nil, nil, errors.New("signer: Now and Rand must be set")
	}
	if err := s.Authority.Validate(); err != nil {
		return nil, nil, err
	}
	issuer := s.Authority.Cert
	now := s.Now()
	if now.Before(issuer.NotBefore) || !now.Before(issuer.NotAfter) {
		return nil, nil, fmt.Errorf("%w: issuer is valid from %s to %s, not at %s", ErrAuthority,
			issuer.NotBefore.UTC().Format(time.RFC3339), issuer.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	if err := checkRequest(req); err != nil {
		return nil, nil, err
	}
	if td, ok := caTrustDomain(issuer); ok && td != req.ID.TrustDomain() {
		return nil, nil, fmt.Errorf("%w: ID is not in the issuer's trust domain %q", ErrInvalidRequest, td)
	}

	var (
		tmpl *x509.Certificate
		err  error
	)
	if req.Kind.IsLeaf() {
		tmpl, err = leafTemplate(req)
	} else {
		tmpl, err = IntermediateTemplate(req.ID.TrustDomain(), req.Subject, false)
	}
	if err != nil {
		return nil, nil, err
	}
	if tmpl.SerialNumber, err = newSerial(s.Rand); err != nil {
		return nil, nil, err
	}
	tmpl.NotBefore, tmpl.NotAfter = validity(now, req.TTL)

	for i, opt := range s.Options {
		if err := opt.Apply(&req, tmpl); err != nil {
			return nil, nil, fmt.Errorf("policy step %d: %w", i, err)
		}
	}

	// Invariants no option may override.
	earliest := ceilSecond(now.Add(-Backdate))
	if tmpl.NotBefore.Before(earliest) {
		tmpl.NotBefore = earliest
	}
	if tmpl.NotBefore.Before(issuer.NotBefore) {
		tmpl.NotBefore = issuer.NotBefore
	}
	if s.MaxTTL > 0 {
		if limit := now.Add(s.MaxTTL); tmpl.NotAfter.After(limit) {
			tmpl.NotAfter = limit
		}
	}
	if tmpl.NotAfter.After(issuer.NotAfter) {
		tmpl.NotAfter = issuer.NotAfter
	}
	tmpl.NotAfter = tmpl.NotAfter.Truncate(time.Second)
	if !tmpl.NotAfter.After(now) {
		return nil, nil, fmt.Errorf("%w: no validity left (notAfter %s)", ErrInvalidRequest, tmpl.NotAfter.UTC().Format(time.RFC3339))
	}

	der, cert, err := s.create(req, tmpl)
	if err != nil {
		return nil, nil, err
	}
	if cert == nil {
		if cert, err = x509.ParseCertificate(der); err != nil {
			return nil, nil, fmt.Errorf("parse issued certificate: %w", err)
		}
	}
	if req.Kind.IsLeaf() {
		err = CheckSVIDRules(cert)
		if err == nil && HasComponentPolicy(cert) != (req.Kind == KindAgent) {
			err = fmt.Errorf("%w: the component policy %s belongs on agent leaves only", ErrNotSVID, OIDComponentPolicy)
		}
	} else {
		err = checkIntermediateRules(cert)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("self-check of issued certificate: %w", err)
	}
	return cert, der, nil
}

// create encodes and signs tmpl: leaves directly unless StandardPath is
// set or the template left the direct encoder's shape, everything else with
// x509.CreateCertificate. A direct leaf comes with the certificate
// x509.ParseCertificate would return for it (leafView), or nil for the
// caller to parse.
func (s *Signer) create(req SignRequest, tmpl *x509.Certificate) ([]byte, *x509.Certificate, error) {
	if req.Kind.IsLeaf() && !s.StandardPath {
		der, err := directLeaf(tmpl, req.PublicKey, s.Authority, s.Rand)
		if !errors.Is(err, errNotDirect) {
			if err != nil {
				return nil, nil, fmt.Errorf("create certificate: %w", err)
			}
			return der, leafView(der, tmpl, req.PublicKey, s.Authority), nil
		}
	}
	der, err := x509.CreateCertificate(s.Rand, tmpl, s.Authority.Cert, req.PublicKey, s.Authority.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("create certificate: %w", err)
	}
	return der, nil, nil
}

func checkRequest(req SignRequest) error {
	switch req.Kind {
	case KindWorkload, KindAgent, KindIntermediate:
	case KindRoot:
		return fmt.Errorf("%w: kind root: roots are self-signed, use SelfSignedRoot", ErrInvalidRequest)
	default:
		return fmt.Errorf("%w: unknown kind %q", ErrInvalidRequest, req.Kind)
	}
	if err := CheckPublicKey(req.PublicKey); err != nil {
		return fmt.Errorf("%w: public key: %w", ErrInvalidRequest, err)
	}
	if req.ID.IsZero() {
		return fmt.Errorf("%w: ID is empty", ErrInvalidRequest)
	}
	if req.Kind.IsLeaf() && req.ID.Path() == "" {
		return fmt.Errorf("%w: a leaf ID needs a path, got the trust domain ID", ErrInvalidRequest)
	}
	if req.Kind == KindIntermediate && req.ID.Path() != "" {
		return fmt.Errorf("%w: an intermediate ID must be the trust domain ID spiffe://%s", ErrInvalidRequest, req.ID.TrustDomain())
	}
	if req.TTL <= 0 {
		return fmt.Errorf("%w: TTL %s must be positive", ErrInvalidRequest, req.TTL)
	}
	return nil
}

// leafTemplate builds the X.509-SVID part of a leaf template.
func leafTemplate(req SignRequest) (*x509.Certificate, error) {
	switch req.Subject.String() {
	case "", "O=" + LeafOrganization:
	default:
		return nil, fmt.Errorf("%w: leaf subject must be empty or O=%s", ErrInvalidRequest, LeafOrganization)
	}
	skid, err := subjectKeyID(req.PublicKey)
	if err != nil {
		return nil, err
	}
	ku := x509.KeyUsageDigitalSignature
	if isRSA(req.PublicKey) {
		ku |= x509.KeyUsageKeyEncipherment
	}
	var policies []x509.OID
	if req.Kind == KindAgent {
		policies = []x509.OID{OIDComponentPolicy}
	}
	return &x509.Certificate{
		Policies:              policies,
		Subject:               req.Subject,
		URIs:                  []*url.URL{req.ID.URL()},
		DNSNames:              req.DNSNames,
		KeyUsage:              ku,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
		SubjectKeyId:          skid,
	}, nil
}

// IntermediateTemplate returns the CA-specific part of an intermediate
// certificate of trust domain td: cA=true with pathLen 0, key usage
// keyCertSign and cRLSign (critical), the URI SAN spiffe://<td>, and subject
// (default O=mayfly, CN=mayfly intermediate <td>). With constrain, a
// critical name constraint permits only URIs in td. Serial, validity and key
// are left to the caller (Signer.Sign fills them).
func IntermediateTemplate(td spiffeid.TrustDomain, subject pkix.Name, constrain bool) (*x509.Certificate, error) {
	if td.IsZero() {
		return nil, fmt.Errorf("%w: trust domain is empty", ErrInvalidRequest)
	}
	if subject.String() == "" {
		subject = pkix.Name{Organization: []string{LeafOrganization}, CommonName: "mayfly intermediate " + td.Name()}
	}
	t := &x509.Certificate{
		Subject:               subject,
		URIs:                  []*url.URL{td.ID().URL()},
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
	}
	if constrain {
		constrainToTrustDomain(t, td)
	}
	return t, nil
}

func constrainToTrustDomain(t *x509.Certificate, td spiffeid.TrustDomain) {
	t.PermittedURIDomains = []string{td.Name()}
	t.PermittedDNSDomainsCritical = true // marks the whole extension critical
}

// rootTemplate returns the template of a self-signed root of td.
func rootTemplate(td spiffeid.TrustDomain) *x509.Certificate {
	return &x509.Certificate{
		Subject:               pkix.Name{Organization: []string{LeafOrganization}, CommonName: "mayfly root " + td.Name()},
		URIs:                  []*url.URL{td.ID().URL()},
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
}

// SelfSignedRoot creates a self-signed root CA certificate for td with key:
// cA=true without a path length limit, critical key usage keyCertSign and
// cRLSign, the URI SAN spiffe://<td>, subject O=mayfly, CN=mayfly root <td>,
// notBefore now-Backdate and notAfter now+ttl.
func SelfSignedRoot(key crypto.Signer, td spiffeid.TrustDomain, ttl time.Duration, now time.Time, rand io.Reader) (*x509.Certificate, error) {
	switch {
	case key == nil:
		return nil, errors.New("self-signed root: key is nil")
	case rand == nil:
		return nil, errors.New("self-signed root: rand is nil")
	case td.IsZero():
		return nil, errors.New("self-signed root: trust domain is empty")
	case ttl <= 0:
		return nil, fmt.Errorf("self-signed root: ttl %s must be positive", ttl)
	}
	if err := CheckPublicKey(key.Public()); err != nil {
		return nil, fmt.Errorf("self-signed root: %w", err)
	}
	tmpl := rootTemplate(td)
	var err error
	if tmpl.SerialNumber, err = newSerial(rand); err != nil {
		return nil, fmt.Errorf("self-signed root: %w", err)
	}
	tmpl.NotBefore, tmpl.NotAfter = validity(now, ttl)
	der, err := x509.CreateCertificate(rand, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("self-signed root: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("self-signed root: parse: %w", err)
	}
	return cert, nil
}

// validity returns notBefore and notAfter of a certificate signed at now
// for ttl. notBefore is now minus the backdate, rounded up to the second so
// the backdate never exceeds it; the backdate is Backdate, or a tenth of the
// TTL when that is shorter (a 2-minute certificate backdated a whole minute
// would reach its renewal point, half of notBefore..notAfter, within
// seconds of being issued). notAfter is now+ttl rounded down to the second.
func validity(now time.Time, ttl time.Duration) (notBefore, notAfter time.Time) {
	back := min(Backdate, ttl/10)
	return ceilSecond(now.Add(-back)), now.Add(ttl).Truncate(time.Second)
}

func ceilSecond(t time.Time) time.Time {
	tt := t.Truncate(time.Second)
	if tt.Before(t) {
		tt = tt.Add(time.Second)
	}
	return tt
}

// newSerial reads a positive 128-bit serial number from rand.
func newSerial(rand io.Reader) (*big.Int, error) {
	var b [serialBytes]byte
	if _, err := io.ReadFull(rand, b[:]); err != nil {
		return nil, fmt.Errorf("read serial number: %w", err)
	}
	n := new(big.Int).SetBytes(b[:])
	if n.Sign() == 0 {
		return nil, errors.New("read serial number: rand returned zero")
	}
	return n, nil
}

// subjectKeyID computes a key identifier per RFC 7093 section 2 method 1:
// the leftmost 160 bits of the SHA-256 hash of the subjectPublicKey bits
// (the uncompressed point for ECDSA, the raw key for Ed25519, the PKCS#1
// encoding for RSA), the same as crypto/x509 computes for CA certificates.
func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	var bits []byte
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		b, err := k.Bytes()
		if err != nil {
			return nil, fmt.Errorf("%w: encode public key: %w", ErrUnsupportedKey, err)
		}
		bits = b
	case ed25519.PublicKey:
		bits = k
	case *rsa.PublicKey:
		bits = x509.MarshalPKCS1PublicKey(k)
	default:
		return nil, fmt.Errorf("%w: key type %T", ErrUnsupportedKey, pub)
	}
	sum := sha256.Sum256(bits)
	return sum[:20], nil
}
