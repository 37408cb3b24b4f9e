//go:build linux

package caapp_test

import (
	"bufio"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/issuerclient"
	"github.com/mayfly-pki/mayfly/internal/test/childproc"
	"github.com/mayfly-pki/mayfly/internal/test/interleave"
	"github.com/mayfly-pki/mayfly/internal/test/pemfile"
	"github.com/mayfly-pki/mayfly/internal/test/testca"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

const (
	issuanceClients = 4
	issuanceBatch   = 64
	issuanceRound   = issuanceClients * issuanceBatch
)

// BenchmarkIssuance measures issuance in rounds that alternate (a busy
// machine weighs on each alike), b.N certificates or tokens each:
//
//   - raw: a loop of CSR parse + signature check + x509.CreateCertificate
//     on GOMAXPROCS goroutines of this process;
//   - floor, crypto: the CSR check and one signature (below);
//   - grpc: SignWorkloads over mTLS from 4 agents, batches of 64, against a
//     CA in this process that signs with the direct encoder;
//   - grpc-standard: the same against a second CA with standardSigning;
//   - grpc-ed25519: the same against a third CA with keyType ed25519 (its
//     intermediate signs with Ed25519; the CSRs stay P-256);
//   - raw-es256: ecdsa.SignASN1 of a JWT-sized digest with a P-256 key on
//     GOMAXPROCS goroutines: what no JWT-SVID issuance can skip;
//   - jwt: SignJWTs over mTLS from the same 4 agents, batches of 64,
//     against the first CA's ES256 JWT key.
//
// floor is what no X.509 issuance can skip (CSR parse and check, one
// signature): grpc-cpu/floor says how much the CA spends around the
// cryptography, as jwt-cpu/raw-es256 does for tokens. crypto is the two
// operations alone (ecdsa.VerifyASN1 of the CSR on a precomputed hash, one
// signature by the intermediate's key), without the parse: grpc-cpu/crypto
// is the CA over that, crypto-cpu/raw that share of the raw loop, and
// grpc-cpu/raw the CA's CPU per certificate over the raw loop's.
// The agents run in a child process (this test binary, as
// TestIssuanceLoadProcess), so the CPU time this process spends during a
// gRPC round (getrusage) is the CA's alone: cpu-µs/cert (or /token).
// Throughput is certificates (tokens) per wall second; the ratios to raw
// (raw-es256) are reported too.
func BenchmarkIssuance(b *testing.B) {
	key := testca.Key(b)
	csrs := make([][]byte, 256)
	for i := range csrs {
		csrs[i] = testca.CSR(b, key)
	}
	tca := testca.New(b)

	dir := b.TempDir()
	cas := []*runningCA{
		startCA(b, "  nodeRateLimit: 1000000"),
		serveCA(b, strings.Replace(standaloneConfig, "workloads:\n", "standardSigning: true\nworkloads:\n  nodeRateLimit: 1000000\n", 1)),
		serveCA(b, strings.Replace(standaloneConfig, "workloads:\n", "keyType: ed25519\nworkloads:\n  nodeRateLimit: 1000000\n", 1)),
	}
	for i, r := range cas {
		writeAgents(b, filepath.Join(dir, strconv.Itoa(i)), r)
	}
	child := startLoadProcess(b, dir, len(cas))

	type method struct {
		name      string
		run       func(n int) // issues n certificates or tokens
		unit      string      // "cert" or "token"
		base      *method     // reports name/base.name: throughput ratio
		cpuBases  []*method   // reports name-cpu/cpuBase.name for each: CPU ratios
		wall, cpu time.Duration
		n         int
	}
	jwtKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	raw := &method{name: "raw", unit: "cert", run: func(n int) { rawIssue(b, tca, csrs, n) }}
	floor := &method{name: "floor", unit: "cert", base: raw, run: func(n int) { floorIssue(b, tca, csrs, n) }}
	sigs := csrSignatures(b, csrs)
	cryptoFloor := &method{name: "crypto", unit: "cert", cpuBases: []*method{raw}, run: func(n int) { cryptoIssue(b, tca, sigs, n) }}
	rawES256 := &method{name: "raw-es256", unit: "token", run: func(n int) { rawSignES256(b, jwtKey, n) }}
	grpc := &method{name: "grpc", unit: "cert", base: raw, cpuBases: []*method{floor, cryptoFloor, raw}, run: func(n int) { child.run(b, 0, n, "x509") }}
	methods := []*method{
		raw, floor, cryptoFloor, grpc,
		{name: "grpc-standard", unit: "cert", base: raw, cpuBases: []*method{floor, cryptoFloor, raw}, run: func(n int) { child.run(b, 1, n, "x509") }},
		{name: "grpc-ed25519", unit: "cert", base: raw, cpuBases: []*method{grpc, raw}, run: func(n int) { child.run(b, 2, n, "x509") }},
		rawES256,
		{name: "jwt", unit: "token", base: rawES256, cpuBases: []*method{rawES256}, run: func(n int) { child.run(b, 0, n, "jwt") }},
	}
	// MAYFLY_BENCH_ONLY=grpc runs one method alone, for a CPU profile of
	// the CA without the others.
	only := os.Getenv("MAYFLY_BENCH_ONLY")
	b.ResetTimer()
	interleave.Rounds(b.N, issuanceRound, len(methods), func(i, n int) {
		m := methods[i]
		if only != "" && m.name != only {
			return
		}
		cpu0, t0 := cpuTime(), time.Now()
		m.run(n)
		m.wall += time.Since(t0)
		m.cpu += cpuTime() - cpu0
		m.n += n
	})
	b.StopTimer()
	for _, m := range methods {
		if m.n == 0 {
			continue // not run: MAYFLY_BENCH_ONLY names another
		}
		perSec := float64(m.n) / m.wall.Seconds()
		b.ReportMetric(perSec, m.name+"-"+m.unit+"s/s")
		b.ReportMetric(float64(m.cpu.Microseconds())/float64(m.n), m.name+"-cpu-µs/"+m.unit)
		if m.base != nil && m.base.n > 0 {
			b.ReportMetric(perSec/(float64(m.base.n)/m.base.wall.Seconds()), m.name+"/"+m.base.name)
		}
		for _, base := range m.cpuBases {
			if base.n > 0 {
				b.ReportMetric(m.cpu.Seconds()/float64(m.n)/(base.cpu.Seconds()/float64(base.n)), m.name+"-cpu/"+base.name)
			}
		}
	}
}

// rawIssue issues n certificates with crypto/x509 alone, as
// BenchmarkSignWorkloads/raw does, on GOMAXPROCS goroutines.
func rawIssue(b *testing.B, tca *testca.CA, csrs [][]byte, n int) {
	parallel(n, func(i int) {
		csr, err := x509.ParseCertificateRequest(csrs[i%len(csrs)])
		if err == nil {
			err = csr.CheckSignature()
		}
		if err == nil {
			now := time.Now()
			tmpl := &x509.Certificate{SerialNumber: big.NewInt(int64(i + 1)), NotBefore: now, NotAfter: now.Add(time.Hour)}
			_, err = x509.CreateCertificate(rand.Reader, tmpl, tca.Intermediate, csr.PublicKey, tca.IntermediateKey)
		}
		if err != nil {
			b.Error(err)
		}
	})
}

// floorIssue does, n times, what no issuance can skip: parse a CSR, check
// its signature and sign a TBSCertificate-sized message with the
// intermediate's key. Its CPU time per certificate is the floor of the
// CA's.
func floorIssue(b *testing.B, tca *testca.CA, csrs [][]byte, n int) {
	tbs := make([]byte, 600)
	parallel(n, func(i int) {
		csr, err := x509.ParseCertificateRequest(csrs[i%len(csrs)])
		if err == nil {
			err = csr.CheckSignature()
		}
		if err == nil {
			tbs[0] = byte(i)
			sum := sha256.Sum256(tbs)
			_, err = tca.IntermediateKey.Sign(rand.Reader, sum[:], crypto.SHA256)
		}
		if err != nil {
			b.Error(err)
		}
	})
}

// csrSignature is what checking a CSR's signature needs once the CSR is
// parsed: its key, the hash of its TBS and the signature.
type csrSignature struct {
	key       *ecdsa.PublicKey
	hash, sig []byte
}

func csrSignatures(b *testing.B, csrs [][]byte) []csrSignature {
	sigs := make([]csrSignature, len(csrs))
	for i, der := range csrs {
		csr, err := x509.ParseCertificateRequest(der)
		if err != nil {
			b.Fatal(err)
		}
		sum := sha256.Sum256(csr.RawTBSCertificateRequest)
		sigs[i] = csrSignature{key: csr.PublicKey.(*ecdsa.PublicKey), hash: sum[:], sig: csr.Signature}
	}
	return sigs
}

// cryptoIssue does, n times, the two operations of an issuance that
// checks the CSR, and nothing else: ecdsa.VerifyASN1 of a CSR's signature
// over its precomputed hash, and one signature of a TBSCertificate-sized
// message with the intermediate's key. Its CPU time per certificate is the
// cryptographic floor, below floor (which parses the CSR too).
func cryptoIssue(b *testing.B, tca *testca.CA, sigs []csrSignature, n int) {
	parallel(n, func(i int) {
		s := sigs[i%len(sigs)]
		if !ecdsa.VerifyASN1(s.key, s.hash, s.sig) {
			b.Error("CSR signature does not verify")
			return
		}
		var tbs [600]byte
		tbs[0] = byte(i)
		sum := sha256.Sum256(tbs[:])
		if _, err := tca.IntermediateKey.Sign(rand.Reader, sum[:], crypto.SHA256); err != nil {
			b.Error(err)
		}
	})
}

// rawSignES256 signs, n times, the SHA-256 digest of a JWT-SVID's
// header.payload (about 250 bytes) with key: the ES256 signature that every
// token costs, on GOMAXPROCS goroutines.
func rawSignES256(b *testing.B, key *ecdsa.PrivateKey, n int) {
	parallel(n, func(i int) {
		msg := make([]byte, 250)
		msg[0] = byte(i)
		sum := sha256.Sum256(msg)
		if _, err := ecdsa.SignASN1(rand.Reader, key, sum[:]); err != nil {
			b.Error(err)
		}
	})
}

// parallel calls f(0..n-1) on GOMAXPROCS goroutines.
func parallel(n int, f func(i int)) {
	var wg sync.WaitGroup
	workers := min(n, runtime.GOMAXPROCS(0))
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += workers {
				f(i)
			}
		}()
	}
	wg.Wait()
}

