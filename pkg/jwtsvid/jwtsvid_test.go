package jwtsvid_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	gospiffe "github.com/spiffe/go-spiffe/v2/svid/jwtsvid"

	"github.com/mayfly-pki/mayfly/pkg/jwtsvid"
)

var (
	td    = spiffeid.RequireTrustDomainFromString("example.org")
	other = spiffeid.RequireTrustDomainFromString("other.org")
	sub   = spiffeid.RequireFromPath(td, "/ns/default/sa/web")
	now   = time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
)

type fixture struct {
	ec, ec2 *ecdsa.PrivateKey
	rsa     *rsa.PrivateKey
	kid     string
	rsaKid  string
	bundles *jwtbundle.Set
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	f := &fixture{}
	var err error
	if f.ec, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		t.Fatal(err)
	}
	if f.ec2, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		t.Fatal(err)
	}
	if f.rsa, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		t.Fatal(err)
	}
	f.kid, _ = jwtsvid.KeyID(f.ec.Public())
	f.rsaKid, _ = jwtsvid.KeyID(f.rsa.Public())
	b := jwtbundle.New(td)
	b.AddJWTAuthority(f.kid, f.ec.Public())
	b.AddJWTAuthority(f.rsaKid, f.rsa.Public())
	ob := jwtbundle.New(other)
	f.bundles = jwtbundle.NewSet(b, ob)
	return f
}

