// Package jwtsvid signs and validates JWT-SVIDs: compact JWS tokens whose
// sub is a SPIFFE ID, signed with an asymmetric key of the trust domain's
// JWT bundle. Parsing and signatures are go-jose's; this package adds what
// a token check must demand on top of it: a bounded size, an allow list of
// algorithms, no duplicate header or claim names, exp/nbf/iat sanity with
// a small fixed skew, the expected audience, a sub in a trust domain whose
// bundle we hold, and a known kid. Every rejection wraps ErrInvalid and
// says what is wrong.
package jwtsvid

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

const (
	// MaxTokenSize bounds a token before anything is decoded.
	MaxTokenSize = 8 << 10
	// Skew is the clock skew allowed on exp, nbf and iat.
	Skew = 30 * time.Second
	// MaxAudiences bounds the aud values of a token we sign or validate.
	MaxAudiences = 16
	// MaxAudienceLength bounds each aud value of a token we sign.
	MaxAudienceLength = 256
)

// Algorithms are the signature algorithms a token may use: asymmetric only.
var Algorithms = []jose.SignatureAlgorithm{jose.ES256, jose.ES384, jose.RS256}

// ErrInvalid is wrapped by every rejection of Validate and Parse.
var ErrInvalid = errors.New("invalid JWT-SVID")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// Algorithm returns the signature algorithm of a public key: ES256 for
// P-256, ES384 for P-384, RS256 for RSA of at least 2048 bits.
func Algorithm(pub crypto.PublicKey) (jose.SignatureAlgorithm, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return jose.ES256, nil
		case elliptic.P384():
			return jose.ES384, nil
		}
		return "", fmt.Errorf("jwtsvid: ECDSA curve %s is not allowed (P-256, P-384)", k.Curve.Params().Name)
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return "", fmt.Errorf("jwtsvid: RSA key of %d bits is too small (at least 2048)", k.N.BitLen())
		}
		return jose.RS256, nil
	}
	return "", fmt.Errorf("jwtsvid: key type %T is not allowed (ECDSA P-256/P-384, RSA)", pub)
}

