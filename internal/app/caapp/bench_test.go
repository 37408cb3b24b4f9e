package caapp_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/x509"
	"math/big"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/test/testca"
)

// BenchmarkSignWorkloads compares sustained issuance over the real issuer
// API (mTLS gRPC on loopback, batches from concurrent agents, CSRs made
// before the clock starts) with a raw loop of CSR parse + signature check +
// x509.CreateCertificate on the same key type, in the same run. Read the
// certs/s metrics side by side; the ratio is the figure that counts.
func BenchmarkSignWorkloads(b *testing.B) {
	const batch = 64
	key := testca.Key(b)
	csrs := make([][]byte, 256)
	for i := range csrs {
		csrs[i] = testca.CSR(b, key)
	}

	b.Run("raw", func(b *testing.B) {
		tca := testca.New(b)
		tmpl := &x509.Certificate{NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				csr, err := x509.ParseCertificateRequest(csrs[i%len(csrs)])
				if err != nil {
					b.Fatal(err)
				}
				if err := csr.CheckSignature(); err != nil {
					b.Fatal(err)
				}
				t := *tmpl
				t.SerialNumber = big.NewInt(int64(i + 1))
				if _, err := x509.CreateCertificate(rand.Reader, &t, tca.Intermediate, csr.PublicKey, tca.IntermediateKey); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "certs/s")
	})

	b.Run("grpc", func(b *testing.B) {
		r := startCA(b, "  nodeRateLimit: 1000000")
		const clients = 4
		agents := make([]*agent, clients)
		for i := range agents {
			agents[i] = r.attest(b, "host-a")
		}
		reqs := make([]*issuerv1.WorkloadRequest, batch)
		for i := range reqs {
			reqs[i] = &issuerv1.WorkloadRequest{RequestId: strconv.Itoa(i), Csr: csrs[i%len(csrs)], SpiffeId: "spiffe://example.org/demo/bench"}
		}
		batches := (b.N + batch - 1) / batch
		var next atomic.Int64
		var mu sync.Mutex
		var lat []time.Duration
		b.ReportAllocs()
		b.ResetTimer()
		var wg sync.WaitGroup
		for _, a := range agents {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var mine []time.Duration
				for next.Add(1) <= int64(batches) {
					start := time.Now()
					resp, err := a.client.SignWorkloads(context.Background(), &issuerv1.SignWorkloadsRequest{Requests: reqs})
					if err != nil {
						b.Error(err)
						return
					}
					mine = append(mine, time.Since(start))
					for _, res := range resp.GetResults() {
						if res.GetIssued() == nil {
							b.Errorf("denied: %s", res.GetDenial().GetMessage())
							return
						}
					}
				}
				mu.Lock()
				lat = append(lat, mine...)
				mu.Unlock()
			}()
		}
		wg.Wait()
		b.StopTimer()
		issued := batches * batch
		b.ReportMetric(float64(issued)/b.Elapsed().Seconds(), "certs/s")
		if len(lat) > 0 {
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-batch-ms")
		}
		b.ReportMetric(float64(rssKB())/1024, "rss-MB")
	})
}

func rssKB() int {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return n
		}
	}
	return 0
}
