package pki

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	mrand "math/rand/v2"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// The differential tests of the direct encoder: for the same template,
// directLeaf must write the TBSCertificate x509.CreateCertificate writes,
// byte for byte, and a certificate that parses and verifies.

var diffNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// diffKeys holds one key of every supported type, made once per process
// (RSA generation is slow on a loaded machine).
var diffKeys = sync.OnceValue(func() map[KeyType]crypto.Signer {
	keys := map[KeyType]crypto.Signer{}
	for _, kt := range KeyTypes() {
		k, err := GenerateKey(kt, rand.Reader)
		if err != nil {
			panic(err)
		}
		keys[kt] = k
	}
	return keys
})

// diffIssuer is an intermediate with a key of type kt, signed by a P-256
// root, valid from now-1h for 100 years (so that times past 2049, which are
// GeneralizedTime, can be issued).
type diffIssuer struct {
	authority Authority
	root      *x509.Certificate
}

var diffIssuers = sync.OnceValue(func() map[KeyType]diffIssuer {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	rootKey, err := GenerateKey(KeyTypeECDSAP256, rand.Reader)
	if err != nil {
		panic(err)
	}
	root, err := SelfSignedRoot(rootKey, td, 100*365*24*time.Hour, diffNow, rand.Reader)
	if err != nil {
		panic(err)
	}
	out := map[KeyType]diffIssuer{}
	for kt, key := range diffKeys() {
		tmpl, err := IntermediateTemplate(td, pkix.Name{}, true)
		if err != nil {
			panic(err)
		}
		tmpl.SerialNumber = big.NewInt(1)
		tmpl.NotBefore, tmpl.NotAfter = root.NotBefore, root.NotAfter
		der, err := x509.CreateCertificate(rand.Reader, tmpl, root, key.Public(), rootKey)
		if err != nil {
			panic(err)
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			panic(err)
		}
		out[kt] = diffIssuer{authority: Authority{Cert: cert, Key: key}, root: root}
	}
	return out
})

// diffCase is one generated input.
type diffCase struct {
	issuer, subject KeyType
	kind            Kind
	id              string
	dns             []string
	orgSubject      bool
	serial          []byte
	notBefore       time.Time
	ttl             time.Duration
	extra           []pkix.Extension
}

func (c diffCase) String() string {
	return fmt.Sprintf("%s-by-%s/%s/dns%d/org=%v/serial=%x/nb=%s/ttl=%s/extra%d", c.subject, c.issuer, c.kind, len(c.dns), c.orgSubject,
		c.serial, c.notBefore.Format(time.RFC3339), c.ttl, len(c.extra))
}

// template builds the template of c the way Signer.sign does: leafTemplate,
// then serial and validity, then what options add.
func (c diffCase) template(t testing.TB) *x509.Certificate {
	t.Helper()
	id, err := spiffeid.FromString(c.id)
	if err != nil {
		t.Fatal(err)
	}
	req := SignRequest{Kind: c.kind, PublicKey: diffKeys()[c.subject].Public(), ID: id, DNSNames: c.dns}
	if c.orgSubject {
		req.Subject = pkix.Name{Organization: []string{LeafOrganization}}
	}
	tmpl, err := leafTemplate(req)
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = new(big.Int).SetBytes(c.serial)
	tmpl.NotBefore, tmpl.NotAfter = c.notBefore, c.notBefore.Add(c.ttl)
	tmpl.ExtraExtensions = append(tmpl.ExtraExtensions, c.extra...)
	return tmpl
}

// checkSame issues tmpl both ways and compares them, and the direct
// path's view of the certificate with its parse (viewed: there was one).
func checkSame(t *testing.T, c diffCase, tmpl *x509.Certificate) (viewed bool) {
	t.Helper()
	is := diffIssuers()[c.issuer]
	pub := diffKeys()[c.subject].Public()
	want, stdErr := x509.CreateCertificate(rand.Reader, tmpl, is.authority.Cert, pub, is.authority.Key)
	got, err := directLeaf(tmpl, pub, is.authority, rand.Reader)
	if errors.Is(err, errNotDirect) {
		t.Fatalf("%v: the direct encoder refused a leaf template", c)
	}
	if (err == nil) != (stdErr == nil) {
		t.Fatalf("%v: direct error %v, CreateCertificate error %v", c, err, stdErr)
	}
	if err != nil {
		return false
	}
	compareCerts(t, c.String(), got, want, is)
	view := leafView(got, tmpl, pub, is.authority)
	compareView(t, c.String(), got, view)
	return view != nil
}

