package issuer_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/issuer"
	"github.com/mayfly-pki/mayfly/internal/test/fakeauthority"
	"github.com/mayfly-pki/mayfly/pkg/jwtsvid"
)

// withJWTKey puts a fresh ES256 JWT key into the harness's authority.
func (h *harness) withJWTKey() (*authority.Loaded, *jwtbundle.Bundle) {
	h.t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		h.t.Fatal(err)
	}
	kid, _ := jwtsvid.KeyID(key.Public())
	l := fakeauthority.Loaded(h.tca, "v-jwt")
	l.JWTSigner = &authority.JWTSigner{KeyID: kid, Key: key}
	l.JWTKeys = map[string]crypto.PublicKey{kid: key.Public()}
	h.src.Set(l, nil)
	b := jwtbundle.New(h.tca.TrustDomain)
	b.AddJWTAuthority(kid, key.Public())
	return l, b
}

func jwtItem(reqID, id string, ttl int64, aud ...string) *issuerv1.JWTRequest {
	return &issuerv1.JWTRequest{RequestId: reqID, SpiffeId: id, PodUid: "uid-" + reqID, TtlSeconds: ttl, Audience: aud}
}

func TestSignJWTs(t *testing.T) {
	h := newHarness(t)
	_, bundle := h.withJWTKey()
	h.authz.grant("node-a", webID)
	h.authz.grant("node-a", "spiffe://example.org/mayfly/ca")
	agent := h.agent("node-a")

	tests := []struct {
		name     string
		item     *issuerv1.JWTRequest
		wantCode issuerv1.Denial_Code
		wantRule string
		wantTTL  time.Duration
	}{
		{name: "default lifetime is 5 minutes", item: jwtItem("ok", webID, 0, "api"), wantTTL: 5 * time.Minute},
		{name: "an hour is allowed", item: jwtItem("hour", webID, 3600, "api", "vault"), wantTTL: time.Hour},
		{name: "more than an hour is refused", item: jwtItem("long", webID, 3601, "api"), wantCode: issuerv1.Denial_INVALID_ARGUMENT, wantRule: "jwt-ttl"},
		{name: "negative ttl is refused", item: jwtItem("neg", webID, -1, "api"), wantCode: issuerv1.Denial_INVALID_ARGUMENT},
		{name: "no audience is refused", item: jwtItem("noaud", webID, 0), wantCode: issuerv1.Denial_INVALID_ARGUMENT, wantRule: "jwt-audience"},
		{name: "17 audiences are refused", item: jwtItem("manyaud", webID, 0, strings.Split(strings.Repeat("a,", 16)+"a", ",")...), wantCode: issuerv1.Denial_INVALID_ARGUMENT, wantRule: "jwt-audience"},
		{name: "an over-long audience is refused", item: jwtItem("longaud", webID, 0, strings.Repeat("a", 300)), wantCode: issuerv1.Denial_INVALID_ARGUMENT, wantRule: "jwt-audience"},
		{name: "a reserved ID is refused even when granted", item: jwtItem("ca", "spiffe://example.org/mayfly/ca", 0, "api"), wantCode: issuerv1.Denial_PERMISSION_DENIED, wantRule: "reserved-id"},
		{name: "an ID not granted to the node is refused", item: jwtItem("other", "spiffe://example.org/ns/x/sa/y", 0, "api"), wantCode: issuerv1.Denial_PERMISSION_DENIED},
	}
	req := &issuerv1.SignJWTsRequest{}
	for _, tc := range tests {
		req.Requests = append(req.Requests, tc.item)
	}
	resp, err := agent.SignJWTs(ctx(t), req)
	if err != nil {
		t.Fatalf("SignJWTs: %v", err)
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := resp.GetResults()[i]
			if res.GetRequestId() != tc.item.GetRequestId() {
				t.Fatalf("result %d answers %q", i, res.GetRequestId())
			}
			if tc.wantCode != issuerv1.Denial_CODE_UNSPECIFIED {
				d := res.GetDenial()
				if d.GetCode() != tc.wantCode || !strings.Contains(d.GetMessage(), tc.wantRule) {
					t.Fatalf("denial %v %q, want %v naming %q", d.GetCode(), d.GetMessage(), tc.wantCode, tc.wantRule)
				}
				return
			}
			iss := res.GetIssued()
			if iss == nil {
				t.Fatalf("denied: %v", res.GetDenial())
			}
			c, err := jwtsvid.Validate(iss.GetToken(), tc.item.GetAudience()[0], bundle, h.clock.Now())
			if err != nil {
				t.Fatalf("issued token does not validate: %v", err)
			}
			if c.Subject.String() != webID || c.Expiry.Sub(c.IssuedAt) != tc.wantTTL || c.Expiry.Unix() != iss.GetExpiresAtUnix() {
				t.Fatalf("claims %+v, want sub %s and a lifetime of %s", c, webID, tc.wantTTL)
			}
		})
	}
	if got := h.issued("jwt", "issued"); got != 2 {
		t.Errorf("jwt issued = %v, want 2", got)
	}
	var audited int
	for _, l := range h.auditLines() {
		if l["kind"] == "jwt" && l["event"] == "issue" {
			audited++
			if l["kid"] == "" || l["spiffe_id"] != webID {
				t.Errorf("audit line %v lacks kid or spiffe_id", l)
			}
			for k, v := range l {
				if s, ok := v.(string); ok && strings.Count(s, ".") == 2 && strings.HasPrefix(s, "ey") {
					t.Errorf("audit line carries a token in %s", k)
				}
			}
		}
	}
	if audited != 2 {
		t.Errorf("%d JWT issue audit lines, want 2", audited)
	}
}

