package agentapp_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	gooidc "github.com/coreos/go-oidc/v3/oidc"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mayfly-pki/mayfly/internal/agent"
	"github.com/mayfly-pki/mayfly/internal/test/filemode"
	"github.com/mayfly-pki/mayfly/internal/test/loopback"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// TestEndToEndJWTSVID: go-spiffe's JWTSource and jwtsvid.ParseAndValidate,
// unchanged, against the agent's socket with a real CA behind it.
func TestEndToEndJWTSVID(t *testing.T) {
	s := startStack(t, "1m")
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	addr := workloadapi.WithClientOptions(workloadapi.WithAddr("unix://" + s.socket))
	src, err := workloadapi.NewJWTSource(ctx, addr)
	if err != nil {
		t.Fatalf("NewJWTSource: %v", err)
	}
	defer src.Close()
	// The agent holds the CA's JWT keys once its bundle stream delivered
	// them; the source gets them pushed.
	wait.Within(t, "the JWT bundle holds a key", 90*time.Second, 50*time.Millisecond, func() bool {
		b, err := src.GetJWTBundleForTrustDomain(serverID.TrustDomain())
		return err == nil && len(b.JWTAuthorities()) > 0
	})

	svid, err := src.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "api", ExtraAudiences: []string{"vault"}, Subject: serverID})
	if err != nil {
		t.Fatalf("FetchJWTSVID: %v", err)
	}
	if svid.ID != serverID {
		t.Fatalf("JWT-SVID for %s, want %s", svid.ID, serverID)
	}
	got, err := jwtsvid.ParseAndValidate(svid.Marshal(), src, []string{"vault"})
	if err != nil {
		t.Fatalf("go-spiffe ParseAndValidate: %v", err)
	}
	if life := time.Until(got.Expiry); life > 5*time.Minute || life < 3*time.Minute {
		t.Errorf("token lives %s more, want about the 5m default", life)
	}

	// The cache answers the same (identity, audience set) with the same
	// token until its half-life, whatever the audience order.
	again, err := src.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "vault", ExtraAudiences: []string{"api"}, Subject: serverID})
	if err != nil || again.Marshal() != svid.Marshal() {
		t.Errorf("second fetch: %v, same token %v", err, err == nil && again.Marshal() == svid.Marshal())
	}

	client, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+s.socket))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	v, err := client.ValidateJWTSVID(ctx, svid.Marshal(), "api")
	if err != nil || v.ID != serverID {
		t.Fatalf("ValidateJWTSVID: %v (%v)", err, v)
	}
	for _, tc := range []struct {
		name, token, audience, want string
	}{
		{"wrong audience", svid.Marshal(), "other", `aud does not contain "other"`},
		{"malformed", "a.b", "api", "segments"},
		{"signature tampered", svid.Marshal()[:len(svid.Marshal())-4] + "AAAA", "api", "signature does not verify"},
	} {
		_, err := client.ValidateJWTSVID(ctx, tc.token, tc.audience)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want InvalidArgument naming %q", tc.name, err, tc.want)
		}
	}
	// An audience is required.
	if _, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Subject: serverID}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("FetchJWTSVID without audience: %v, want InvalidArgument", err)
	}
	// Both identities of the caller, one token each.
	all, err := client.FetchJWTSVIDs(ctx, jwtsvid.Params{Audience: "api"})
	if err != nil || len(all) != 2 {
		t.Fatalf("FetchJWTSVIDs: %d SVIDs, %v; want 2", len(all), err)
	}
}

// TestEndToEndOIDC: the CA serves discovery and the JWKS over HTTPS at its
// issuer URL; go-oidc verifies a JWT-SVID the agent handed a workload.
func TestEndToEndOIDC(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, pool := serverCert(t, dir)
	addr := loopback.FreeAddr(t) // the CA listens there
	issuer := "https://" + addr + "/mayfly"
	s := startStackCA(t, "1m", `healthAddress: "off"`, fmt.Sprintf(`
jwt:
  issuer: %s
  oidc: {listenAddress: %q, certFile: %s, keyFile: %s}
`, issuer, addr, certFile, keyFile))
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	client, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+s.socket))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	var svid *jwtsvid.SVID
	wait.Within(t, "a JWT-SVID", 90*time.Second, 100*time.Millisecond, func() bool {
		svid, err = client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "sts.example.com", Subject: serverID})
		return err == nil
	})
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	octx := gooidc.ClientContext(ctx, hc)
	var provider *gooidc.Provider
	wait.Within(t, "the discovery document", 30*time.Second, 100*time.Millisecond, func() bool {
		provider, err = gooidc.NewProvider(octx, issuer)
		return err == nil
	})
	tok, err := provider.Verifier(&gooidc.Config{ClientID: "sts.example.com", SupportedSigningAlgs: []string{"ES256"}}).Verify(octx, svid.Marshal())
	if err != nil {
		t.Fatalf("go-oidc through the CA's discovery document: %v", err)
	}
	if tok.Subject != serverID.String() || tok.Issuer != issuer {
		t.Fatalf("sub %s iss %s", tok.Subject, tok.Issuer)
	}
	if _, err := provider.Verifier(&gooidc.Config{ClientID: "other"}).Verify(octx, svid.Marshal()); err == nil {
		t.Fatal("go-oidc accepted a token for another audience")
	}
}

