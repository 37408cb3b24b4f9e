package pki

import (
	"bytes"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var (
	// ErrNotSVID is wrapped by errors about a leaf that breaks the
	// X.509-SVID rules.
	ErrNotSVID = errors.New("not a valid X.509-SVID")
	// ErrChain is wrapped by errors about a chain that does not verify.
	ErrChain = errors.New("certificate chain does not verify")
)

var oidExtKeyUsage = asn1.ObjectIdentifier{2, 5, 29, 15}

// VerifyX509SVID verifies leaf as an X.509-SVID at time now: it builds a
// chain to one of roots through intermediates with crypto/x509 (KeyUsages
// set to usage), checks the leaf's X.509-SVID rules (exactly one URI SAN that
// parses as a SPIFFE ID with a path, not a CA, digitalSignature without
// keyCertSign and cRLSign, EKU listing usage), and checks the trust domain:
// every CA certificate of the chain that carries a SPIFFE URI SAN names the
// leaf's trust domain, and at least one does. It returns the leaf's ID.
func VerifyX509SVID(leaf *x509.Certificate, intermediates []*x509.Certificate, roots []*x509.Certificate, now time.Time, usage x509.ExtKeyUsage) (spiffeid.ID, error) {
	if leaf == nil {
		return spiffeid.ID{}, fmt.Errorf("%w: no leaf certificate", ErrNotSVID)
	}
	if len(roots) == 0 {
		return spiffeid.ID{}, fmt.Errorf("%w: no roots", ErrChain)
	}
	if usage == x509.ExtKeyUsageAny {
		return spiffeid.ID{}, fmt.Errorf("%w: usage must be a specific EKU, not any", ErrChain)
	}
	id, err := checkLeafSpec(leaf)
	if err != nil {
		return spiffeid.ID{}, err
	}
	if !slices.Contains(leaf.ExtKeyUsage, usage) {
		return spiffeid.ID{}, fmt.Errorf("%w: extended key usage lacks %s", ErrNotSVID, ekuName(usage))
	}
	rootPool := x509.NewCertPool()
	for _, r := range roots {
		rootPool.AddCert(r)
	}
	interPool := x509.NewCertPool()
	for _, c := range intermediates {
		interPool.AddCert(c)
	}
	chains, err := leaf.Verify(x509.VerifyOptions{
		Roots:         rootPool,
		Intermediates: interPool,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{usage},
	})
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: %w", ErrChain, err)
	}
	td := id.TrustDomain()
	for _, chain := range chains {
		if chainNamesTrustDomain(chain[1:], td) {
			return id, nil
		}
	}
	return spiffeid.ID{}, fmt.Errorf("%w: no chain of CA certificates names trust domain %q", ErrChain, td)
}

func chainNamesTrustDomain(cas []*x509.Certificate, td spiffeid.TrustDomain) bool {
	named := false
	for _, c := range cas {
		got, ok := caTrustDomain(c)
		if !ok {
			continue
		}
		if got != td {
			return false
		}
		named = true
	}
	return named
}

// checkLeafSpec checks the SPIFFE X509-SVID specification rules of a leaf
// that VerifyX509SVID needs from any issuer, and returns its SPIFFE ID.
func checkLeafSpec(c *x509.Certificate) (spiffeid.ID, error) {
	if len(c.URIs) != 1 {
		return spiffeid.ID{}, fmt.Errorf("%w: %d URI SANs, want exactly 1", ErrNotSVID, len(c.URIs))
	}
	id, err := ParseID(c.URIs[0].String())
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: URI SAN: %w", ErrNotSVID, err)
	}
	if id.Path() == "" {
		return spiffeid.ID{}, fmt.Errorf("%w: URI SAN %q is a trust domain ID, not a workload ID", ErrNotSVID, id)
	}
	if c.IsCA {
		return spiffeid.ID{}, fmt.Errorf("%w: leaf has cA=true", ErrNotSVID)
	}
	if c.KeyUsage&(x509.KeyUsageCertSign|x509.KeyUsageCRLSign) != 0 {
		return spiffeid.ID{}, fmt.Errorf("%w: leaf has keyCertSign or cRLSign", ErrNotSVID)
	}
	if c.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		return spiffeid.ID{}, fmt.Errorf("%w: key usage lacks digitalSignature", ErrNotSVID)
	}
	return id, nil
}