// cpuTime is the user and system CPU time of this process.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// writeAgents attests issuanceClients agents at r and writes, under dir,
// what the load process needs to be them: addr, bundle.pem and
// agent<i>.pem (key and chain).
func writeAgents(b *testing.B, dir string, r *runningCA) {
	b.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		b.Fatal(err)
	}
	files := map[string][]byte{"addr": []byte(r.addr), "bundle.pem": pki.EncodeCertificates(r.bundle...)}
	for i := range issuanceClients {
		a := r.attest(b, "host-a")
		keyPEM, err := pki.MarshalPrivateKeyPEM(a.cert.PrivateKey.(crypto.Signer))
		if err != nil {
			b.Fatal(err)
		}
		var chain []*x509.Certificate
		for _, der := range a.cert.Certificate {
			c, err := x509.ParseCertificate(der)
			if err != nil {
				b.Fatal(err)
			}
			chain = append(chain, c)
		}
		files[fmt.Sprintf("agent%d.pem", i)] = append(keyPEM, pki.EncodeCertificates(chain...)...)
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			b.Fatal(err)
		}
	}
}

// loadProcess is the child process that plays the agents.
type loadProcess struct {
	in  *bufio.Writer
	out *bufio.Scanner
}

func startLoadProcess(b *testing.B, dir string, cas int) *loadProcess {
	b.Helper()
	cmd := childproc.Command("TestIssuanceLoadProcess", "MAYFLY_ISSUANCE_LOAD_DIR="+dir, "MAYFLY_ISSUANCE_LOAD_CAS="+strconv.Itoa(cas))
	cmd.Stderr = os.Stderr
	c := childproc.Start(b, cmd) // stopped at cleanup
	p := &loadProcess{in: bufio.NewWriter(c.Stdin), out: bufio.NewScanner(c.Stdout)}
	p.wait(b, "ready")
	return p
}