// serverCert writes a self-signed certificate for 127.0.0.1 and its key
// (0600) and returns the pool that trusts it.
func serverCert(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "oidc"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	certFile, keyFile = filepath.Join(dir, "oidc.crt"), filepath.Join(dir, "oidc.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, pool
}

// TestEndToEndJWTFile: with writeDirJWTAudience, each registration's
// writeDir directory gets jwt.token (0600), a JWT-SVID of its identity for
// those audiences that go-spiffe's jwtsvid.ParseAndValidate accepts
// against the JWT bundle the agent serves. (Its re-writing at the
// half-life: TestEndToEndJWTFileHalfLife.)
func TestEndToEndJWTFile(t *testing.T) {
	s := startStackWith(t, "1m", "healthAddress: \"off\"\nwriteDirJWTAudience: [vault, sts.example.com]")
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	for _, id := range []spiffeid.ID{serverID, clientID} {
		path := filepath.Join(agent.WriteDir(s.writeDir, id), agent.JWTFileName)
		var raw []byte
		wait.Within(t, "jwt.token of "+id.String(), 90*time.Second, 50*time.Millisecond, func() bool {
			var err error
			raw, err = os.ReadFile(path)
			return err == nil
		})
		filemode.Want(t, path, 0o600)
		var bundles *jwtbundle.Set
		wait.Within(t, "the agent's JWT bundle", 90*time.Second, 100*time.Millisecond, func() bool {
			var err error
			bundles, err = workloadapi.FetchJWTBundles(ctx, workloadapi.WithAddr("unix://"+s.socket))
			if err != nil {
				return false
			}
			b, ok := bundles.Get(id.TrustDomain())
			return ok && len(b.JWTAuthorities()) > 0
		})
		svid, err := jwtsvid.ParseAndValidate(string(raw), bundles, []string{"sts.example.com"})
		if err != nil {
			t.Fatalf("go-spiffe ParseAndValidate of %s: %v", path, err)
		}
		if svid.ID != id || !slices.Equal(sortedCopy(svid.Audience), []string{"sts.example.com", "vault"}) {
			t.Fatalf("jwt.token of %s: sub %s aud %v", id, svid.ID, svid.Audience)
		}
		if _, err := jwtsvid.ParseAndValidate(string(raw), bundles, []string{"other"}); err == nil {
			t.Fatal("jwt.token validated for an audience not configured")
		}
	}
}

func sortedCopy(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// TestEndToEndJWTFileHalfLife: the agent on a fake clock (the CA on the
// real one) re-writes jwt.token with a new token once its clock passes the
// token's half-life, not before; the new token validates.
func TestEndToEndJWTFileHalfLife(t *testing.T) {
	clock := rotate.NewFakeClock(time.Now())
	s := startStackClock(t, "1m", "healthAddress: \"off\"\nwriteDirJWTAudience: [vault]", "", clock)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	path := filepath.Join(agent.WriteDir(s.writeDir, serverID), agent.JWTFileName)
	read := func() string {
		raw, _ := os.ReadFile(path)
		return string(raw)
	}
	// The agent's retries run on its clock: move it on while waiting.
	wait.Within(t, "jwt.token", 90*time.Second, 50*time.Millisecond, func() bool {
		clock.Advance(50 * time.Millisecond)
		return read() != ""
	})
	first, seen := read(), clock.Now()
	var bundles *jwtbundle.Set
	wait.Within(t, "the agent's JWT bundle", 90*time.Second, 100*time.Millisecond, func() bool {
		var err error
		bundles, err = workloadapi.FetchJWTBundles(ctx, workloadapi.WithAddr("unix://"+s.socket))
		return err == nil
	})
	svid, err := jwtsvid.ParseAndValidate(first, bundles, []string{"vault"})
	if err != nil {
		t.Fatalf("first jwt.token: %v", err)
	}
	// The agent obtained the token at most a few seconds of its clock
	// before seen: its half-life is within 5s before the middle of
	// [seen, exp].
	half := seen.Add(svid.Expiry.Sub(seen) / 2)
	clock.Set(half.Add(-5 * time.Second))
	if read() != first {
		t.Fatal("jwt.token re-written before its half-life")
	}
	clock.Set(half.Add(time.Second))
	// The agent's batch window runs on its clock too: move it on, in
	// steps far below the half-life, while waiting.
	wait.Within(t, "jwt.token re-written at the half-life", 90*time.Second, 50*time.Millisecond, func() bool {
		clock.Advance(50 * time.Millisecond)
		return read() != first
	})
	next, err := jwtsvid.ParseAndValidate(read(), bundles, []string{"vault"})
	// (A new token: the CA, on the real clock, may give it the same exp.)
	if err != nil || next.ID != serverID {
		t.Fatalf("renewed jwt.token: %v, sub %v", err, next)
	}
}
