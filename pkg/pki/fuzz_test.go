package pki_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// Seeds live in testdata/fuzz/<FuzzName>/ and are rewritten by
// TestWriteFuzzSeeds when MAYFLY_WRITE_FUZZ_SEEDS=1.

func FuzzParseID(f *testing.F) {
	f.Add("spiffe://example.org/ns/default/sa/web")
	f.Add("spiffe://example.org")
	f.Fuzz(func(t *testing.T, s string) {
		id, err := pki.ParseID(s)
		if err != nil {
			if !id.IsZero() {
				t.Fatalf("ParseID(%q) returned an ID with error %v", s, err)
			}
			return
		}
		if id.String() != s {
			t.Fatalf("ParseID(%q).String() = %q", s, id.String())
		}
		again, err := pki.ParseID(id.URL().String())
		if err != nil || again != id {
			t.Fatalf("ParseID(%q) does not round-trip through URL: %v, %v", s, again, err)
		}
		if _, err := spiffeid.FromString(s); err != nil {
			t.Fatalf("ParseID accepted %q, go-spiffe rejects it: %v", s, err)
		}
		if len(s) > pki.MaxIDLength || len(id.TrustDomain().Name()) > pki.MaxTrustDomainLength {
			t.Fatalf("ParseID accepted %q beyond the length limits", s)
		}
	})
}

func FuzzParseCSR(f *testing.F) {
	ca := newTestCA(f)
	signer := ca.Signer(nil)
	f.Fuzz(func(t *testing.T, der []byte) {
		csr, err := pki.ParseCSR(der)
		if err != nil {
			if csr != nil {
				t.Fatal("ParseCSR returned a CSR with an error")
			}
			return
		}
		if !bytes.Equal(csr.Raw, der) {
			t.Fatal("accepted CSR's Raw differs from the input")
		}
		again, err := pki.ParseCSR(csr.Raw)
		if err != nil {
			t.Fatalf("accepted CSR does not parse again: %v", err)
		}
		if err := pki.CheckPublicKey(again.PublicKey); err != nil {
			t.Fatal(err)
		}
		// Whatever names the CSR holds, the certificate carries the request's.
		cert, _, err := signer.Sign(workloadRequest(csr.PublicKey))
		if err != nil {
			t.Fatalf("sign accepted CSR: %v", err)
		}
		if len(cert.URIs) != 1 || cert.URIs[0].String() != testWorkloadID.String() || len(cert.DNSNames) != 0 {
			t.Fatalf("CSR names leaked into the certificate: %v %v", cert.URIs, cert.DNSNames)
		}
	})
}

func FuzzDecodeCertificates(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		certs, err := pki.DecodeCertificates(data, pki.PEMLimits{})
		if err != nil {
			if certs != nil {
				t.Fatal("DecodeCertificates returned certificates with an error")
			}
			return
		}
		if len(certs) == 0 || len(certs) > pki.DefaultPEMMaxBlocks {
			t.Fatalf("accepted %d certificates", len(certs))
		}
		again, err := pki.DecodeCertificates(pki.EncodeCertificates(certs...), pki.PEMLimits{})
		if err != nil {
			t.Fatalf("re-encoded certificates do not decode: %v", err)
		}
		if len(again) != len(certs) {
			t.Fatalf("round trip changed the count: %d -> %d", len(certs), len(again))
		}
		for i := range certs {
			if !certs[i].Equal(again[i]) {
				t.Fatalf("round trip changed certificate %d", i)
			}
		}
	})
}

// TestWriteFuzzSeeds (re)writes the fuzz seed corpus from fresh keys. It runs
// only with MAYFLY_WRITE_FUZZ_SEEDS=1, so that ordinary test runs stay
// read-only.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("MAYFLY_WRITE_FUZZ_SEEDS") != "1" {
		t.Skip("set MAYFLY_WRITE_FUZZ_SEEDS=1 to rewrite testdata/fuzz")
	}
	ca := newTestCA(t)
	chain, _ := ca.IssueWorkload(t, testWorkloadID, time.Hour)
	chainPEM := pki.EncodeCertificates(append(chain, ca.Root)...)
	valid := rawCSR(t, mustKey(t, pki.KeyTypeECDSAP256), nil)
	keyPEM, err := pki.MarshalPrivateKeyPEM(mustKey(t, pki.KeyTypeECDSAP256))
	if err != nil {
		t.Fatal(err)
	}

	writeSeeds(t, "FuzzParseCSR", map[string]any{
		"valid_csr":            valid,
		"valid_csr_ed25519":    rawCSR(t, mustKey(t, pki.KeyTypeEd25519), nil),
		"two_uri_sans":         twoURICSR(t),
		"mismatched_signature": badSignatureCSR(t),
		"rsa1024":              rawCSR(t, mustRSA1024(t), nil),
		"p521":                 rawCSR(t, mustP521(t), nil),
		"truncated_der":        valid[:len(valid)/2],
		"empty":                []byte{},
	})
	writeSeeds(t, "FuzzDecodeCertificates", map[string]any{
		"valid_chain":                chainPEM,
		"valid_chain_crlf":           bytes.ReplaceAll(chainPEM, []byte("\n"), []byte("\r\n")),
		"truncated_pem":              chainPEM[:len(chainPEM)-50],
		"truncated_block_then_valid": append(append([]byte(nil), chainPEM[:100]...), chainPEM...),
		"wrong_type":                 keyPEM,
		"trailing_garbage":           append(append([]byte(nil), chainPEM...), "garbage"...),
		"begin_only":                 []byte("-----BEGIN CERTIFICATE-----\n"),
		"mismatched_end":             []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END X509 CRL-----\n"),
	})
	writeSeeds(t, "FuzzParseID", map[string]any{
		"workload":         "spiffe://example.org/ns/default/sa/web",
		"agent":            "spiffe://example.org/mayfly/agent/node-1",
		"trust_domain":     "spiffe://example.org",
		"uppercase_td":     "spiffe://Example.org/x",
		"uppercase_scheme": "SPIFFE://example.org/x",
		"port":             "spiffe://example.org:8443/x",
		"userinfo":         "spiffe://u:p@example.org/x",
		"percent":          "spiffe://example.org/a%2Fb",
		"query_fragment":   "spiffe://example.org/a?b#c",
		"dot_segments":     "spiffe://example.org/a/../b/./c",
		"empty_segment":    "spiffe://example.org/a//b",
		"trailing_slash":   "spiffe://example.org/a/",
		"unicode":          "spiffe://ex\u00e4mple.org/caf\u00e9",
		"nul_byte":         "spiffe://example.org/a\x00b",
		"long_td":          "spiffe://" + string(bytes.Repeat([]byte("a"), 256)) + "/x",
		"ipv6_host":        "spiffe://[::1]/x",
	})
}

func writeSeeds(t *testing.T, fuzzName string, seeds map[string]any) {
	t.Helper()
	dir := filepath.Join("testdata", "fuzz", fuzzName)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, v := range seeds {
		var line string
		switch v := v.(type) {
		case []byte:
			line = "[]byte(" + strconv.Quote(string(v)) + ")"
		case string:
			line = "string(" + strconv.Quote(v) + ")"
		default:
			t.Fatalf("seed %s: unsupported type %T", name, v)
		}
		data := []byte("go test fuzz v1\n" + line + "\n")
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