// run has the child issue n credentials of kind (x509 or jwt) from CA ca
// and waits for it.
func (p *loadProcess) run(b *testing.B, ca, n int, kind string) {
	fmt.Fprintf(p.in, "%d %d %s\n", ca, n, kind)
	if err := p.in.Flush(); err != nil {
		b.Fatal(err)
	}
	p.wait(b, "done")
}

func (p *loadProcess) wait(b *testing.B, word string) {
	for p.out.Scan() {
		line := p.out.Text()
		if line == word {
			return
		}
		if strings.HasPrefix(line, "FAIL") || strings.HasPrefix(line, "error") {
			b.Fatalf("load process: %s", line)
		}
	}
	b.Fatalf("load process ended before %q: %v", word, p.out.Err())
}

// TestIssuanceLoadProcess is the agents' half of BenchmarkIssuance; it
// runs only as that child process. It reads "<ca> <n> <kind>" lines and
// answers "done" once n certificates (kind x509, over SignWorkloads) or
// JWT-SVIDs (kind jwt, over SignJWTs) were issued by CA ca.
func TestIssuanceLoadProcess(t *testing.T) {
	dir := childproc.Getenv(t, "MAYFLY_ISSUANCE_LOAD_DIR", "BenchmarkIssuance")
	cas, err := strconv.Atoi(os.Getenv("MAYFLY_ISSUANCE_LOAD_CAS"))
	if err != nil {
		t.Fatal(err)
	}
	key := testca.Key(t)
	reqs := make([]*issuerv1.WorkloadRequest, issuanceBatch)
	for i := range reqs {
		reqs[i] = &issuerv1.WorkloadRequest{RequestId: strconv.Itoa(i), Csr: testca.CSR(t, key), SpiffeId: "spiffe://example.org/demo/bench"}
	}
	jwtReq := &issuerv1.SignJWTsRequest{}
	for i := range issuanceBatch {
		jwtReq.Requests = append(jwtReq.Requests, &issuerv1.JWTRequest{RequestId: strconv.Itoa(i), SpiffeId: "spiffe://example.org/demo/bench", Audience: []string{"api"}})
	}
	clients := make([][]issuerv1.IssuerClient, cas)
	for ca := range cas {
		caDir := filepath.Join(dir, strconv.Itoa(ca))
		addr, err := os.ReadFile(filepath.Join(caDir, "addr"))
		if err != nil {
			t.Fatal(err)
		}
		bundle := pemfile.Certificates(t, filepath.Join(caDir, "bundle.pem"))
		for i := range issuanceClients {
			raw, err := os.ReadFile(filepath.Join(caDir, fmt.Sprintf("agent%d.pem", i)))
			if err != nil {
				t.Fatal(err)
			}
			cert, err := tls.X509KeyPair(raw, raw)
			if err != nil {
				t.Fatal(err)
			}
			conn, client, err := issuerclient.Dial(issuerclient.Config{
				Address: string(addr), TrustDomain: td,
				Bundle:      func() []*x509.Certificate { return bundle },
				Certificate: func() *tls.Certificate { return &cert },
			})
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			clients[ca] = append(clients[ca], client)
		}
	}
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		var ca, n int
		var kind string
		if _, err := fmt.Sscanf(in.Text(), "%d %d %s", &ca, &n, &kind); err != nil || ca < 0 || ca >= cas || (kind != "x509" && kind != "jwt") {
			fmt.Printf("error: bad command %q\n", in.Text())
			return
		}
		sign := func(c issuerv1.IssuerClient, k int) error { return signBatch(c, reqs[:k]) }
		if kind == "jwt" {
			sign = func(c issuerv1.IssuerClient, k int) error { return signJWTBatch(c, jwtReq.Requests[:k]) }
		}
		if err := signN(clients[ca], n, sign); err != nil {
			fmt.Printf("error: %v\n", err)
			return
		}
		fmt.Println("done")
	}
}

