package oidc_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	gooidc "github.com/coreos/go-oidc/v3/oidc"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/oidc"
	"github.com/mayfly-pki/mayfly/pkg/jwtsvid"
)

var (
	td  = spiffeid.RequireTrustDomainFromString("example.org")
	sub = spiffeid.RequireFromPath(td, "/ns/default/sa/web")
	t0  = time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
)

// server serves the handler over real TLS at issuer path /oidc, with keys
// from the state that keys() returns.
type server struct {
	srv    *httptest.Server
	issuer string
	mu     sync.Mutex
	state  *authority.State
	now    time.Time
}

func newServer(t *testing.T, s *authority.State) *server {
	t.Helper()
	sv := &server{state: s, now: t0}
	mux := http.NewServeMux()
	sv.srv = httptest.NewUnstartedServer(mux)
	sv.srv.StartTLS()
	t.Cleanup(sv.srv.Close)
	sv.issuer = sv.srv.URL + "/oidc"
	h, err := oidc.New(oidc.Config{Issuer: sv.issuer, Keys: func() (map[string]crypto.PublicKey, error) {
		sv.mu.Lock()
		defer sv.mu.Unlock()
		return sv.state.JWTKeys(sv.now), nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	mux.Handle("/oidc/", h)
	return sv
}

func (sv *server) set(s *authority.State, now time.Time) {
	sv.mu.Lock()
	sv.state, sv.now = s, now
	sv.mu.Unlock()
}

func (sv *server) sign(t *testing.T, s *authority.State, now time.Time, mod func(*jwtsvid.Claims)) string {
	t.Helper()
	signer, err := jwtsvid.NewSigner(s.JWT.Current.Key, s.JWT.Current.KeyID)
	if err != nil {
		t.Fatal(err)
	}
	c := jwtsvid.Claims{Subject: sub, Audience: []string{"api"}, IssuedAt: now, Expiry: now.Add(5 * time.Minute), Issuer: sv.issuer}
	if mod != nil {
		mod(&c)
	}
	tok, err := signer.Sign(c)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func minter() *authority.Minter {
	p := authority.DefaultPolicy()
	p.RootAckWait = 6 * time.Hour
	return &authority.Minter{TrustDomain: td, Policy: p, Rand: rand.Reader}
}

func bootstrap(t *testing.T, m *authority.Minter) *authority.State {
	t.Helper()
	s, err := m.Bootstrap(context.Background(), t0)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func verifier(t *testing.T, sv *server, now func() time.Time) *gooidc.IDTokenVerifier {
	t.Helper()
	ctx := gooidc.ClientContext(t.Context(), sv.srv.Client())
	p, err := gooidc.NewProvider(ctx, sv.issuer)
	if err != nil {
		t.Fatalf("go-oidc discovery: %v", err)
	}
	return p.VerifierContext(ctx, &gooidc.Config{ClientID: "api", SupportedSigningAlgs: []string{"ES256"}, Now: now})
}

// TestGoOIDCVerifies: go-oidc discovers the issuer over HTTPS, fetches the
// JWKS and verifies a JWT-SVID; the bad inputs are refused.
func TestGoOIDCVerifies(t *testing.T) {
	s := bootstrap(t, minter())
	sv := newServer(t, s)
	v := verifier(t, sv, func() time.Time { return t0 })
	ctx := gooidc.ClientContext(t.Context(), sv.srv.Client())
	tok, err := v.Verify(ctx, sv.sign(t, s, t0, nil))
	if err != nil {
		t.Fatalf("go-oidc rejects a JWT-SVID: %v", err)
	}
	if tok.Subject != sub.String() || tok.Issuer != sv.issuer {
		t.Fatalf("sub %s iss %s", tok.Subject, tok.Issuer)
	}

	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	otherSigner, _ := jwtsvid.NewSigner(other, "not-published")
	otherTok, _ := otherSigner.Sign(jwtsvid.Claims{Subject: sub, Audience: []string{"api"}, IssuedAt: t0, Expiry: t0.Add(time.Minute), Issuer: sv.issuer})
	pub, _ := x509.MarshalPKIXPublicKey(s.JWT.Current.Key.Public())
	payload := fmt.Sprintf(`{"sub":%q,"aud":["api"],"iss":%q,"exp":%d}`, sub, sv.issuer, t0.Add(time.Minute).Unix())
	b64 := base64.RawURLEncoding.EncodeToString
	hs := b64([]byte(fmt.Sprintf(`{"alg":"HS256","kid":%q}`, s.JWT.Current.KeyID))) + "." + b64([]byte(payload))
	mac := hmac.New(sha256.New, pub)
	mac.Write([]byte(hs))
	for _, tc := range []struct{ name, token string }{
		{"expired", sv.sign(t, s, t0.Add(-time.Hour), nil)},
		{"wrong audience", sv.sign(t, s, t0, func(c *jwtsvid.Claims) { c.Audience = []string{"other"} })},
		{"another issuer", sv.sign(t, s, t0, func(c *jwtsvid.Claims) { c.Issuer = "https://evil.example" })},
		{"unknown kid", otherTok},
		{"alg none", b64([]byte(`{"alg":"none"}`)) + "." + b64([]byte(payload)) + "."},
		{"HS256 with the public key as secret", hs + "." + b64(mac.Sum(nil))},
		{"malformed", "a.b"},
	} {
		if _, err := v.Verify(ctx, tc.token); err == nil {
			t.Errorf("%s: go-oidc accepted it through our JWKS", tc.name)
		}
	}
}

// TestRotationNeverUnknownKey: through a JWT key rotation, every token
// signed with the key in force verifies with go-oidc (which caches the
// JWKS and refetches only on an unknown kid) at every step.
func TestRotationNeverUnknownKey(t *testing.T) {
	m := minter()
	s := bootstrap(t, m)
	sv := newServer(t, s)
	var nowMu sync.Mutex
	now := t0
	v := verifier(t, sv, func() time.Time { nowMu.Lock(); defer nowMu.Unlock(); return now })
	ctx := gooidc.ClientContext(t.Context(), sv.srv.Client())
	type tok struct {
		raw string
		exp time.Time
	}
	var live []tok
	rotations := 0
	for at := t0; at.Before(t0.Add(50 * time.Hour)); at = at.Add(20 * time.Minute) {
		d := authority.Plan(s, at, m.Policy, func() bool { return true })
		for _, step := range d.Steps {
			n, err := m.Apply(context.Background(), s, step, at)
			if err != nil {
				t.Fatal(err)
			}
			s = n
			if step == authority.StepActivateJWTKey {
				rotations++
			}
		}
		sv.set(s, at)
		nowMu.Lock()
		now = at
		nowMu.Unlock()
		live = append(live, tok{sv.sign(t, s, at, func(c *jwtsvid.Claims) { c.Expiry = at.Add(time.Hour) }), at.Add(time.Hour)})
		kept := live[:0]
		for _, tk := range live {
			if !at.Before(tk.exp) {
				continue
			}
			kept = append(kept, tk)
			if _, err := v.Verify(ctx, tk.raw); err != nil {
				t.Fatalf("at +%s: %v", at.Sub(t0), err)
			}
		}
		live = kept
	}
	if rotations < 2 {
		t.Fatalf("%d rotations in 50h of 24h keys, want 2", rotations)
	}
}

func TestHTTP(t *testing.T) {
	s := bootstrap(t, minter())
	sv := newServer(t, s)
	c := sv.srv.Client()
	get := func(method, path, etag string) *http.Response {
		t.Helper()
		req, _ := http.NewRequestWithContext(t.Context(), method, sv.issuer+path, nil)
		if etag != "" {
			req.Header.Set("If-None-Match", etag)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = resp.Body.Close() })
		return resp
	}
	resp := get(http.MethodGet, oidc.DiscoveryPath, "")
	var doc map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil || doc["issuer"] != sv.issuer || doc["jwks_uri"] != sv.issuer+"/keys" {
		t.Fatalf("discovery %v %v", doc, err)
	}
	keys := get(http.MethodGet, oidc.KeysPath, "")
	body, _ := io.ReadAll(keys.Body)
	if keys.StatusCode != 200 || keys.Header.Get("Cache-Control") != "public, max-age=300" || keys.Header.Get("ETag") == "" || !strings.Contains(string(body), s.JWT.Current.KeyID) {
		t.Fatalf("keys: %d %v %s", keys.StatusCode, keys.Header, body)
	}
	for _, tc := range []struct {
		name, method, path, etag string
		want                     int
	}{
		{"unchanged keys are 304", http.MethodGet, oidc.KeysPath, keys.Header.Get("ETag"), http.StatusNotModified},
		{"a stale etag gets the keys", http.MethodGet, oidc.KeysPath, `"old"`, http.StatusOK},
		{"HEAD is served", http.MethodHead, oidc.KeysPath, "", http.StatusOK},
		{"POST is refused", http.MethodPost, oidc.KeysPath, "", http.StatusMethodNotAllowed},
		{"another path is 404", http.MethodGet, "/../secret", "", http.StatusNotFound},
		{"a path outside the issuer is 404", http.MethodGet, "/keys/x", "", http.StatusNotFound},
	} {
		if got := get(tc.method, tc.path, tc.etag).StatusCode; got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.want)
		}
	}
}

func TestCheckIssuer(t *testing.T) {
	for _, bad := range []string{"http://a.example", "https://", "https://a.example/", "https://a.example?x=1", "https://u@a.example", "::"} {
		if err := oidc.CheckIssuer(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if err := oidc.CheckIssuer("https://oidc.example.org/mayfly"); err != nil {
		t.Error(err)
	}
}

// BenchmarkJWKS: requests/s of the keys endpoint over TLS (keep-alive
// connections, GOMAXPROCS parallel clients), the keys read from the state
// on every request as the CA does.
func BenchmarkJWKS(b *testing.B) {
	m := minter()
	s, err := m.Bootstrap(context.Background(), t0)
	if err != nil {
		b.Fatal(err)
	}
	h, err := oidc.New(oidc.Config{Issuer: "https://oidc.example.org", Keys: func() (map[string]crypto.PublicKey, error) { return s.JWTKeys(t0), nil }})
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewTLSServer(h)
	defer srv.Close()
	c := srv.Client()
	c.Transport.(*http.Transport).MaxIdleConnsPerHost = 64
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := c.Get(srv.URL + oidc.KeysPath)
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "req/s")
}