// CheckSVIDRules checks that cert follows mayfly's X.509-SVID profile, the
// one Signer.Sign issues: the specification rules (one URI SAN holding a
// SPIFFE ID with a path, cA=false) plus basic constraints present, critical
// key usage of exactly digitalSignature (and keyEncipherment for RSA keys),
// EKU exactly serverAuth and clientAuth, no IP or email SANs, a positive
// serial of at most 20 bytes, subject empty or O=mayfly, subject and
// authority key IDs, notAfter after notBefore and an acceptable public key.
// The CA runs it on every certificate it issues; tests use it too.
func CheckSVIDRules(cert *x509.Certificate) error {
	if cert == nil {
		return fmt.Errorf("%w: certificate is nil", ErrNotSVID)
	}
	if _, err := checkLeafSpec(cert); err != nil {
		return err
	}
	if !cert.BasicConstraintsValid {
		return fmt.Errorf("%w: basic constraints extension missing", ErrNotSVID)
	}
	if !extensionCritical(cert, oidExtKeyUsage) {
		return fmt.Errorf("%w: key usage extension missing or not critical", ErrNotSVID)
	}
	want := x509.KeyUsageDigitalSignature
	if isRSA(cert.PublicKey) {
		want |= x509.KeyUsageKeyEncipherment
	}
	if cert.KeyUsage != want {
		return fmt.Errorf("%w: key usage %#x, want %#x (digitalSignature, plus keyEncipherment for RSA only)", ErrNotSVID, cert.KeyUsage, want)
	}
	if len(cert.ExtKeyUsage) != 2 || len(cert.UnknownExtKeyUsage) != 0 ||
		!slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageServerAuth) ||
		!slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		return fmt.Errorf("%w: extended key usage must be exactly serverAuth and clientAuth", ErrNotSVID)
	}
	if len(cert.IPAddresses) != 0 || len(cert.EmailAddresses) != 0 {
		return fmt.Errorf("%w: IP or email SANs are not allowed", ErrNotSVID)
	}
	if cert.SerialNumber == nil || cert.SerialNumber.Sign() <= 0 || len(cert.SerialNumber.Bytes()) > 20 {
		return fmt.Errorf("%w: serial number must be positive and at most 20 bytes", ErrNotSVID)
	}
	switch cert.Subject.String() {
	case "", "O=" + LeafOrganization:
	default:
		return fmt.Errorf("%w: subject must be empty or O=%s", ErrNotSVID, LeafOrganization)
	}
	if len(cert.SubjectKeyId) == 0 {
		return fmt.Errorf("%w: subject key identifier missing", ErrNotSVID)
	}
	if len(cert.AuthorityKeyId) == 0 {
		return fmt.Errorf("%w: authority key identifier missing", ErrNotSVID)
	}
	if !cert.NotAfter.After(cert.NotBefore) {
		return fmt.Errorf("%w: notAfter is not after notBefore", ErrNotSVID)
	}
	if err := CheckPublicKey(cert.PublicKey); err != nil {
		return fmt.Errorf("%w: %w", ErrNotSVID, err)
	}
	return nil
}

// checkIntermediateRules self-checks an issued intermediate.
func checkIntermediateRules(c *x509.Certificate) error {
	switch {
	case !c.BasicConstraintsValid || !c.IsCA:
		return errors.New("intermediate is not a CA")
	case c.MaxPathLen != 0 || !c.MaxPathLenZero:
		return errors.New("intermediate path length is not 0")
	case c.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign:
		return errors.New("intermediate key usage is not keyCertSign and cRLSign")
	case !extensionCritical(c, oidExtKeyUsage):
		return errors.New("intermediate key usage is not critical")
	case len(c.SubjectKeyId) == 0 || len(c.AuthorityKeyId) == 0:
		return errors.New("intermediate lacks subject or authority key identifier")
	case bytes.Equal(c.SubjectKeyId, c.AuthorityKeyId):
		return errors.New("intermediate has its own key as authority key")
	}
	if _, ok := caTrustDomain(c); !ok {
		return errors.New("intermediate lacks the trust domain URI SAN")
	}
	return nil
}

func extensionCritical(c *x509.Certificate, oid asn1.ObjectIdentifier) bool {
	for _, e := range c.Extensions {
		if e.Id.Equal(oid) {
			return e.Critical
		}
	}
	return false
}

func ekuName(u x509.ExtKeyUsage) string {
	switch u {
	case x509.ExtKeyUsageServerAuth:
		return "serverAuth"
	case x509.ExtKeyUsageClientAuth:
		return "clientAuth"
	}
	return fmt.Sprintf("EKU %d", u)
}
