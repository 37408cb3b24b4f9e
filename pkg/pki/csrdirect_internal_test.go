package pki

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net/url"
	"reflect"
	"testing"
)

// The differential tests of the direct CSR parser: for any input it reads,
// it must return what x509.ParseCertificateRequest returns and decide the
// signature as CheckSignature does.

// csrCorpus returns CSRs of every key type as agents make them, CSRs of
// other shapes (names, attributes, a subject), and damaged copies.
func csrCorpus(t testing.TB) [][]byte {
	t.Helper()
	var out [][]byte
	for _, kt := range KeyTypes() {
		key := diffKeys()[kt]
		der, err := CreateCSR(key, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, der)
		for _, tmpl := range []*x509.CertificateRequest{
			{Subject: pkix.Name{CommonName: "web"}},
			{DNSNames: []string{"web.example.org"}},
			{URIs: []*url.URL{{Scheme: "spiffe", Host: "example.org", Path: "/web"}}},
			{ExtraExtensions: []pkix.Extension{{Id: []int{1, 2, 3}, Value: []byte{0x05, 0x00}}}},
		} {
			der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, der)
		}
	}
	// Damaged copies of the agent-shaped CSRs: every byte flipped in turn
	// in the P-256 one (signature, key, lengths, tags), truncations and
	// trailing data for all.
	n := len(out)
	for i := range n {
		der := out[i]
		out = append(out, der[:len(der)-1], append(append([]byte(nil), der...), 0))
	}
	p256 := out[0] // KeyTypes() starts with P-256
	for i := range p256 {
		for _, mask := range []byte{0x01, 0x80} {
			b := append([]byte(nil), p256...)
			b[i] ^= mask
			out = append(out, b)
		}
	}
	return out
}

// checkCSRDirect compares parseCSRDirect with the standard parser for der.
func checkCSRDirect(t *testing.T, der []byte) (direct bool) {
	t.Helper()
	got, direct, err := parseCSRDirect(der)
	if !direct {
		if got != nil || err != nil {
			t.Fatalf("not read directly, but returned %v, %v", got, err)
		}
		return false
	}
	want, perr := x509.ParseCertificateRequest(der)
	if perr != nil {
		t.Fatalf("read directly, but x509.ParseCertificateRequest fails: %v\n%x", perr, der)
	}
	serr := want.CheckSignature()
	if (err != nil) != (serr != nil) {
		t.Fatalf("signature: direct %v, standard %v\n%x", err, serr, der)
	}
	if err != nil {
		if !errors.Is(err, ErrCSRSignature) || got != nil {
			t.Fatalf("direct signature failure %v with CSR %v, want ErrCSRSignature and none", err, got)
		}
		return true
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("direct parse differs from x509.ParseCertificateRequest:\n got %#v\nwant %#v", got, want)
	}
	return true
}

func TestParseCSRDirect_matchesStandard(t *testing.T) {
	corpus := csrCorpus(t)
	read := 0
	for _, der := range corpus {
		if checkCSRDirect(t, der) {
			read++
		}
	}
	// The agents' CSRs of the three key types without an RSA key are read
	// directly; the other shapes are not.
	for i, kt := range KeyTypes() {
		der := corpus[i*5]
		_, direct, err := parseCSRDirect(der)
		wantDirect := kt == KeyTypeECDSAP256 || kt == KeyTypeECDSAP384 || kt == KeyTypeEd25519
		if direct != wantDirect || err != nil {
			t.Errorf("%s CSR from CreateCSR: direct %v (%v), want %v", kt, direct, err, wantDirect)
		}
		for j := 1; j < 5; j++ {
			if _, direct, _ := parseCSRDirect(corpus[i*5+j]); direct {
				t.Errorf("%s CSR with names or a subject (%d) read directly", kt, j)
			}
		}
	}
	if read < 3 {
		t.Fatalf("%d CSRs read directly, want at least the three of CreateCSR", read)
	}
	t.Logf("%d of %d CSRs read directly", read, len(corpus))
}

func TestParseCSR_directSignatureFailure(t *testing.T) {
	der, err := CreateCSR(diffKeys()[KeyTypeECDSAP256], rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der[len(der)-3] ^= 0x01 // inside the signature's s
	if _, err := ParseCSR(der); !errors.Is(err, ErrCSRSignature) {
		t.Fatalf("ParseCSR of a CSR with a damaged signature: %v, want ErrCSRSignature", err)
	}
}

func FuzzParseCSRDirect(f *testing.F) {
	for _, der := range csrCorpus(f)[:10] {
		f.Add(der)
	}
	f.Fuzz(func(t *testing.T, der []byte) {
		checkCSRDirect(t, der)
	})
}
