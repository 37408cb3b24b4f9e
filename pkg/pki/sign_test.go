package pki_test

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mayfly-pki/mayfly/pkg/pki"
)

var (
	testWorkloadID = spiffeid.RequireFromString("spiffe://example.org/ns/default/sa/web")
	testAgentID    = spiffeid.RequireFromString("spiffe://example.org/mayfly/agent/node-1")
)

func workloadRequest(pub crypto.PublicKey) pki.SignRequest {
	return pki.SignRequest{Kind: pki.KindWorkload, PublicKey: pub, ID: testWorkloadID, TTL: time.Hour}
}

func TestSign_issuesSVIDForEveryKeyType(t *testing.T) {
	ca := newTestCA(t)
	for _, kt := range pki.KeyTypes() {
		t.Run(string(kt), func(t *testing.T) {
			key := mustKey(t, kt)
			cert, der, err := ca.Signer(nil).Sign(workloadRequest(key.Public()))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(cert.Raw, der) {
				t.Fatal("returned DER differs from the parsed certificate")
			}
			if err := pki.CheckSVIDRules(cert); err != nil {
				t.Fatal(err)
			}
			wantKU := x509.KeyUsageDigitalSignature
			if strings.HasPrefix(string(kt), "rsa") {
				wantKU |= x509.KeyUsageKeyEncipherment
			}
			if cert.KeyUsage != wantKU {
				t.Fatalf("key usage = %#x, want %#x", cert.KeyUsage, wantKU)
			}
			if len(cert.URIs) != 1 || cert.URIs[0].String() != testWorkloadID.String() {
				t.Fatalf("URIs = %v, want [%s]", cert.URIs, testWorkloadID)
			}
			if cert.IsCA || !cert.BasicConstraintsValid {
				t.Fatalf("basic constraints: valid=%v cA=%v", cert.BasicConstraintsValid, cert.IsCA)
			}
			if !bytes.Equal(cert.AuthorityKeyId, ca.Intermediate.SubjectKeyId) || len(cert.SubjectKeyId) != 20 {
				t.Fatalf("AKID %x (issuer SKID %x), SKID %x", cert.AuthorityKeyId, ca.Intermediate.SubjectKeyId, cert.SubjectKeyId)
			}
			if err := cert.CheckSignatureFrom(ca.Intermediate); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestSign_issuesAgentSVID(t *testing.T) {
	ca := newTestCA(t)
	key := mustKey(t, pki.KeyTypeECDSAP256)
	cert, _, err := ca.Signer(nil).Sign(pki.SignRequest{Kind: pki.KindAgent, PublicKey: key.Public(), ID: testAgentID, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	id, err := pki.VerifyX509SVID(cert, []*x509.Certificate{ca.Intermediate}, ca.Bundle(), testNow, x509.ExtKeyUsageClientAuth)
	if err != nil || id != testAgentID {
		t.Fatalf("VerifyX509SVID = %v, %v", id, err)
	}
}

func TestSign_ignoresNamesInCSR(t *testing.T) {
	ca := newTestCA(t)
	csr, err := pki.ParseCSR(twoURICSR(t))
	if err != nil {
		t.Fatal(err)
	}
	cert, _, err := ca.Signer(nil).Sign(workloadRequest(csr.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	if len(cert.URIs) != 1 || cert.URIs[0].String() != testWorkloadID.String() || len(cert.DNSNames) != 0 {
		t.Fatalf("names leaked from the CSR: URIs %v, DNS %v", cert.URIs, cert.DNSNames)
	}
}

func TestSign_serialIs128BitsFromInjectedRand(t *testing.T) {
	ca := newTestCA(t)
	s := ca.Signer(nil)
	serial := bytes.Repeat([]byte{0xA5}, 16)
	s.Rand = io.MultiReader(bytes.NewReader(serial), rand.Reader)
	cert, _, err := s.Sign(workloadRequest(mustKey(t, pki.KeyTypeECDSAP256).Public()))
	if err != nil {
		t.Fatal(err)
	}
	if want := new(big.Int).SetBytes(serial); cert.SerialNumber.Cmp(want) != 0 {
		t.Fatalf("serial = %x, want %x", cert.SerialNumber, want)
	}
}

func TestSign_rejectsZeroSerialFromRand(t *testing.T) {
	ca := newTestCA(t)
	s := ca.Signer(nil)
	s.Rand = bytes.NewReader(make([]byte, 64))
	if _, _, err := s.Sign(workloadRequest(mustKey(t, pki.KeyTypeECDSAP256).Public())); err == nil || !strings.Contains(err.Error(), "serial") {
		t.Fatalf("err = %v, want serial error", err)
	}
}

func TestSign_validity(t *testing.T) {
	pub := mustKey(t, pki.KeyTypeECDSAP256).Public()
	tests := []struct {
		name          string
		caOpts        []caOption
		now           time.Time
		ttl           time.Duration
		maxTTL        time.Duration
		wantNotBefore time.Time
		wantNotAfter  time.Time
	}{
		{
			name: "backdates_notBefore_exactly_one_minute", now: testNow.Add(time.Hour), ttl: time.Hour,
			wantNotBefore: testNow.Add(time.Hour - time.Minute), wantNotAfter: testNow.Add(2 * time.Hour),
		},
		{
			name: "backdates_at_most_one_minute_with_subsecond_clock", now: testNow.Add(time.Hour + 400*time.Millisecond), ttl: time.Hour,
			wantNotBefore: testNow.Add(time.Hour - time.Minute + time.Second), wantNotAfter: testNow.Add(2 * time.Hour),
		},
		{
			name: "caps_notAfter_at_issuer_notAfter", caOpts: []caOption{withIntermediateTTL(2 * time.Hour)},
			now: testNow.Add(90 * time.Minute), ttl: time.Hour,
			wantNotBefore: testNow.Add(89 * time.Minute), wantNotAfter: testNow.Add(2 * time.Hour),
		},
		{
			name: "caps_notAfter_at_signer_max_ttl", now: testNow.Add(time.Hour), ttl: 20 * time.Hour, maxTTL: 2 * time.Hour,
			wantNotBefore: testNow.Add(59 * time.Minute), wantNotAfter: testNow.Add(3 * time.Hour),
		},
		{
			name: "never_backdates_before_issuer_notBefore", now: testNow.Add(-time.Minute + 30*time.Second), ttl: time.Hour,
			// The intermediate itself starts at testNow-1m.
			wantNotBefore: testNow.Add(-time.Minute), wantNotAfter: testNow.Add(time.Hour - 30*time.Second),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ca := newTestCA(t, tt.caOpts...)
			s := ca.Signer(fixedClock(tt.now))
			s.MaxTTL = tt.maxTTL
			req := workloadRequest(pub)
			req.TTL = tt.ttl
			cert, _, err := s.Sign(req)
			if err != nil {
				t.Fatal(err)
			}
			if !cert.NotBefore.Equal(tt.wantNotBefore) || !cert.NotAfter.Equal(tt.wantNotAfter) {
				t.Fatalf("validity [%s, %s], want [%s, %s]", cert.NotBefore, cert.NotAfter, tt.wantNotBefore, tt.wantNotAfter)
			}
			if cert.NotAfter.After(ca.Intermediate.NotAfter) {
				t.Fatal("notAfter beyond the issuer's")
			}
		})
	}
}

func TestSign_rejects(t *testing.T) {
	ecPub := mustKey(t, pki.KeyTypeECDSAP256).Public()
	otherTD := spiffeid.RequireFromString("spiffe://other.org/ns/default/sa/web")
	tests := []struct {
		name    string
		mutate  func(*pki.SignRequest)
		wantErr error
		substr  string
	}{
		{"ttl_above_max", func(r *pki.SignRequest) { r.TTL = 25 * time.Hour }, pki.ErrPolicy, "ttl"},
		{"ttl_below_min", func(r *pki.SignRequest) { r.TTL = time.Minute }, pki.ErrPolicy, "ttl"},
		{"zero_ttl", func(r *pki.SignRequest) { r.TTL = 0 }, pki.ErrInvalidRequest, "TTL"},
		{"root_kind", func(r *pki.SignRequest) { r.Kind = pki.KindRoot }, pki.ErrInvalidRequest, "SelfSignedRoot"},
		{"unknown_kind", func(r *pki.SignRequest) { r.Kind = "server" }, pki.ErrInvalidRequest, "unknown kind"},
		{"intermediate_kind_under_workload_policy", func(r *pki.SignRequest) {
			r.Kind = pki.KindIntermediate
			r.ID = spiffeid.RequireTrustDomainFromString("example.org").ID()
		}, pki.ErrPolicy, "kind"},
		{"missing_key", func(r *pki.SignRequest) { r.PublicKey = nil }, pki.ErrUnsupportedKey, ""},
		{"rsa1024_key", func(r *pki.SignRequest) { r.PublicKey = mustRSA1024(t).Public() }, pki.ErrWeakKey, ""},
		{"p521_key", func(r *pki.SignRequest) { r.PublicKey = mustP521(t).Public() }, pki.ErrUnsupportedKey, ""},
		{"zero_id", func(r *pki.SignRequest) { r.ID = spiffeid.ID{} }, pki.ErrInvalidRequest, "ID"},
		{"trust_domain_id_for_leaf", func(r *pki.SignRequest) { r.ID = spiffeid.RequireFromString("spiffe://example.org") }, pki.ErrInvalidRequest, "path"},
		{"id_in_other_trust_domain", func(r *pki.SignRequest) { r.ID = otherTD }, pki.ErrInvalidRequest, "trust domain"},
		{"agent_id_as_workload", func(r *pki.SignRequest) { r.ID = testAgentID }, pki.ErrPolicy, "does not fit"},
		{"workload_id_as_agent", func(r *pki.SignRequest) { r.Kind = pki.KindAgent }, pki.ErrPolicy, "does not fit"},
		{"leaf_subject_with_cn", func(r *pki.SignRequest) { r.Subject = pkix.Name{CommonName: "web"} }, pki.ErrInvalidRequest, "subject"},
		{"uppercase_dns_name", func(r *pki.SignRequest) { r.DNSNames = []string{"Web.default.svc"} }, pki.ErrPolicy, "dnsNames[0]"},
		{"wildcard_dns_name", func(r *pki.SignRequest) { r.DNSNames = []string{"*.default.svc"} }, pki.ErrPolicy, "dnsNames[0]"},
		{"ip_as_dns_name", func(r *pki.SignRequest) { r.DNSNames = []string{"10.0.0.1"} }, pki.ErrPolicy, "numeric"},
		{"trailing_dot_dns_name", func(r *pki.SignRequest) { r.DNSNames = []string{"web.default.svc."} }, pki.ErrPolicy, "empty label"},
		{"hyphen_edge_dns_label", func(r *pki.SignRequest) { r.DNSNames = []string{"web-.default"} }, pki.ErrPolicy, "'-'"},
		{"long_dns_label", func(r *pki.SignRequest) { r.DNSNames = []string{strings.Repeat("a", 64) + ".svc"} }, pki.ErrPolicy, "63"},
		{"duplicate_dns_name", func(r *pki.SignRequest) { r.DNSNames = []string{"web.default.svc", "web.default.svc"} }, pki.ErrPolicy, "duplicate"},
		{"too_many_dns_names", func(r *pki.SignRequest) {
			for i := range pki.MaxDNSNames + 1 {
				r.DNSNames = append(r.DNSNames, "svc"+strings.Repeat("x", i)+".ns.svc")
			}
		}, pki.ErrPolicy, "at most"},
	}
	ca := newTestCA(t)
	for _, tt := range tests {
		t.Run("rejects_"+tt.name, func(t *testing.T) {
			req := workloadRequest(ecPub)
			tt.mutate(&req)
			cert, _, err := ca.Signer(nil).Sign(req)
			if !errors.Is(err, tt.wantErr) || !strings.Contains(err.Error(), tt.substr) {
				t.Fatalf("Sign = %v, %v; want error wrapping %v containing %q", cert, err, tt.wantErr, tt.substr)
			}
		})
	}
}

func TestSign_acceptsValidDNSNamesAndMayflySubject(t *testing.T) {
	ca := newTestCA(t)
	req := workloadRequest(mustKey(t, pki.KeyTypeECDSAP256).Public())
	req.DNSNames = []string{"web.default.svc", "web.default.svc.cluster.local"}
	req.Subject = pkix.Name{Organization: []string{"mayfly"}}
	cert, _, err := ca.Signer(nil).Sign(req)
	if err != nil {
		t.Fatal(err)
	}
	if len(cert.DNSNames) != 2 || cert.Subject.String() != "O=mayfly" {
		t.Fatalf("DNS %v, subject %q", cert.DNSNames, cert.Subject)
	}
}

func TestSign_authorityErrors(t *testing.T) {
	ca := newTestCA(t)
	other := newTestCA(t)
	pub := mustKey(t, pki.KeyTypeECDSAP256).Public()
	tests := []struct {
		name   string
		mutate func(*pki.Signer)
		substr string
	}{
		{"issuer_expired", func(s *pki.Signer) { s.Now = fixedClock(ca.Intermediate.NotAfter) }, "valid from"},
		{"issuer_not_yet_valid", func(s *pki.Signer) { s.Now = fixedClock(ca.Intermediate.NotBefore.Add(-time.Second)) }, "valid from"},
		{"key_does_not_match_certificate", func(s *pki.Signer) { s.Authority.Key = other.IntermediateKey }, "does not match"},
		{"leaf_as_authority", func(s *pki.Signer) {
			chain, key := ca.IssueWorkload(t, testWorkloadID, time.Hour)
			s.Authority = pki.Authority{Cert: chain[0], Key: key}
		}, "not a CA"},
		{"missing_key", func(s *pki.Signer) { s.Authority.Key = nil }, "key is nil"},
	}
	for _, tt := range tests {
		t.Run("rejects_"+tt.name, func(t *testing.T) {
			s := ca.Signer(nil)
			tt.mutate(s)
			_, _, err := s.Sign(workloadRequest(pub))
			if !errors.Is(err, pki.ErrAuthority) || !strings.Contains(err.Error(), tt.substr) {
				t.Fatalf("err = %v, want ErrAuthority containing %q", err, tt.substr)
			}
		})
	}
}

func TestSign_optionsRunInOrderAndCannotBreakInvariants(t *testing.T) {
	ca := newTestCA(t)
	pub := mustKey(t, pki.KeyTypeECDSAP256).Public()
	t.Run("first_denial_stops_the_chain", func(t *testing.T) {
		var ran []int
		step := func(i int, err error) pki.SignOption {
			return pki.SignOptionFunc(func(*pki.SignRequest, *x509.Certificate) error { ran = append(ran, i); return err })
		}
		s := ca.Signer(nil)
		s.Options = []pki.SignOption{step(0, nil), step(1, pki.ErrPolicy), step(2, nil)}
		if _, _, err := s.Sign(workloadRequest(pub)); !errors.Is(err, pki.ErrPolicy) || !strings.Contains(err.Error(), "policy step 1") {
			t.Fatalf("err = %v", err)
		}
		if len(ran) != 2 {
			t.Fatalf("ran steps %v, want [0 1]", ran)
		}
	})
	t.Run("self_check_refuses_a_leaf_an_option_made_a_CA", func(t *testing.T) {
		s := ca.Signer(nil)
		s.Options = append(s.Options, pki.SignOptionFunc(func(_ *pki.SignRequest, tmpl *x509.Certificate) error {
			tmpl.IsCA = true
			tmpl.KeyUsage |= x509.KeyUsageCertSign
			return nil
		}))
		if _, _, err := s.Sign(workloadRequest(pub)); !errors.Is(err, pki.ErrNotSVID) {
			t.Fatalf("err = %v, want ErrNotSVID from the self-check", err)
		}
	})
	t.Run("validity_caps_apply_after_options", func(t *testing.T) {
		s := ca.Signer(nil)
		s.Options = append(s.Options, pki.SignOptionFunc(func(_ *pki.SignRequest, tmpl *x509.Certificate) error {
			tmpl.NotBefore = testNow.Add(-time.Hour)
			tmpl.NotAfter = testNow.Add(1000 * time.Hour)
			return nil
		}))
		cert, _, err := s.Sign(workloadRequest(pub))
		if err != nil {
			t.Fatal(err)
		}
		if !cert.NotBefore.Equal(testNow.Add(-time.Minute)) || !cert.NotAfter.Equal(ca.Intermediate.NotAfter) {
			t.Fatalf("validity [%s, %s] escaped the caps", cert.NotBefore, cert.NotAfter)
		}
	})
}

func TestSign_intermediateWithDefaultOptions(t *testing.T) {
	ca := newTestCA(t)
	key := mustKey(t, pki.KeyTypeECDSAP256)
	s := &pki.Signer{
		Authority: pki.Authority{Cert: ca.Root, Key: ca.RootKey},
		Now:       fixedClock(testNow),
		Rand:      rand.Reader,
		Options:   pki.DefaultIntermediateOptions(),
	}
	td := spiffeid.RequireTrustDomainFromString("example.org")
	cert, _, err := s.Sign(pki.SignRequest{Kind: pki.KindIntermediate, PublicKey: key.Public(), ID: td.ID(), TTL: 48 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case !cert.IsCA || cert.MaxPathLen != 0 || !cert.MaxPathLenZero:
		t.Fatalf("cA=%v pathLen=%d zero=%v", cert.IsCA, cert.MaxPathLen, cert.MaxPathLenZero)
	case cert.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign:
		t.Fatalf("key usage %#x", cert.KeyUsage)
	case len(cert.PermittedURIDomains) != 1 || cert.PermittedURIDomains[0] != "example.org" || !cert.PermittedDNSDomainsCritical:
		t.Fatalf("name constraints %v critical=%v", cert.PermittedURIDomains, cert.PermittedDNSDomainsCritical)
	case cert.Subject.String() != "CN=mayfly intermediate example.org,O=mayfly":
		t.Fatalf("subject %q", cert.Subject)
	}
	if _, _, err := s.Sign(pki.SignRequest{Kind: pki.KindIntermediate, PublicKey: key.Public(), ID: testWorkloadID, TTL: 48 * time.Hour}); !errors.Is(err, pki.ErrInvalidRequest) {
		t.Fatalf("intermediate with a workload ID: err = %v", err)
	}
	// The new intermediate issues leaves that verify up to the root.
	leafSigner := &pki.Signer{Authority: pki.Authority{Cert: cert, Key: key}, Now: fixedClock(testNow), Rand: rand.Reader, Options: pki.DefaultWorkloadOptions()}
	leaf, _, err := leafSigner.Sign(workloadRequest(mustKey(t, pki.KeyTypeECDSAP256).Public()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pki.VerifyX509SVID(leaf, []*x509.Certificate{cert}, ca.Bundle(), testNow, x509.ExtKeyUsageServerAuth); err != nil {
		t.Fatal(err)
	}
}

func TestIntermediateTemplate(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	tmpl, err := pki.IntermediateTemplate(td, pkix.Name{CommonName: "custom"}, true)
	if err != nil {
		t.Fatal(err)
	}
	if tmpl.Subject.CommonName != "custom" || tmpl.PermittedURIDomains[0] != "example.org" || !tmpl.MaxPathLenZero || tmpl.URIs[0].String() != "spiffe://example.org" {
		t.Fatalf("template %+v", tmpl)
	}
	if _, err := pki.IntermediateTemplate(spiffeid.TrustDomain{}, pkix.Name{}, false); err == nil {
		t.Fatal("accepted an empty trust domain")
	}
}

func TestSelfSignedRoot(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	key := mustKey(t, pki.KeyTypeECDSAP256)
	root, err := pki.SelfSignedRoot(key, td, 365*24*time.Hour, testNow, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case !root.IsCA || !root.BasicConstraintsValid:
		t.Fatal("root is not a CA")
	case root.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign:
		t.Fatalf("key usage %#x", root.KeyUsage)
	case len(root.URIs) != 1 || root.URIs[0].String() != "spiffe://example.org":
		t.Fatalf("URIs %v", root.URIs)
	case root.Subject.String() != "CN=mayfly root example.org,O=mayfly":
		t.Fatalf("subject %q", root.Subject)
	case !root.NotBefore.Equal(testNow.Add(-time.Minute)) || !root.NotAfter.Equal(testNow.Add(365*24*time.Hour)):
		t.Fatalf("validity [%s, %s]", root.NotBefore, root.NotAfter)
	case len(root.SubjectKeyId) == 0:
		t.Fatal("no subject key ID")
	}
	if err := root.CheckSignatureFrom(root); err != nil {
		t.Fatal(err)
	}
	for name, call := range map[string]func() error{
		"nil_key": func() error { _, err := pki.SelfSignedRoot(nil, td, time.Hour, testNow, rand.Reader); return err },
		"weak_key": func() error {
			_, err := pki.SelfSignedRoot(mustRSA1024(t), td, time.Hour, testNow, rand.Reader)
			return err
		},
		"zero_ttl": func() error { _, err := pki.SelfSignedRoot(key, td, 0, testNow, rand.Reader); return err },
		"zero_td": func() error {
			_, err := pki.SelfSignedRoot(key, spiffeid.TrustDomain{}, time.Hour, testNow, rand.Reader)
			return err
		},
		"nil_rand": func() error { _, err := pki.SelfSignedRoot(key, td, time.Hour, testNow, nil); return err },
	} {
		if call() == nil {
			t.Errorf("SelfSignedRoot accepted %s", name)
		}
	}
}

func TestSign_subjectKeyIDMatchesCryptoX509ForEveryKeyType(t *testing.T) {
	// crypto/x509 derives the SKID of CA certificates the same way (RFC 7093
	// method 1); issue a CA certificate for each key type and compare.
	ca := newTestCA(t)
	for _, kt := range pki.KeyTypes() {
		t.Run(string(kt), func(t *testing.T) {
			key := mustKey(t, kt)
			leaf, _, err := ca.Signer(nil).Sign(workloadRequest(key.Public()))
			if err != nil {
				t.Fatal(err)
			}
			tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: testNow, NotAfter: testNow.Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
			der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Intermediate, key.Public(), ca.IntermediateKey)
			if err != nil {
				t.Fatal(err)
			}
			ref, err := x509.ParseCertificate(der)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(leaf.SubjectKeyId, ref.SubjectKeyId) {
				t.Fatalf("SKID %x, crypto/x509 computes %x", leaf.SubjectKeyId, ref.SubjectKeyId)
			}
		})
	}
}
