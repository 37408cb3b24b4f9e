package pki_test

import (
	"testing"

	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// BenchmarkIssue compares, in one process, the raw crypto/x509 cost of
// issuing a leaf from a CSR (raw) with mayfly's full path (full): ParseCSR
// with its key and signature checks, the default workload policy, Sign with
// the direct encoder and its self-check; full-standard is the same with
// Signer.StandardPath (x509.CreateCertificate). All use the same ECDSA P-256
// intermediate and CSR.
func BenchmarkIssue(b *testing.B) {
	ca := newTestCA(b)
	csrDER := rawCSR(b, mustKey(b, pki.KeyTypeECDSAP256), nil)
	uri := testWorkloadID.URL()

	b.Run("raw", func(b *testing.B) {
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if err := rawIssue(ca, csrDER, uri, i); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "certs/s")
	})

	full := func(b *testing.B, standard bool) {
		signer := ca.Signer(fixedClock(testNow))
		signer.StandardPath = standard
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			csr, err := pki.ParseCSR(csrDER)
			if err != nil {
				b.Fatal(err)
			}
			if _, _, err := signer.Sign(workloadRequest(csr.PublicKey)); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "certs/s")
	}
	b.Run("full", func(b *testing.B) { full(b, false) })
	b.Run("full-standard", func(b *testing.B) { full(b, true) })
}
