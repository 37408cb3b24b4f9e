package jwtsvid

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/asn1"
	"encoding/json"
	"math/big"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// claimsJSON is the claim set as encoding/json writes it: appendClaims
// must write exactly that.
type claimsJSON struct {
	Audience  []string `json:"aud"`
	Expiry    int64    `json:"exp"`
	IssuedAt  int64    `json:"iat"`
	Issuer    string   `json:"iss,omitempty"`
	NotBefore int64    `json:"nbf,omitempty"`
	Subject   string   `json:"sub"`
}

func marshalClaims(t testing.TB, c Claims) []byte {
	t.Helper()
	want, err := json.Marshal(claimsJSON{Audience: c.Audience, Expiry: c.Expiry.Unix(), IssuedAt: c.IssuedAt.Unix(), Issuer: c.Issuer, NotBefore: unixOrZero(c.NotBefore), Subject: c.Subject.String()})
	if err != nil {
		t.Fatal(err)
	}
	return want
}

// TestSignerTokensAreGoJoseJWS: go-jose verifies every kind of token with
// the key's public half, and reads the header and claims we mean.
func TestSignerTokensAreGoJoseJWS(t *testing.T) {
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	now := time.Unix(1_800_000_000, 0)
	c := Claims{Subject: spiffeid.RequireFromString("spiffe://example.org/ns/app/sa/web"), Audience: []string{"vault", "https://sts.example.com/<&>"},
		IssuedAt: now, NotBefore: now, Expiry: now.Add(5 * time.Minute), Issuer: "https://oidc.example.org"}
	for _, tc := range []struct {
		alg jose.SignatureAlgorithm
		key crypto.Signer
	}{{jose.ES256, p256}, {jose.ES384, p384}, {jose.RS256, rsaKey}} {
		t.Run(string(tc.alg), func(t *testing.T) {
			kid, err := KeyID(tc.key.Public())
			if err != nil {
				t.Fatal(err)
			}
			s, err := NewSigner(tc.key, kid)
			if err != nil {
				t.Fatal(err)
			}
			for range 20 { // ECDSA values with leading zero bytes are padded
				tok, err := s.Sign(c)
				if err != nil {
					t.Fatal(err)
				}
				jws, err := jose.ParseSignedCompact(tok, []jose.SignatureAlgorithm{tc.alg})
				if err != nil {
					t.Fatal(err)
				}
				h := jws.Signatures[0].Protected
				if h.KeyID != kid || h.Algorithm != string(tc.alg) || h.ExtraHeaders[jose.HeaderType] != "JWT" {
					t.Fatalf("header %+v", h)
				}
				payload, err := jws.Verify(tc.key.Public())
				if err != nil {
					t.Fatalf("go-jose does not verify the token: %v", err)
				}
				if want := marshalClaims(t, c); !bytes.Equal(payload, want) {
					t.Fatalf("claims\n%s\nwant\n%s", payload, want)
				}
			}
		})
	}
}

// TestRawECDSARefusesMalformedSignatures: what a broken signer returns is
// an error, never a token.
func TestRawECDSARefusesMalformedSignatures(t *testing.T) {
	for name, der := range map[string][]byte{
		"empty":          nil,
		"not a sequence": {0x02, 0x01, 0x01},
		"one integer":    {0x30, 0x03, 0x02, 0x01, 0x01},
		"trailing bytes": {0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01, 0x00},
		"negative r":     {0x30, 0x06, 0x02, 0x01, 0xff, 0x02, 0x01, 0x01},
		"zero s":         {0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x00},
		"r too large":    append([]byte{0x30, 0x25, 0x02, 0x21, 0x01}, append(bytes.Repeat([]byte{1}, 32), 0x02, 0x01, 0x01)...),
	} {
		if _, err := rawECDSA(der, 32); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// FuzzRawECDSA: rawECDSA reads a DER signature as encoding/asn1 does
// (the reader it replaced): the same r||s for what both accept, an error
// for what asn1 refuses, what is not DER and what is out of range.
func FuzzRawECDSA(f *testing.F) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	for range 8 {
		sig, err := ecdsa.SignASN1(rand.Reader, key, make([]byte, 32))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(sig, 32)
	}
	f.Add([]byte{0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x7f}, 48)
	f.Add([]byte{0x30, 0x07, 0x02, 0x02, 0x00, 0x80, 0x02, 0x01, 0x01}, 32)
	f.Add([]byte{0x30, 0x07, 0x02, 0x02, 0x00, 0x01, 0x02, 0x01, 0x01}, 32)
	f.Add([]byte{0x30, 0x81, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01}, 32)
	f.Fuzz(func(t *testing.T, der []byte, size int) {
		if size != 32 && size != 48 {
			return
		}
		got, err := rawECDSA(der, size)
		var sig struct{ R, S *big.Int }
		rest, asnErr := asn1.Unmarshal(der, &sig)
		// encoding/asn1 ignores what follows the two INTEGERs inside the
		// SEQUENCE; DER does not, so the input must be their encoding.
		canonical, _ := asn1.Marshal(sig)
		ok := asnErr == nil && len(rest) == 0 && bytes.Equal(canonical, der) && sig.R.Sign() > 0 && sig.S.Sign() > 0 && sig.R.BitLen() <= 8*size && sig.S.BitLen() <= 8*size
		if !ok {
			if err == nil {
				t.Fatalf("rawECDSA accepted %x (asn1: %v)", der, asnErr)
			}
			return
		}
		if err != nil {
			t.Fatalf("rawECDSA refused %x that asn1 reads: %v", der, err)
		}
		want := make([]byte, 2*size)
		sig.R.FillBytes(want[:size])
		sig.S.FillBytes(want[size:])
		if !bytes.Equal(got, want) {
			t.Fatalf("rawECDSA(%x) = %x, want %x", der, got, want)
		}
	})
}

// FuzzAppendClaims: the claims we append are encoding/json's, byte for
// byte, whatever the audiences and issuer hold (quotes, controls, HTML
// characters, invalid UTF-8, U+2028).
func FuzzAppendClaims(f *testing.F) {
	f.Add("vault", "https://sts.example.com", "https://oidc.example.org", "web", int64(1_800_000_000), int64(0))
	f.Add("a\"b\\c", "\x00\x1f\b\f\n\r\t", "<&>", "x", int64(-1), int64(5))
	f.Add("\xff\xfe", "\u2028\u2029é", "", "ns/app/sa/web", int64(0), int64(1))
	f.Fuzz(func(t *testing.T, aud1, aud2, iss, path string, exp, nbf int64) {
		sub, err := spiffeid.FromPath(spiffeid.RequireTrustDomainFromString("example.org"), "/"+path)
		if err != nil {
			sub = spiffeid.RequireFromString("spiffe://example.org/web")
		}
		c := Claims{Subject: sub, Audience: []string{aud1, aud2}, IssuedAt: time.Unix(exp-60, 0), Expiry: time.Unix(exp, 0), Issuer: iss}
		if nbf != 0 {
			c.NotBefore = time.Unix(nbf, 0)
		}
		if got, want := appendClaims(nil, c), marshalClaims(t, c); !bytes.Equal(got, want) {
			t.Fatalf("claims\n%q\nwant encoding/json's\n%q", got, want)
		}
	})
}