func (f *fixture) sign(t testing.TB, key crypto.Signer, kid string, c jwtsvid.Claims) string {
	t.Helper()
	s, err := jwtsvid.NewSigner(key, kid)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := s.Sign(c)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func good() jwtsvid.Claims {
	return jwtsvid.Claims{Subject: sub, Audience: []string{"api"}, IssuedAt: now.Add(-time.Minute), Expiry: now.Add(4 * time.Minute)}
}

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

// raw builds a token from JSON header and payload, signed by sign.
func raw(header, payload string, sign func(input []byte) []byte) string {
	in := b64(header) + "." + b64(payload)
	return in + "." + base64.RawURLEncoding.EncodeToString(sign([]byte(in)))
}

func (f *fixture) es256(in []byte) []byte {
	h := sha256.Sum256(in)
	r, s, err := ecdsa.Sign(rand.Reader, f.ec, h[:])
	if err != nil {
		panic(err)
	}
	out := make([]byte, 64)
	r.FillBytes(out[:32])
	s.FillBytes(out[32:])
	return out
}

func payload(extra string) string {
	return fmt.Sprintf(`{"sub":%q,"aud":["api"],"iat":%d,"exp":%d%s}`, sub, now.Add(-time.Minute).Unix(), now.Add(4*time.Minute).Unix(), extra)
}

func TestValidate(t *testing.T) {
	f := newFixture(t)
	hdr := fmt.Sprintf(`{"alg":"ES256","kid":%q,"typ":"JWT"}`, f.kid)
	pubDER, _ := x509.MarshalPKIXPublicKey(f.ec.Public())
	with := func(mod func(*jwtsvid.Claims)) string {
		c := good()
		mod(&c)
		return f.sign(t, f.ec, f.kid, c)
	}
	for _, tc := range []struct {
		name     string
		token    string
		audience string
		algs     []jose.SignatureAlgorithm
		want     string // "" accepts
	}{
		{name: "accepts a good ES256 token", token: f.sign(t, f.ec, f.kid, good())},
		{name: "accepts RS256 when allowed", token: f.sign(t, f.rsa, f.rsaKid, good())},
		{name: "accepts within the skew after exp", token: with(func(c *jwtsvid.Claims) { c.Expiry = now.Add(-10 * time.Second) })},
		{name: "alg none", token: b64(fmt.Sprintf(`{"alg":"none","kid":%q}`, f.kid)) + "." + b64(payload("")) + ".", want: "signature segment"},
		{name: "alg none with a signature", token: raw(fmt.Sprintf(`{"alg":"none","kid":%q}`, f.kid), payload(""), func([]byte) []byte { return []byte("x") }), want: `algorithm "none" is not allowed`},
		{name: "HS256 with the public key as secret", token: raw(fmt.Sprintf(`{"alg":"HS256","kid":%q}`, f.kid), payload(""), func(in []byte) []byte {
			m := hmac.New(sha256.New, pubDER)
			m.Write(in)
			return m.Sum(nil)
		}), want: `algorithm "HS256" is not allowed`},
		{name: "RS256 where only ES256 is allowed", token: f.sign(t, f.rsa, f.rsaKid, good()), algs: []jose.SignatureAlgorithm{jose.ES256}, want: `algorithm "RS256" is not allowed here`},
		{name: "RS256 header on an ES256 key", token: raw(fmt.Sprintf(`{"alg":"RS256","kid":%q}`, f.kid), payload(""), f.es256), want: `does not match key`},
		{name: "expired", token: with(func(c *jwtsvid.Claims) { c.Expiry = now.Add(-time.Minute) }), want: "expired at"},
		{name: "not yet valid", token: with(func(c *jwtsvid.Claims) { c.NotBefore = now.Add(time.Minute) }), want: "not valid before"},
		{name: "iat in the future", token: with(func(c *jwtsvid.Claims) { c.IssuedAt = now.Add(time.Minute) }), want: "in the future"},
		{name: "no exp", token: raw(hdr, fmt.Sprintf(`{"sub":%q,"aud":["api"]}`, sub), f.es256), want: "exp is missing"},
		{name: "wrong audience", token: f.sign(t, f.ec, f.kid, good()), audience: "other", want: `aud does not contain "other"`},
		{name: "missing audience", token: raw(hdr, fmt.Sprintf(`{"sub":%q,"exp":%d}`, sub, now.Add(time.Minute).Unix()), f.es256), want: "aud is missing"},
		{name: "no audience asked", token: f.sign(t, f.ec, f.kid, good()), audience: "-", want: "no audience to validate against"},
		{name: "unknown kid", token: f.sign(t, f.ec2, "not-a-kid", good()), want: `kid "not-a-kid" is not in the JWT bundle`},
		{name: "no kid", token: raw(`{"alg":"ES256"}`, payload(""), f.es256), want: "header has no kid"},
		{name: "signed by another key under a known kid", token: f.sign(t, f.ec2, f.kid, good()), want: "signature does not verify"},
		{name: "another trust domain", token: with(func(c *jwtsvid.Claims) { c.Subject = spiffeid.RequireFromPath(other, "/web") }), want: `kid "` + f.kid + `" is not in the JWT bundle of "other.org"`},
		{name: "a trust domain we hold no bundle for", token: with(func(c *jwtsvid.Claims) {
			c.Subject = spiffeid.RequireFromPath(spiffeid.RequireTrustDomainFromString("third.org"), "/web")
		}), want: `no JWT bundle for trust domain "third.org"`},
		{name: "sub not a SPIFFE ID", token: raw(hdr, `{"sub":"web","aud":["api"],"exp":1}`, f.es256), want: "sub is not a SPIFFE ID"},
		{name: "oversized", token: raw(hdr, payload(`,"pad":"`+strings.Repeat("a", 9000)+`"`), f.es256), want: "more than the 8192 allowed"},
		{name: "two segments", token: "abc.def", want: "2 segments, want 3"},
		{name: "four segments", token: "a.b.c.d", want: "4 segments, want 3"},
		{name: "empty", token: "", want: "1 segments, want 3"},
		{name: "header not base64url", token: "a*b.c.d", want: "header segment is not"},
		{name: "header not JSON", token: b64("nope") + "." + b64(payload("")) + "." + b64("sig"), want: "malformed header: not JSON"},
		{name: "header a JSON array", token: b64("[1]") + "." + b64(payload("")) + "." + b64("sig"), want: "not a JSON object"},
		{name: "duplicate claims", token: raw(hdr, payload(fmt.Sprintf(`,"sub":%q`, "spiffe://example.org/admin")), f.es256), want: `malformed payload: duplicate name "sub"`},
		{name: "duplicate header names", token: raw(fmt.Sprintf(`{"alg":"ES256","kid":%q,"alg":"none"}`, f.kid), payload(""), f.es256), want: `malformed header: duplicate name "alg"`},
		{name: "typ not JWT", token: raw(fmt.Sprintf(`{"alg":"ES256","kid":%q,"typ":"at+jwt"}`, f.kid), payload(""), f.es256), want: `typ "at+jwt"`},
		{name: "trailing data after the payload", token: raw(hdr, payload("")+"{}", f.es256), want: "data after the JSON object"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			aud := tc.audience
			switch aud {
			case "":
				aud = "api"
			case "-":
				aud = ""
			}
			c, err := jwtsvid.Validator{Bundles: f.bundles, Algorithms: tc.algs}.Validate(tc.token, aud, now)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("rejected: %v", err)
				}
				if c.Subject != sub {
					t.Fatalf("sub %s, want %s", c.Subject, sub)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted, want a rejection containing %q", tc.want)
			}
			if !errors.Is(err, jwtsvid.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q, want ErrInvalid containing %q", err, tc.want)
			}
		})
	}
}