// compareView checks that leafView's certificate is what
// x509.ParseCertificate returns for der, and that there is none where the
// parser refuses der.
func compareView(t *testing.T, name string, der []byte, view *x509.Certificate) {
	t.Helper()
	parsed, err := x509.ParseCertificate(der)
	switch {
	case err != nil && view != nil:
		t.Fatalf("%s: x509.ParseCertificate refuses the certificate (%v), leafView returned one", name, err)
	case err != nil || view == nil:
		return
	}
	if !reflect.DeepEqual(view, parsed) {
		t.Fatalf("%s: leafView differs from x509.ParseCertificate:\nview   %#v\nparsed %#v", name, view, parsed)
	}
}

func compareCerts(t *testing.T, name string, got, want []byte, is diffIssuer) {
	t.Helper()
	gotTBS, wantTBS := rawTBS(t, got), rawTBS(t, want)
	if !bytes.Equal(gotTBS, wantTBS) {
		t.Fatalf("%s: TBSCertificate differs\ndirect:            %x\nCreateCertificate: %x", name, gotTBS, wantTBS)
	}
	wantCert, err := x509.ParseCertificate(want)
	if err != nil {
		// Fuzzed names CreateCertificate encodes but x509 cannot parse
		// back ("spiffe://example.org."): the same bytes either way.
		return
	}
	gotCert, err := x509.ParseCertificate(got)
	if err != nil {
		t.Fatalf("%s: direct certificate does not parse: %v", name, err)
	}
	if !bytes.Equal(gotCert.RawTBSCertificate, wantCert.RawTBSCertificate) {
		t.Fatalf("%s: parsed TBSCertificate differs", name)
	}
	if gotCert.SignatureAlgorithm != wantCert.SignatureAlgorithm {
		t.Fatalf("%s: signature algorithm %v, CreateCertificate %v", name, gotCert.SignatureAlgorithm, wantCert.SignatureAlgorithm)
	}
	if _, ok := is.authority.Key.(ed25519.PrivateKey); ok && !bytes.Equal(got, want) {
		// Ed25519 signatures are deterministic: the whole certificate matches.
		t.Fatalf("%s: Ed25519-signed certificates differ", name)
	}
	if err := gotCert.CheckSignatureFrom(is.authority.Cert); err != nil {
		t.Fatalf("%s: direct certificate does not verify: %v", name, err)
	}
}

// rawTBS returns the TBSCertificate element of a certificate's DER without
// parsing the rest.
func rawTBS(t *testing.T, der []byte) []byte {
	t.Helper()
	var c struct {
		TBS asn1.RawValue
		Alg asn1.RawValue
		Sig asn1.BitString
	}
	if rest, err := asn1.Unmarshal(der, &c); err != nil || len(rest) != 0 {
		t.Fatalf("certificate DER is not a SEQUENCE holding a TBSCertificate (%v): %x", err, der)
	}
	return c.TBS.FullBytes
}