func TestSignJWTsRefusals(t *testing.T) {
	h := newHarness(t)
	h.authz.grant("node-a", webID)
	// No JWT key yet: the whole batch is unavailable.
	_, err := h.agent("node-a").SignJWTs(ctx(t), &issuerv1.SignJWTsRequest{Requests: []*issuerv1.JWTRequest{jwtItem("a", webID, 0, "api")}})
	wantCode(t, err, codes.Unavailable)
	h.withJWTKey()
	_, err = h.dial(nil).SignJWTs(ctx(t), &issuerv1.SignJWTsRequest{Requests: []*issuerv1.JWTRequest{jwtItem("a", webID, 0, "api")}})
	wantCode(t, err, codes.Unauthenticated)
	big := &issuerv1.SignJWTsRequest{}
	for i := range 513 {
		big.Requests = append(big.Requests, jwtItem(fmt.Sprint(i), webID, 0, "api"))
	}
	_, err = h.agent("node-a").SignJWTs(ctx(t), big)
	wantCode(t, err, codes.InvalidArgument)
}

func TestBundleCarriesJWTKeys(t *testing.T) {
	h := newHarness(t)
	l, _ := h.withJWTKey()
	stream, err := h.agent("node-a").WatchBundle(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	b, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(b.GetJwtAuthorities()) != 1 || b.GetJwtAuthorities()[0].GetKeyId() != l.JWTSigner.KeyID {
		t.Fatalf("bundle JWT authorities %v, want the one key %s", b.GetJwtAuthorities(), l.JWTSigner.KeyID)
	}
}

// jwtBatchBench is the issuance side of the JWT signing benchmarks: an
// issuer with a JWT key and no per-node rate limit, the client of node-a
// (granted webID), and a SignJWTs request of 64 tokens for webID.
func jwtBatchBench(b *testing.B) (issuerv1.IssuerClient, *issuerv1.SignJWTsRequest) {
	b.Helper()
	h := newHarness(b, func(c *issuer.Config) { c.NodeRate, c.NodeBurst = rate.Inf, 1<<30 })
	h.withJWTKey()
	req := &issuerv1.SignJWTsRequest{}
	for i := range 64 {
		req.Requests = append(req.Requests, jwtItem(fmt.Sprint(i), webID, 0, "api"))
	}
	return h.webAgent(), req
}

// BenchmarkJWTSigning compares the ES256 signing rate of issuance (SignJWTs
// over mTLS gRPC, batches of 64, authorization and audit included; and the
// bare jwtsvid.Signer) with raw ecdsa.Sign of a SHA-256 digest, in the same
// run. Report: tokens/s of each; the ratio issuance/raw is the figure.
func BenchmarkJWTSigning(b *testing.B) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	digest := sha256.Sum256([]byte("header.payload of a JWT-SVID of about this size........................"))
	b.Run("raw-ecdsa-sign", func(b *testing.B) {
		for b.Loop() {
			if _, err := ecdsa.SignASN1(rand.Reader, key, digest[:]); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tokens/s")
	})
	b.Run("jwtsvid-signer", func(b *testing.B) {
		s, _ := jwtsvid.NewSigner(key, "kid")
		id := spiffeid.RequireFromString(webID)
		for b.Loop() {
			if _, err := s.Sign(jwtsvid.Claims{Subject: id, Audience: []string{"api"}, IssuedAt: epoch, Expiry: epoch.Add(5 * time.Minute)}); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tokens/s")
	})
	b.Run("issuance-SignJWTs-batch64", func(b *testing.B) {
		agent, req := jwtBatchBench(b)
		tokens := 0
		for b.Loop() {
			resp, err := agent.SignJWTs(b.Context(), req)
			if err != nil {
				b.Fatalf("SignJWTs: %v", err)
			}
			if d := resp.GetResults()[0].GetDenial(); d != nil {
				b.Fatalf("denied: %v", d)
			}
			tokens += len(resp.GetResults())
		}
		b.ReportMetric(float64(tokens)/b.Elapsed().Seconds(), "tokens/s")
	})
}

// BenchmarkJWTSigningRatio measures the same as BenchmarkJWTSigning with
// the two alternating in short rounds (64 raw signatures, then one SignJWTs
// batch of 64), so that the load of a shared machine falls on both alike;
// it reports the ratio of issuance to raw ecdsa.Sign tokens/s. The client
// runs in this process, so its gRPC and TLS work counts against issuance;
// internal/app/caapp BenchmarkIssuance (methods jwt and raw-es256) puts
// the agents in a child process and measures the CA's CPU alone.
func BenchmarkJWTSigningRatio(b *testing.B) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	digest := sha256.Sum256([]byte("header.payload of a JWT-SVID of about this size........................"))
	agent, req := jwtBatchBench(b)
	var raw, issued, rawCPU, issuedCPU time.Duration
	for b.Loop() {
		t0, c0 := time.Now(), processCPU(b)
		for range 64 {
			if _, err := ecdsa.SignASN1(rand.Reader, key, digest[:]); err != nil {
				b.Fatal(err)
			}
		}
		t1, c1 := time.Now(), processCPU(b)
		resp, err := agent.SignJWTs(b.Context(), req)
		if err != nil || resp.GetResults()[63].GetIssued() == nil {
			b.Fatalf("SignJWTs: %v", err)
		}
		raw, issued = raw+t1.Sub(t0), issued+time.Since(t1)
		rawCPU, issuedCPU = rawCPU+c1-c0, issuedCPU+processCPU(b)-c1
	}
	b.ReportMetric(float64(64*b.N)/raw.Seconds(), "raw-tokens/s")
	b.ReportMetric(float64(64*b.N)/issued.Seconds(), "issued-tokens/s")
	b.ReportMetric(raw.Seconds()/issued.Seconds(), "ratio")
	// The same per CPU second of the process (client and server of the
	// call included): what a loaded machine's scheduling does not blur.
	b.ReportMetric(rawCPU.Seconds()/issuedCPU.Seconds(), "cpu-ratio")
}

// processCPU is the CPU time (user and system) the process used so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