// signN issues n credentials in batches of at most issuanceBatch, spread
// over clients; sign issues one batch of k.
func signN(clients []issuerv1.IssuerClient, n int, sign func(c issuerv1.IssuerClient, k int) error) error {
	var wg sync.WaitGroup
	errs := make(chan error, len(clients))
	per := (n + len(clients) - 1) / len(clients)
	for i, c := range clients {
		mine := min(per, n-i*per)
		if mine <= 0 {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for mine > 0 {
				k := min(mine, issuanceBatch)
				if err := sign(c, k); err != nil {
					errs <- err
					return
				}
				mine -= k
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// signBatch issues the certificates of reqs in one SignWorkloads call.
func signBatch(c issuerv1.IssuerClient, reqs []*issuerv1.WorkloadRequest) error {
	resp, err := c.SignWorkloads(context.Background(), &issuerv1.SignWorkloadsRequest{Requests: reqs})
	if err != nil {
		return err
	}
	for _, res := range resp.GetResults() {
		if res.GetIssued() == nil {
			return fmt.Errorf("denied: %s", res.GetDenial().GetMessage())
		}
	}
	return nil
}

// signJWTBatch issues the JWT-SVIDs of reqs in one SignJWTs call.
func signJWTBatch(c issuerv1.IssuerClient, reqs []*issuerv1.JWTRequest) error {
	resp, err := c.SignJWTs(context.Background(), &issuerv1.SignJWTsRequest{Requests: reqs})
	if err != nil {
		return err
	}
	for _, res := range resp.GetResults() {
		if res.GetIssued() == nil {
			return fmt.Errorf("JWT denied: %s", res.GetDenial().GetMessage())
		}
	}
	return nil
}