// genCase draws a case from r.
func genCase(r *mrand.Rand, issuer, subject KeyType, kind Kind) diffCase {
	c := diffCase{issuer: issuer, subject: subject, kind: kind, orgSubject: r.IntN(2) == 0}
	if kind == KindAgent {
		c.id = fmt.Sprintf("spiffe://example.org/mayfly/agent/node-%d", r.IntN(1000))
	} else {
		c.id = fmt.Sprintf("spiffe://example.org/ns/ns%d/sa/%s", r.IntN(100), strings.Repeat("s", 1+r.IntN(200)))
	}
	for range r.IntN(4) {
		c.dns = append(c.dns, fmt.Sprintf("svc-%d.ns.svc.cluster.local", r.IntN(1e6)))
	}
	// Serials: 1 to 20 bytes, with and without the top bit (a leading zero
	// byte in DER).
	c.serial = make([]byte, 1+r.IntN(20))
	for i := range c.serial {
		c.serial[i] = byte(r.Uint32())
	}
	c.serial[0] |= 1
	c.notBefore = diffNow.Add(time.Duration(r.Int64N(int64(50 * 365 * 24 * time.Hour)))).Truncate(time.Second)
	if r.IntN(4) == 0 {
		// Around the UTCTime/GeneralizedTime switch of 2050.
		c.notBefore = time.Date(2049, 12, 31, 23, 0, 0, 0, time.UTC).Add(time.Duration(r.IntN(7200)) * time.Second)
	}
	c.ttl = time.Duration(300+r.IntN(48*3600)) * time.Second
	if kind == KindAgent {
		ext, err := AttestedAtExtension(diffNow.Add(-time.Duration(r.IntN(1e6)) * time.Second))
		if err != nil {
			panic(err)
		}
		c.extra = append(c.extra, ext)
	}
	return c
}

func TestDirectLeaf_matchesCreateCertificate(t *testing.T) {
	r := mrand.New(mrand.NewPCG(1, 2))
	n, viewed := 0, 0
	for _, issuer := range KeyTypes() {
		for _, subject := range KeyTypes() {
			for _, kind := range []Kind{KindWorkload, KindAgent} {
				for range 4 {
					c := genCase(r, issuer, subject, kind)
					if checkSame(t, c, c.template(t)) {
						viewed++
					}
					n++
				}
			}
		}
	}
	t.Logf("%d generated leaves identical on both paths", n)
	if viewed != n {
		t.Fatalf("leafView returned %d of %d certificates, want all (no generated template leaves its shape)", viewed, n)
	}
}

// TestSign_directAndStandardPathsAgree issues through Signer.Sign, the
// options and invariants included, once per path with the same randomness
// (so the same serial), for every key type on either side.
func TestSign_directAndStandardPathsAgree(t *testing.T) {
	for _, issuer := range KeyTypes() {
		for _, subject := range KeyTypes() {
			for _, kind := range []Kind{KindWorkload, KindAgent} {
				name := fmt.Sprintf("%s-by-%s/%s", subject, issuer, kind)
				is := diffIssuers()[issuer]
				id := spiffeid.RequireFromString("spiffe://example.org/ns/default/sa/web")
				if kind == KindAgent {
					id = spiffeid.RequireFromString("spiffe://example.org/mayfly/agent/node-1")
				}
				req := SignRequest{Kind: kind, PublicKey: diffKeys()[subject].Public(), ID: id, DNSNames: []string{"web.default.svc"}, TTL: time.Hour}
				sign := func(standard bool) []byte {
					s := &Signer{
						Authority: is.authority, Now: func() time.Time { return diffNow.Add(1234567 * time.Microsecond) },
						Rand: seededReader(7), Options: append(DefaultWorkloadOptions(), testAttestedAt{}), StandardPath: standard,
					}
					cert, der, err := s.Sign(req)
					if err != nil {
						t.Fatalf("%s (standard=%v): %v", name, standard, err)
					}
					compareView(t, name, der, cert)
					return der
				}
				compareCerts(t, name, sign(false), sign(true), is)
			}
		}
	}
}

// testAttestedAt adds the attestation time to agent leaves, as
// internal/policy's AttestedAt does.
type testAttestedAt struct{}

func (testAttestedAt) Apply(req *SignRequest, tmpl *x509.Certificate) error {
	if req.Kind != KindAgent {
		return nil
	}
	ext, err := AttestedAtExtension(diffNow.Add(-time.Hour))
	if err != nil {
		return err
	}
	tmpl.ExtraExtensions = append(tmpl.ExtraExtensions, ext)
	return nil
}