// TestGoSpiffeAcceptsOurTokens checks interop: go-spiffe's own parser
// validates what Signer signs, with the JWKS we publish.
func TestGoSpiffeAcceptsOurTokens(t *testing.T) {
	f := newFixture(t)
	tok := f.sign(t, f.ec, f.kid, jwtsvid.Claims{Subject: sub, Audience: []string{"api"}, IssuedAt: time.Now(), Expiry: time.Now().Add(5 * time.Minute)})
	set := jwtsvid.JWKS(map[string]crypto.PublicKey{f.kid: f.ec.Public()}, "jwt-svid")
	raw, err := jsonMarshal(set)
	if err != nil {
		t.Fatal(err)
	}
	b, err := jwtbundle.Parse(td, raw)
	if err != nil {
		t.Fatalf("go-spiffe parses our JWKS: %v", err)
	}
	svid, err := gospiffe.ParseAndValidate(tok, b, []string{"api"})
	if err != nil {
		t.Fatalf("go-spiffe rejects our token: %v", err)
	}
	if svid.ID != sub {
		t.Fatalf("ID %s", svid.ID)
	}
}

func TestSignRejectsBadAudience(t *testing.T) {
	f := newFixture(t)
	s, _ := jwtsvid.NewSigner(f.ec, f.kid)
	for _, aud := range [][]string{nil, {""}, {strings.Repeat("a", 257)}, make([]string, 17)} {
		c := good()
		c.Audience = aud
		if _, err := s.Sign(c); !errors.Is(err, jwtsvid.ErrInvalid) {
			t.Errorf("audience %d values: err %v, want ErrInvalid", len(aud), err)
		}
	}
}

func TestAlgorithm(t *testing.T) {
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p521, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	if a, err := jwtsvid.Algorithm(p384.Public()); err != nil || a != jose.ES384 {
		t.Errorf("P-384: %s %v", a, err)
	}
	for _, k := range []crypto.PublicKey{p521.Public(), small.Public(), "x"} {
		if _, err := jwtsvid.Algorithm(k); err == nil {
			t.Errorf("%T accepted", k)
		}
	}
}

func FuzzParse(f *testing.F) {
	fx := newFixture(f)
	f.Add(fx.sign(f, fx.ec, fx.kid, good()))
	f.Add(fx.sign(f, fx.rsa, fx.rsaKid, good()))
	f.Add("a.b.c")
	f.Add(b64(`{"alg":"ES256","kid":"k","a":{"b":[{"c":1,"c":2}]}}`) + "." + b64("{}") + ".c2ln")
	f.Fuzz(func(t *testing.T, token string) {
		_, err := jwtsvid.Validator{Bundles: fx.bundles}.Validate(token, "api", now)
		if err != nil && !errors.Is(err, jwtsvid.ErrInvalid) {
			t.Fatalf("rejection does not wrap ErrInvalid: %v", err)
		}
	})
}

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }
