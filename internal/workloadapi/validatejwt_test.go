package workloadapi

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mayfly-pki/mayfly/pkg/jwtsvid"
)

// jwtFakeSource is a fakeSource that also holds JWT bundles.
type jwtFakeSource struct {
	*fakeSource
	bundles *jwtbundle.Set
}

func (s *jwtFakeSource) JWTSVIDs(context.Context, Caller, spiffeid.ID, []string) ([]JWTSVID, error) {
	return nil, status.Error(codes.PermissionDenied, "none")
}

func (s *jwtFakeSource) JWTBundles() *jwtbundle.Set { return s.bundles }

// TestValidateJWTSVIDRejectsWithReasons: every bad token the issue names,
// sent through a real gRPC client, is InvalidArgument with its reason.
func TestValidateJWTSVIDRejectsWithReasons(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	td := spiffeid.RequireTrustDomainFromString("example.org")
	other := spiffeid.RequireTrustDomainFromString("other.org")
	sub := spiffeid.RequireFromPath(td, "/ns/default/sa/web")
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	stranger, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	kid, _ := jwtsvid.KeyID(key.Public())
	b := jwtbundle.New(td)
	if err := b.AddJWTAuthority(kid, key.Public()); err != nil {
		t.Fatal(err)
	}
	src := &jwtFakeSource{fakeSource: newFakeSource(), bundles: jwtbundle.NewSet(b, jwtbundle.New(other))}
	env := startServer(t, Config{Source: src, Now: func() time.Time { return now }})
	client := rawClient(t, env.path)

	sign := func(k *ecdsa.PrivateKey, kid string, mod func(*jwtsvid.Claims)) string {
		c := jwtsvid.Claims{Subject: sub, Audience: []string{"api"}, IssuedAt: now.Add(-time.Minute), Expiry: now.Add(4 * time.Minute)}
		if mod != nil {
			mod(&c)
		}
		s, err := jwtsvid.NewSigner(k, kid)
		if err != nil {
			t.Fatal(err)
		}
		tok, err := s.Sign(c)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	b64 := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	es256 := func(header, payload string) string {
		in := b64(header) + "." + b64(payload)
		h := sha256.Sum256([]byte(in))
		r, s, err := ecdsa.Sign(rand.Reader, key, h[:])
		if err != nil {
			t.Fatal(err)
		}
		sig := make([]byte, 64)
		r.FillBytes(sig[:32])
		s.FillBytes(sig[32:])
		return in + "." + base64.RawURLEncoding.EncodeToString(sig)
	}
	hdr := fmt.Sprintf(`{"alg":"ES256","kid":%q}`, kid)
	payload := fmt.Sprintf(`{"sub":%q,"aud":["api"],"iat":%d,"exp":%d}`, sub, now.Add(-time.Minute).Unix(), now.Add(4*time.Minute).Unix())
	pubDER, _ := x509.MarshalPKIXPublicKey(key.Public())
	hsInput := b64(fmt.Sprintf(`{"alg":"HS256","kid":%q}`, kid)) + "." + b64(payload)
	mac := hmac.New(sha256.New, pubDER)
	mac.Write([]byte(hsInput))

	for _, tc := range []struct{ name, token, want string }{
		{"alg none", b64(fmt.Sprintf(`{"alg":"none","kid":%q}`, kid)) + "." + b64(payload) + ".", "signature segment"},
		{"HS256 with the public key as secret", hsInput + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil)), `algorithm "HS256" is not allowed`},
		{"RS256 header where the key is ES256", es256(fmt.Sprintf(`{"alg":"RS256","kid":%q}`, kid), payload), "does not match key"},
		{"expired", sign(key, kid, func(c *jwtsvid.Claims) { c.Expiry = now.Add(-time.Minute) }), "expired at"},
		{"not yet valid", sign(key, kid, func(c *jwtsvid.Claims) { c.NotBefore = now.Add(time.Minute) }), "not valid before"},
		{"wrong audience", sign(key, kid, func(c *jwtsvid.Claims) { c.Audience = []string{"other"} }), `aud does not contain "api"`},
		{"missing audience", es256(hdr, fmt.Sprintf(`{"sub":%q,"exp":%d}`, sub, now.Add(time.Minute).Unix())), "aud is missing"},
		{"unknown kid", sign(stranger, "not-a-kid", nil), `kid "not-a-kid" is not in the JWT bundle`},
		{"another trust domain", sign(key, kid, func(c *jwtsvid.Claims) { c.Subject = spiffeid.RequireFromPath(other, "/web") }), `is not in the JWT bundle of "other.org"`},
		{"oversized", es256(hdr, payload[:len(payload)-1]+`,"pad":"`+strings.Repeat("a", 9000)+`"}`), "more than the 8192 allowed"},
		{"malformed segments", "abc.def", "2 segments, want 3"},
		{"duplicate claims", es256(hdr, payload[:len(payload)-1]+fmt.Sprintf(`,"sub":%q}`, "spiffe://example.org/admin")), `duplicate name "sub"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := client.ValidateJWTSVID(withHeader(t.Context()), &workload.ValidateJWTSVIDRequest{Audience: "api", Svid: tc.token})
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), tc.want) {
				t.Fatalf("%v, want InvalidArgument naming %q", err, tc.want)
			}
		})
	}
	// The good token passes, so each rejection above is its own.
	resp, err := client.ValidateJWTSVID(withHeader(t.Context()), &workload.ValidateJWTSVIDRequest{Audience: "api", Svid: sign(key, kid, nil)})
	if err != nil || resp.GetSpiffeId() != sub.String() {
		t.Fatalf("a good token: %v, %v", resp, err)
	}
}