func TestDirectLeaf_leavesOtherShapesToCreateCertificate(t *testing.T) {
	base := genCase(mrand.New(mrand.NewPCG(3, 4)), KeyTypeECDSAP256, KeyTypeECDSAP256, KindWorkload)
	for name, change := range map[string]func(*x509.Certificate){
		"ocsp server":          func(c *x509.Certificate) { c.OCSPServer = []string{"http://ocsp.example"} },
		"email address":        func(c *x509.Certificate) { c.EmailAddresses = []string{"a@example.org"} },
		"common name":          func(c *x509.Certificate) { c.Subject.CommonName = "web" },
		"other organization":   func(c *x509.Certificate) { c.Subject.Organization = []string{"other"} },
		"raw subject":          func(c *x509.Certificate) { c.RawSubject = []byte{0x30, 0} },
		"ca":                   func(c *x509.Certificate) { c.IsCA = true },
		"path length":          func(c *x509.Certificate) { c.MaxPathLenZero = true },
		"no basic constraints": func(c *x509.Certificate) { c.BasicConstraintsValid = false },
		"unknown EKU":          func(c *x509.Certificate) { c.ExtKeyUsage = append(c.ExtKeyUsage, x509.ExtKeyUsageCodeSigning) },
		"unknown EKU OID":      func(c *x509.Certificate) { c.UnknownExtKeyUsage = []asn1.ObjectIdentifier{{1, 2, 3}} },
		"policy identifiers":   func(c *x509.Certificate) { c.PolicyIdentifiers = []asn1.ObjectIdentifier{{1, 2, 3}} },
		"extra key usage": func(c *x509.Certificate) {
			c.ExtraExtensions = []pkix.Extension{{Id: oidKeyUsage, Value: []byte{3, 1, 0}}}
		},
		"extra SAN": func(c *x509.Certificate) {
			c.ExtraExtensions = []pkix.Extension{{Id: oidSubjectAltName, Value: []byte{0x30, 0}}}
		},
		"notBefore before 1950":    func(c *x509.Certificate) { c.NotBefore = time.Date(1949, 1, 1, 0, 0, 0, 0, time.UTC) },
		"notAfter after 9999":      func(c *x509.Certificate) { c.NotAfter = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) },
		"key usage beyond x509's":  func(c *x509.Certificate) { c.KeyUsage = 1 << 16 },
		"zero serial":              func(c *x509.Certificate) { c.SerialNumber = new(big.Int) },
		"no subject key id":        func(c *x509.Certificate) { c.SubjectKeyId = nil },
		"authority key id in tmpl": func(c *x509.Certificate) { c.AuthorityKeyId = []byte{1} },
	} {
		t.Run(name, func(t *testing.T) {
			tmpl := base.template(t)
			change(tmpl)
			is := diffIssuers()[base.issuer]
			if _, err := directLeaf(tmpl, diffKeys()[base.subject].Public(), is.authority, rand.Reader); !errors.Is(err, errNotDirect) {
				t.Fatalf("directLeaf = %v, want errNotDirect", err)
			}
		})
	}
}

func TestLeafView_emptyDNSNamesAreNil(t *testing.T) {
	c := genCase(mrand.New(mrand.NewPCG(7, 8)), KeyTypeECDSAP256, KeyTypeECDSAP256, KindWorkload)
	tmpl := c.template(t)
	tmpl.DNSNames, tmpl.ExtKeyUsage = []string{}, []x509.ExtKeyUsage{}
	if !checkSame(t, c, tmpl) {
		t.Fatal("no view of a template with empty DNS names and EKUs")
	}
}

func TestDirectLeaf_nonIA5NameFailsLikeCreateCertificate(t *testing.T) {
	c := genCase(mrand.New(mrand.NewPCG(5, 6)), KeyTypeECDSAP256, KeyTypeEd25519, KindWorkload)
	c.dns = []string{"caf\u00e9.example"}
	checkSame(t, c, c.template(t))
}

// seededReader is a deterministic randomness source.
func seededReader(seed uint64) *mrand.ChaCha8 {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	return mrand.NewChaCha8(s)
}

