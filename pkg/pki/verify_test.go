package pki_test

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// craftLeaf signs a leaf directly with crypto/x509, bypassing pki.Signer, so
// that tests can produce certificates that break the rules.
func craftLeaf(t testing.TB, issuer *x509.Certificate, issuerKey crypto.Signer, mutate func(*x509.Certificate)) *x509.Certificate {
	t.Helper()
	key := mustKey(t, pki.KeyTypeECDSAP256)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(42),
		NotBefore:             testNow.Add(-time.Minute),
		NotAfter:              testNow.Add(time.Hour),
		URIs:                  []*url.URL{testWorkloadID.URL()},
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		SubjectKeyId:          []byte{1, 2, 3, 4},
	}
	if mutate != nil {
		mutate(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, key.Public(), issuerKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCheckSVIDRules(t *testing.T) {
	ca := newTestCA(t)
	tests := []struct {
		name   string
		mutate func(*x509.Certificate)
		substr string // "" means the leaf is valid
	}{
		{"accepts_the_mayfly_profile", nil, ""},
		{"rejects_two_uri_sans", func(c *x509.Certificate) {
			c.URIs = append(c.URIs, &url.URL{Scheme: "spiffe", Host: "example.org", Path: "/ns/x/sa/y"})
		}, "2 URI SANs"},
		{"rejects_no_uri_san", func(c *x509.Certificate) { c.URIs = nil; c.DNSNames = []string{"a.b"} }, "0 URI SANs"},
		{"rejects_non_spiffe_uri", func(c *x509.Certificate) { c.URIs = []*url.URL{{Scheme: "https", Host: "example.org", Path: "/x"}} }, "spiffe://"},
		{"rejects_trust_domain_id_as_leaf", func(c *x509.Certificate) { c.URIs = []*url.URL{{Scheme: "spiffe", Host: "example.org"}} }, "trust domain ID"},
		{"rejects_ca_leaf", func(c *x509.Certificate) { c.IsCA = true }, "cA=true"},
		{"rejects_keyCertSign", func(c *x509.Certificate) { c.KeyUsage |= x509.KeyUsageCertSign }, "keyCertSign"},
		{"rejects_cRLSign", func(c *x509.Certificate) { c.KeyUsage |= x509.KeyUsageCRLSign }, "cRLSign"},
		{"rejects_missing_digitalSignature", func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageKeyAgreement }, "digitalSignature"},
		{"rejects_keyEncipherment_for_ecdsa", func(c *x509.Certificate) { c.KeyUsage |= x509.KeyUsageKeyEncipherment }, "key usage"},
		{"rejects_missing_basic_constraints", func(c *x509.Certificate) { c.BasicConstraintsValid = false }, "basic constraints"},
		{"rejects_server_auth_only", func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth} }, "extended key usage"},
		{"rejects_extra_eku", func(c *x509.Certificate) { c.ExtKeyUsage = append(c.ExtKeyUsage, x509.ExtKeyUsageCodeSigning) }, "extended key usage"},
		{"rejects_ip_san", func(c *x509.Certificate) { c.IPAddresses = []net.IP{net.IPv4(10, 0, 0, 1)} }, "IP or email"},
		{"rejects_subject_cn", func(c *x509.Certificate) { c.Subject = pkix.Name{CommonName: "web"} }, "subject"},
		{"rejects_missing_subject_key_id", func(c *x509.Certificate) { c.SubjectKeyId = nil }, "subject key identifier"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			leaf := craftLeaf(t, ca.Intermediate, ca.IntermediateKey, tt.mutate)
			err := pki.CheckSVIDRules(leaf)
			if tt.substr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, pki.ErrNotSVID) || !strings.Contains(err.Error(), tt.substr) {
				t.Fatalf("err = %v, want ErrNotSVID containing %q", err, tt.substr)
			}
		})
	}
	// crypto/x509 refuses to create bad serials, so test on a parsed copy.
	for _, serial := range []*big.Int{big.NewInt(-5), big.NewInt(0), new(big.Int).Lsh(big.NewInt(1), 8*21)} {
		c := *craftLeaf(t, ca.Intermediate, ca.IntermediateKey, nil)
		c.SerialNumber = serial
		if err := pki.CheckSVIDRules(&c); !errors.Is(err, pki.ErrNotSVID) || !strings.Contains(err.Error(), "serial") {
			t.Errorf("serial %s: err = %v, want ErrNotSVID about the serial", serial, err)
		}
	}
	if err := pki.CheckSVIDRules(ca.Intermediate); !errors.Is(err, pki.ErrNotSVID) {
		t.Fatalf("CheckSVIDRules(intermediate) = %v, want ErrNotSVID", err)
	}
}

