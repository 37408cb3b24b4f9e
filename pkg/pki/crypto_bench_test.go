//go:build unix

package pki_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"io"
	"math/big"
	"net/url"
	"syscall"
	"testing"
	"time"

	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// BenchmarkCrypto measures, in one process, what each cryptographic step of
// an issuance costs, against the raw crypto/x509 loop and mayfly's path (as
// BenchmarkIssue). Each step runs on one goroutine and reports cpu-ns/op,
// the process's CPU time (getrusage, garbage collection included) per
// operation, which a loaded machine inflates far less than ns/op. The floor
// of any issuance that checks the CSR is verify-asn1 plus the signature of
// the intermediate's key type (sign-ecdsa-p256 by default).
//
//   - verify-check: x509.CertificateRequest.CheckSignature of a parsed CSR
//     (it hashes the TBS and converts the key on each call);
//   - verify-asn1: ecdsa.VerifyASN1 with the parsed key and a precomputed
//     SHA-256 hash: the CSR check alone;
//   - parse-check: x509.ParseCertificateRequest + CheckSignature;
//   - parse-direct: pki.ParseCSR (the direct parser and its check);
//   - sign-<key type>: one signature of a TBSCertificate-sized message by
//     an intermediate of that type (rand.Reader: hedged nonces for ECDSA);
//   - sign-ecdsa-p256-rfc6979: the same with deterministic nonces (rand nil);
//   - raw: x509.ParseCertificateRequest + CheckSignature +
//     x509.CreateCertificate with a P-256 intermediate;
//   - full: pki.ParseCSR + Signer.Sign (direct encoder, self-check) with the
//     same intermediate.
func BenchmarkCrypto(b *testing.B) {
	csrDER := rawCSR(b, mustKey(b, pki.KeyTypeECDSAP256), nil)
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		b.Fatal(err)
	}
	csrHash := sha256.Sum256(csr.RawTBSCertificateRequest)
	csrKey := csr.PublicKey.(*ecdsa.PublicKey)

	b.Run("verify-check", func(b *testing.B) {
		cpuLoop(b, func(int) error { return csr.CheckSignature() })
	})
	b.Run("verify-asn1", func(b *testing.B) {
		cpuLoop(b, func(int) error {
			if !ecdsa.VerifyASN1(csrKey, csrHash[:], csr.Signature) {
				return pki.ErrCSRSignature
			}
			return nil
		})
	})
	b.Run("parse-check", func(b *testing.B) {
		cpuLoop(b, func(int) error {
			c, err := x509.ParseCertificateRequest(csrDER)
			if err != nil {
				return err
			}
			return c.CheckSignature()
		})
	})
	b.Run("parse-direct", func(b *testing.B) {
		cpuLoop(b, func(int) error {
			_, err := pki.ParseCSR(csrDER)
			return err
		})
	})
	tbs := make([]byte, 600) // about a workload SVID's TBSCertificate
	for _, kt := range pki.KeyTypes() {
		key := mustKey(b, kt)
		b.Run("sign-"+string(kt), func(b *testing.B) {
			cpuLoop(b, func(i int) error { return signTBS(key, rand.Reader, tbs, i) })
		})
		if kt == pki.KeyTypeECDSAP256 {
			b.Run("sign-"+string(kt)+"-rfc6979", func(b *testing.B) {
				cpuLoop(b, func(i int) error { return signTBS(key, nil, tbs, i) })
			})
		}
	}

	ca := newTestCA(b)
	uri := testWorkloadID.URL()
	b.Run("raw", func(b *testing.B) {
		cpuLoop(b, func(i int) error { return rawIssue(ca, csrDER, uri, i) })
	})
	b.Run("full", func(b *testing.B) {
		signer := ca.Signer(fixedClock(testNow))
		cpuLoop(b, func(int) error {
			c, err := pki.ParseCSR(csrDER)
			if err != nil {
				return err
			}
			_, _, err = signer.Sign(workloadRequest(c.PublicKey))
			return err
		})
	})
}

// cpuLoop runs f for b.N operations and reports the process's CPU time per
// operation (cpu-ns/op) and the allocations.
func cpuLoop(b *testing.B, f func(i int) error) {
	b.ReportAllocs()
	var cpu0 time.Duration
	for i := 0; b.Loop(); i++ {
		if i == 0 {
			cpu0 = processCPU(b)
		}
		if err := f(i); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64((processCPU(b)-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op")
}

// processCPU is the user and system CPU time of this process.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// signTBS signs msg (its first byte set from i) with key, as an
// intermediate signs a leaf: the SHA-256 hash for P-256 and RSA, SHA-384
// for P-384, the message itself for Ed25519.
func signTBS(key crypto.Signer, rnd io.Reader, msg []byte, i int) error {
	msg[0] = byte(i)
	if _, ok := key.(ed25519.PrivateKey); ok {
		_, err := key.Sign(rnd, msg, crypto.Hash(0))
		return err
	}
	h := crypto.SHA256
	if k, ok := key.(*ecdsa.PrivateKey); ok && k.Curve == elliptic.P384() {
		h = crypto.SHA384
	}
	d := h.New()
	d.Write(msg)
	_, err := key.Sign(rnd, d.Sum(nil), h)
	return err
}

// rawIssue is the baseline of the issuance benchmarks: the raw crypto/x509
// loop (parse the CSR, check its signature, CreateCertificate from a
// template) for certificate number i.
func rawIssue(ca *testCA, csrDER []byte, uri *url.URL, i int) error {
	c, err := x509.ParseCertificateRequest(csrDER)
	if err == nil {
		err = c.CheckSignature()
	}
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(int64(i) + 1),
		NotBefore:             testNow.Add(-time.Minute),
		NotAfter:              testNow.Add(time.Hour),
		URIs:                  []*url.URL{uri},
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	_, err = x509.CreateCertificate(rand.Reader, tmpl, ca.Intermediate, c.PublicKey, ca.IntermediateKey)
	return err
}