// FuzzDirectLeaf compares the two encoders on templates drawn from the
// input: key types on both sides, kind, IDs, DNS names, subject, serial,
// validity, an extra extension and the key usage. Wherever the direct encoder takes a
// template, its TBSCertificate equals CreateCertificate's, or both fail.
func FuzzDirectLeaf(f *testing.F) {
	f.Add(uint8(0), uint8(0), false, "/ns/default/sa/web", "web.default.svc", false, []byte{1}, int64(0), uint32(3600), []byte(nil), uint16(0))
	f.Add(uint8(2), uint8(3), true, "/mayfly/agent/node-1", "", true, []byte{0xff, 0xee}, int64(24*365*24*3600), uint32(86400), []byte{0x02, 0x01, 0x05}, uint16(0))
	f.Add(uint8(4), uint8(1), false, "/ns/a/sa/b", "a.b,c.d", true, bytes.Repeat([]byte{0x80}, 20), int64(-100), uint32(300), []byte{}, uint16(x509.KeyUsageDigitalSignature|x509.KeyUsageDecipherOnly))
	f.Add(uint8(1), uint8(4), false, "/x y/\u00e9", "UPPER.example,caf\u00e9", false, []byte{0x7f}, int64(1e10), uint32(1), []byte{0x30, 0x00}, uint16(0xffff))
	f.Fuzz(func(t *testing.T, issuerIdx, subjectIdx uint8, agent bool, path, dns string, org bool, serial []byte, nbOffset int64, ttl uint32, extra []byte, keyUsage uint16) {
		kts := KeyTypes()
		c := diffCase{issuer: kts[int(issuerIdx)%len(kts)], subject: kts[int(subjectIdx)%len(kts)], kind: KindWorkload, orgSubject: org}
		if agent {
			c.kind = KindAgent
		}
		if len(serial) == 0 || len(serial) > 64 || len(path) > 4096 || len(dns) > 4096 {
			return
		}
		c.serial = serial
		u, err := url.Parse("spiffe://example.org" + path)
		if err != nil {
			return
		}
		if dns != "" {
			c.dns = strings.Split(dns, ",")
		}
		c.notBefore = diffNow.Add(time.Duration(nbOffset % (1 << 33) * int64(time.Second)))
		c.ttl = time.Duration(ttl) * time.Second
		if extra != nil {
			c.extra = []pkix.Extension{{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 9}, Critical: len(extra)%2 == 1, Value: extra}}
		}
		c.id = "spiffe://example.org/ns/a/sa/b"
		tmpl := c.template(t)
		tmpl.URIs = []*url.URL{u}
		if keyUsage != 0 {
			tmpl.KeyUsage = x509.KeyUsage(keyUsage)
		}
		if new(big.Int).SetBytes(serial).Sign() == 0 || !directTime(tmpl.NotBefore) || !directTime(tmpl.NotAfter) || keyUsage >= 1<<9 {
			is := diffIssuers()[c.issuer]
			if _, err := directLeaf(tmpl, diffKeys()[c.subject].Public(), is.authority, rand.Reader); !errors.Is(err, errNotDirect) {
				t.Fatalf("%v: directLeaf = %v, want errNotDirect", c, err)
			}
			return
		}
		checkSame(t, c, tmpl)
	})
}

func TestDerBuf_lengthsMatchEncodingASN1(t *testing.T) {
	for _, n := range []int{0, 1, 127, 128, 255, 256, 65535, 65536, 1 << 20} {
		content := bytes.Repeat([]byte{0xab}, n)
		var d derBuf
		outer := d.open(tagSequence)
		d.addTLV(tagOctetString, content)
		d.addUnsigned(tagInteger, []byte{0, 0, 0x80})
		d.close(outer)
		want := mustMarshal(struct {
			B []byte
			I int
		}{content, 0x80})
		if !bytes.Equal(d.b, want) {
			t.Fatalf("%d bytes: derBuf %x..., encoding/asn1 %x...", n, d.b[:min(16, len(d.b))], want[:min(16, len(want))])
		}
	}
}
