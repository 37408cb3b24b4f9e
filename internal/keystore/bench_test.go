package keystore_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"sync"
	"testing"
	"time"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/test/interleave"
	"github.com/mayfly-pki/mayfly/internal/test/softhsm"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// BenchmarkIssuanceKeyCustody signs workload SVIDs with the intermediate
// key in memory and in SoftHSM2, in alternating rounds of the same run,
// and reports both costs and their ratio (softhsm/memory), sequentially
// and with 4 concurrent signers (make bench-pkcs11).
func BenchmarkIssuanceKeyCustody(b *testing.B) {
	tok := softhsm.NewToken(b, "mayfly-bench")
	k := open(b, config(tok))
	ctx := context.Background()
	now := time.Now()
	rootKey, _ := pki.GenerateKey(pki.KeyTypeECDSAP256, rand.Reader)
	root, err := pki.SelfSignedRoot(rootKey, td, 24*time.Hour, now, rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	signerFor := func(key crypto.Signer) *pki.Signer {
		cert, err := authority.SignIntermediate(root, rootKey, key.Public(), td, time.Hour, now, rand.Reader)
		if err != nil {
			b.Fatal(err)
		}
		return &pki.Signer{Authority: pki.Authority{Cert: cert, Key: key}, Now: func() time.Time { return now }, Rand: rand.Reader, Options: pki.DefaultWorkloadOptions()}
	}
	memKey, _ := pki.GenerateKey(pki.KeyTypeECDSAP256, rand.Reader)
	_, hsmKey, err := k.CreateKey(ctx, "intermediate", pki.KeyTypeECDSAP256)
	if err != nil {
		b.Fatal(err)
	}
	mem, hsm := signerFor(memKey), signerFor(hsmKey)
	leafKey, _ := pki.GenerateKey(pki.KeyTypeECDSAP256, rand.Reader)
	id, _ := pki.WorkloadID(td, "default", "web")
	req := pki.SignRequest{Kind: pki.KindWorkload, PublicKey: leafKey.Public(), ID: id, TTL: time.Hour}

	for _, workers := range []int{1, 4} {
		b.Run(map[int]string{1: "sequential", 4: "concurrent4"}[workers], func(b *testing.B) {
			round := func(s *pki.Signer, n int) time.Duration {
				start := time.Now()
				var wg sync.WaitGroup
				for w := 0; w < workers; w++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for i := w; i < n; i += workers {
							if _, _, err := s.Sign(req); err != nil {
								b.Error(err)
								return
							}
						}
					}()
				}
				wg.Wait()
				return time.Since(start)
			}
			const chunk = 64
			signers := []*pki.Signer{mem, hsm}
			took := make([]time.Duration, len(signers))
			b.ResetTimer()
			interleave.Rounds(b.N, chunk, len(signers), func(i, n int) { took[i] += round(signers[i], n) })
			tMem, tHSM := took[0], took[1]
			b.ReportMetric(float64(tMem.Nanoseconds())/float64(b.N), "ns/issue-memory")
			b.ReportMetric(float64(tHSM.Nanoseconds())/float64(b.N), "ns/issue-softhsm")
			b.ReportMetric(float64(tHSM)/float64(tMem), "softhsm/memory")
		})
	}
}