// KeyID is the kid of a public key: its RFC 7638 thumbprint (SHA-256),
// base64url. Every replica derives the same kid from the same key.
func KeyID(pub crypto.PublicKey) (string, error) {
	tp, err := (&jose.JSONWebKey{Key: pub}).Thumbprint(crypto.SHA256)
	if err != nil {
		return "", fmt.Errorf("jwtsvid: key thumbprint: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(tp), nil
}

// Claims are the claims of a JWT-SVID.
type Claims struct {
	Subject   spiffeid.ID
	Audience  []string
	IssuedAt  time.Time
	NotBefore time.Time // zero: no nbf
	Expiry    time.Time
	// Issuer is the OIDC issuer URL, or empty.
	Issuer string
}

func unixOrZero(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

// CheckAudience checks an audience list: 1 to MaxAudiences non-empty
// values, each at most MaxAudienceLength bytes.
func CheckAudience(aud []string) error {
	switch {
	case len(aud) == 0:
		return invalid("audience is required")
	case len(aud) > MaxAudiences:
		return invalid("%d audiences, at most %d allowed", len(aud), MaxAudiences)
	}
	for i, a := range aud {
		if a == "" || len(a) > MaxAudienceLength {
			return invalid("audience[%d]: must be 1 to %d bytes, got %d", i, MaxAudienceLength, len(a))
		}
	}
	return nil
}

// header is what we read from a token's protected header.
type header struct {
	Alg string `json:"alg"`
	Kid string `json:"kid"`
	Typ string `json:"typ"`
}

// Parsed is a token whose shape was checked, before its signature is.
type Parsed struct {
	tok    *jwt.JSONWebToken
	Header header
	// Subject is the unverified sub, for looking up the bundle.
	Subject spiffeid.ID
}

// Parse checks a token's shape without its signature: size, three
// base64url segments, JSON objects without duplicate names, an allowed
// alg, a kid, a typ of JWT or JOSE if any, and a SPIFFE ID as sub.
func Parse(token string) (*Parsed, error) {
	if len(token) > MaxTokenSize {
		return nil, invalid("token is %d bytes, more than the %d allowed", len(token), MaxTokenSize)
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, invalid("malformed: %d segments, want 3 (header.payload.signature)", len(parts))
	}
	var raw [3][]byte
	for i, name := range []string{"header", "payload", "signature"} {
		b, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil || len(b) == 0 {
			return nil, invalid("malformed: %s segment is not non-empty base64url", name)
		}
		raw[i] = b
	}
	for i, name := range []string{"header", "payload"} {
		if err := uniqueObject(raw[i]); err != nil {
			return nil, invalid("malformed %s: %v", name, err)
		}
	}
	var h header
	if err := json.Unmarshal(raw[0], &h); err != nil {
		return nil, invalid("malformed header: %v", err)
	}
	if !slices.Contains(Algorithms, jose.SignatureAlgorithm(h.Alg)) {
		return nil, invalid("algorithm %q is not allowed (allowed: %v)", h.Alg, Algorithms)
	}
	if h.Kid == "" {
		return nil, invalid("header has no kid")
	}
	if h.Typ != "" && h.Typ != "JWT" && h.Typ != "JOSE" {
		return nil, invalid("typ %q is not JWT or JOSE", h.Typ)
	}
	tok, err := jwt.ParseSigned(token, Algorithms)
	if err != nil {
		return nil, invalid("malformed: %v", err)
	}
	var sub struct {
		Subject string `json:"sub"`
	}
	if err := json.Unmarshal(raw[1], &sub); err != nil {
		return nil, invalid("malformed payload: %v", err)
	}
	if sub.Subject == "" {
		return nil, invalid("sub is missing")
	}
	id, err := spiffeid.FromString(sub.Subject)
	if err != nil {
		return nil, invalid("sub is not a SPIFFE ID: %v", err)
	}
	return &Parsed{tok: tok, Header: h, Subject: id}, nil
}

// Validator checks tokens against the JWT bundles of the trust domains we
// hold.
type Validator struct {
	Bundles jwtbundle.Source
	// Algorithms narrows Algorithms (the default); a token with another
	// alg is rejected before any key is looked up.
	Algorithms []jose.SignatureAlgorithm
}

// Validate is Validator{Bundles: bundles}.Validate.
func Validate(token, audience string, bundles jwtbundle.Source, now time.Time) (*Claims, error) {
	return Validator{Bundles: bundles}.Validate(token, audience, now)
}

// Validate checks token for audience at now: Parse, an alg of
// v.Algorithms, the key named by kid in the bundle of sub's trust domain
// (of that alg), the signature, exp (required), nbf and iat within Skew,
// and aud containing audience. It returns the verified claims.
func (v Validator) Validate(token, audience string, now time.Time) (*Claims, error) {
	if audience == "" {
		return nil, invalid("no audience to validate against")
	}
	p, err := Parse(token)
	if err != nil {
		return nil, err
	}
	if len(v.Algorithms) > 0 && !slices.Contains(v.Algorithms, jose.SignatureAlgorithm(p.Header.Alg)) {
		return nil, invalid("algorithm %q is not allowed here (allowed: %v)", p.Header.Alg, v.Algorithms)
	}
	bundles := v.Bundles
	td := p.Subject.TrustDomain()
	b, err := bundles.GetJWTBundleForTrustDomain(td)
	if err != nil || b == nil {
		return nil, invalid("no JWT bundle for trust domain %q of sub", td)
	}
	pub, ok := b.FindJWTAuthority(p.Header.Kid)
	if !ok {
		return nil, invalid("kid %q is not in the JWT bundle of %q", truncate(p.Header.Kid, 64), td)
	}
	if alg, err := Algorithm(pub); err != nil || string(alg) != p.Header.Alg {
		return nil, invalid("algorithm %q does not match key %q (%s)", p.Header.Alg, truncate(p.Header.Kid, 64), alg)
	}
	var std jwt.Claims
	if err := p.tok.Claims(pub, &std); err != nil {
		return nil, invalid("signature does not verify with key %q", truncate(p.Header.Kid, 64))
	}
	return checkClaims(std, p.Subject, audience, now)
}

func checkClaims(std jwt.Claims, sub spiffeid.ID, audience string, now time.Time) (*Claims, error) {
	c := &Claims{Subject: sub, Audience: []string(std.Audience), Issuer: std.Issuer}
	if std.Expiry == nil {
		return nil, invalid("exp is missing")
	}
	c.Expiry = std.Expiry.Time()
	if !now.Before(c.Expiry.Add(Skew)) {
		return nil, invalid("expired at %s", c.Expiry.UTC().Format(time.RFC3339))
	}
	if std.NotBefore != nil {
		c.NotBefore = std.NotBefore.Time()
		if now.Add(Skew).Before(c.NotBefore) {
			return nil, invalid("not valid before %s", c.NotBefore.UTC().Format(time.RFC3339))
		}
	}
	if std.IssuedAt != nil {
		c.IssuedAt = std.IssuedAt.Time()
		if now.Add(Skew).Before(c.IssuedAt) {
			return nil, invalid("iat %s is in the future", c.IssuedAt.UTC().Format(time.RFC3339))
		}
		if c.Expiry.Before(c.IssuedAt) {
			return nil, invalid("exp is before iat")
		}
	}
	if len(c.Audience) == 0 {
		return nil, invalid("aud is missing")
	}
	if len(c.Audience) > MaxAudiences {
		return nil, invalid("%d audiences, at most %d allowed", len(c.Audience), MaxAudiences)
	}
	if !slices.Contains(c.Audience, audience) {
		return nil, invalid("aud does not contain %q", truncate(audience, 64))
	}
	return c, nil
}

// uniqueObject checks that b is one JSON object whose names (at any depth)
// are unique: encoding/json keeps the last of two, a verifier in another
// language may keep the first.
func uniqueObject(b []byte) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	t, err := d.Token()
	if err != nil {
		return fmt.Errorf("not JSON: %w", err)
	}
	if t != json.Delim('{') {
		return errors.New("not a JSON object")
	}
	if err := uniqueMembers(d, 1); err != nil {
		return err
	}
	if _, err := d.Token(); !errors.Is(err, io.EOF) {
		return errors.New("data after the JSON object")
	}
	return nil
}

const maxDepth = 32

// uniqueMembers reads the members of an object whose '{' was read.
func uniqueMembers(d *json.Decoder, depth int) error {
	seen := map[string]bool{}
	for d.More() {
		t, err := d.Token()
		if err != nil {
			return fmt.Errorf("not JSON: %w", err)
		}
		name, _ := t.(string)
		if seen[name] {
			return fmt.Errorf("duplicate name %q", truncate(name, 32))
		}
		seen[name] = true
		if err := skipValue(d, depth); err != nil {
			return err
		}
	}
	_, err := d.Token() // '}'
	return err
}

func skipValue(d *json.Decoder, depth int) error {
	if depth > maxDepth {
		return errors.New("nested too deep")
	}
	t, err := d.Token()
	if err != nil {
		return fmt.Errorf("not JSON: %w", err)
	}
	switch t {
	case json.Delim('{'):
		return uniqueMembers(d, depth+1)
	case json.Delim('['):
		for d.More() {
			if err := skipValue(d, depth+1); err != nil {
				return err
			}
		}
		_, err := d.Token() // ']'
		return err
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// JWKS returns the JSON Web Key Set of keys (kid -> public key), sorted by
// kid, each with its use ("sig" for OIDC verifiers; the SPIFFE bundle
// format's "jwt-svid" is what go-spiffe writes) and alg.
func JWKS(keys map[string]crypto.PublicKey, use string) jose.JSONWebKeySet {
	var set jose.JSONWebKeySet
	for _, kid := range slices.Sorted(maps.Keys(keys)) {
		alg, _ := Algorithm(keys[kid])
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: keys[kid], KeyID: kid, Algorithm: string(alg), Use: use})
	}
	return set
}