func TestVerifyX509SVID(t *testing.T) {
	ca := newTestCA(t)
	other := newTestCA(t)
	otherTD := newTestCA(t, withTrustDomain("other.org"))
	chain, _ := ca.IssueWorkload(t, testWorkloadID, time.Hour)
	leaf, inter := chain[0], chain[1:]

	// An unconstrained root of other.org that signs an example.org leaf.
	foreignRootKey := mustKey(t, pki.KeyTypeECDSAP256)
	foreignRoot, err := pki.SelfSignedRoot(foreignRootKey, spiffeid.RequireTrustDomainFromString("other.org"), time.Hour, testNow, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	foreignLeaf := craftLeaf(t, foreignRoot, foreignRootKey, nil)

	// A leaf outside the intermediate's URI name constraint.
	evilLeaf := craftLeaf(t, ca.Intermediate, ca.IntermediateKey, func(c *x509.Certificate) {
		c.URIs = []*url.URL{{Scheme: "spiffe", Host: "evil.org", Path: "/ns/a/sa/b"}}
	})
	serverOnly := craftLeaf(t, ca.Intermediate, ca.IntermediateKey, func(c *x509.Certificate) {
		c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	})
	twoURIs := craftLeaf(t, ca.Intermediate, ca.IntermediateKey, func(c *x509.Certificate) {
		c.URIs = append(c.URIs, &url.URL{Scheme: "spiffe", Host: "example.org", Path: "/ns/x/sa/y"})
	})

	tests := []struct {
		name    string
		leaf    *x509.Certificate
		inter   []*x509.Certificate
		roots   []*x509.Certificate
		now     time.Time
		usage   x509.ExtKeyUsage
		wantErr error
	}{
		{"accepts_for_server_auth", leaf, inter, ca.Bundle(), testNow, x509.ExtKeyUsageServerAuth, nil},
		{"accepts_for_client_auth", leaf, inter, ca.Bundle(), testNow, x509.ExtKeyUsageClientAuth, nil},
		{"accepts_with_several_roots", leaf, inter, append(other.Bundle(), ca.Root), testNow, x509.ExtKeyUsageClientAuth, nil},
		{"rejects_expired_leaf", leaf, inter, ca.Bundle(), leaf.NotAfter.Add(time.Second), x509.ExtKeyUsageServerAuth, pki.ErrChain},
		{"rejects_leaf_before_notBefore", leaf, inter, ca.Bundle(), leaf.NotBefore.Add(-time.Second), x509.ExtKeyUsageServerAuth, pki.ErrChain},
		{"rejects_unknown_root", leaf, inter, other.Bundle(), testNow, x509.ExtKeyUsageServerAuth, pki.ErrChain},
		{"rejects_missing_intermediate", leaf, nil, ca.Bundle(), testNow, x509.ExtKeyUsageServerAuth, pki.ErrChain},
		{"rejects_no_roots", leaf, inter, nil, testNow, x509.ExtKeyUsageServerAuth, pki.ErrChain},
		{"rejects_eku_any", leaf, inter, ca.Bundle(), testNow, x509.ExtKeyUsageAny, pki.ErrChain},
		{"rejects_leaf_without_requested_eku", serverOnly, inter, ca.Bundle(), testNow, x509.ExtKeyUsageClientAuth, pki.ErrNotSVID},
		{"rejects_two_uri_sans", twoURIs, inter, ca.Bundle(), testNow, x509.ExtKeyUsageServerAuth, pki.ErrNotSVID},
		{"rejects_intermediate_as_leaf", ca.Intermediate, nil, ca.Bundle(), testNow, x509.ExtKeyUsageServerAuth, pki.ErrNotSVID},
		{"rejects_nil_leaf", nil, inter, ca.Bundle(), testNow, x509.ExtKeyUsageServerAuth, pki.ErrNotSVID},
		{"rejects_uri_outside_name_constraint", evilLeaf, inter, ca.Bundle(), testNow, x509.ExtKeyUsageServerAuth, pki.ErrChain},
		{"rejects_trust_domain_mismatch_with_ca_uri", foreignLeaf, nil, []*x509.Certificate{foreignRoot}, testNow, x509.ExtKeyUsageServerAuth, pki.ErrChain},
		{"rejects_chain_of_other_trust_domain", leaf, inter, otherTD.Bundle(), testNow, x509.ExtKeyUsageServerAuth, pki.ErrChain},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := pki.VerifyX509SVID(tt.leaf, tt.inter, tt.roots, tt.now, tt.usage)
			if tt.wantErr == nil {
				if err != nil || id != testWorkloadID {
					t.Fatalf("VerifyX509SVID = %v, %v; want %s", id, err, testWorkloadID)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
		})
	}
}
