package jwtsvid

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"unicode/utf8"

	"github.com/go-jose/go-jose/v4"
)

// Signer signs JWT-SVIDs with one key. It builds the compact JWS itself:
// the protected header is encoded once, the claims are appended without
// reflection, and the signature is the key's own; the tokens are what
// go-jose's signer would make (Validate, go-jose and go-spiffe read them).
// It is safe for concurrent use.
type Signer struct {
	key  crypto.Signer
	hash crypto.Hash
	// size is the byte length of r and of s in an ECDSA signature (JWS
	// wants them fixed-size, concatenated); 0 for RSA.
	size int
	// sigLen is the byte length of a signature in the token (JWS form),
	// to size the token's buffer once.
	sigLen int
	// header is the encoded protected header and its dot.
	header []byte
	// rand is the randomness of signatures (crypto/rand.Reader).
	rand io.Reader
}

// NewSigner returns a Signer for key, naming kid in every token's header.
func NewSigner(key crypto.Signer, kid string) (*Signer, error) {
	alg, err := Algorithm(key.Public())
	if err != nil {
		return nil, err
	}
	s := &Signer{key: key, rand: rand.Reader}
	switch alg {
	case jose.ES256:
		s.hash, s.size, s.sigLen = crypto.SHA256, 32, 64
	case jose.ES384:
		s.hash, s.size, s.sigLen = crypto.SHA384, 48, 96
	case jose.RS256:
		s.hash = crypto.SHA256
		if pub, ok := key.Public().(*rsa.PublicKey); ok {
			s.sigLen = pub.Size()
		}
	default:
		return nil, fmt.Errorf("jwtsvid: no signer for %s", alg)
	}
	h, err := json.Marshal(struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
		Typ string `json:"typ"`
	}{string(alg), kid, "JWT"})
	if err != nil {
		return nil, fmt.Errorf("jwtsvid: header: %w", err)
	}
	s.header = append(base64.RawURLEncoding.AppendEncode(nil, h), '.')
	return s, nil
}

// Sign returns the compact token for c.
func (s *Signer) Sign(c Claims) (string, error) {
	if err := CheckAudience(c.Audience); err != nil {
		return "", err
	}
	var claims [512]byte
	payload := appendClaims(claims[:0], c)
	tok := make([]byte, 0, len(s.header)+base64.RawURLEncoding.EncodedLen(len(payload))+1+base64.RawURLEncoding.EncodedLen(s.sigLen))
	tok = append(tok, s.header...)
	tok = base64.RawURLEncoding.AppendEncode(tok, payload)
	h := s.hash.New()
	h.Write(tok)
	var sum [64]byte
	sig, err := s.key.Sign(s.rand, h.Sum(sum[:0]), s.hash)
	if err != nil {
		return "", fmt.Errorf("jwtsvid: signing: %w", err)
	}
	if s.size > 0 {
		if sig, err = rawECDSA(sig, s.size); err != nil {
			return "", fmt.Errorf("jwtsvid: signing: %w", err)
		}
	}
	tok = append(tok, '.')
	tok = base64.RawURLEncoding.AppendEncode(tok, sig)
	return string(tok), nil
}

// rawECDSA turns an ASN.1 ECDSA signature (what crypto.Signer returns)
// into the JWS form: r and s, each left-padded to size bytes. It reads the
// DER itself (SEQUENCE of two positive INTEGERs in their shortest form,
// short lengths: size is at most 48), without encoding/asn1's reflection
// and big.Ints.
func rawECDSA(der []byte, size int) ([]byte, error) {
	if len(der) < 2 || der[0] != 0x30 || der[1] >= 0x80 || int(der[1]) != len(der)-2 {
		return nil, errors.New("malformed ECDSA signature")
	}
	out := make([]byte, 2*size)
	rest := der[2:]
	for i := range 2 {
		var v []byte
		var err error
		if v, rest, err = derPositiveInteger(rest); err != nil {
			return nil, err
		}
		if len(v) > size {
			return nil, errors.New("ECDSA signature values out of range for the curve")
		}
		copy(out[(i+1)*size-len(v):(i+1)*size], v)
	}
	if len(rest) > 0 {
		return nil, errors.New("malformed ECDSA signature")
	}
	return out, nil
}

// derPositiveInteger reads a DER INTEGER with a short length from the
// start of b: its big-endian magnitude without the sign byte, and what
// follows it. Zero, negative and non-minimal encodings are refused.
func derPositiveInteger(b []byte) (v, rest []byte, err error) {
	if len(b) < 3 || b[0] != 0x02 || b[1] >= 0x80 || int(b[1]) > len(b)-2 || b[1] == 0 {
		return nil, nil, errors.New("malformed ECDSA signature")
	}
	v, rest = b[2:2+int(b[1])], b[2+int(b[1]):]
	switch {
	case v[0]&0x80 != 0:
		return nil, nil, errors.New("ECDSA signature values out of range for the curve")
	case len(v) > 1 && v[0] == 0 && v[1]&0x80 == 0:
		return nil, nil, errors.New("malformed ECDSA signature")
	case v[0] == 0:
		v = v[1:]
	}
	if len(v) == 0 {
		return nil, nil, errors.New("ECDSA signature values out of range for the curve")
	}
	return v, rest, nil
}

// appendClaims appends c as the JSON claim set, byte for byte what
// encoding/json makes of claimsJSON (aud always an array; iss and nbf
// only when set).
func appendClaims(b []byte, c Claims) []byte {
	b = append(b, `{"aud":[`...)
	for i, a := range c.Audience {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, a)
	}
	b = append(b, `],"exp":`...)
	b = strconv.AppendInt(b, c.Expiry.Unix(), 10)
	b = append(b, `,"iat":`...)
	b = strconv.AppendInt(b, c.IssuedAt.Unix(), 10)
	if c.Issuer != "" {
		b = append(b, `,"iss":`...)
		b = appendJSONString(b, c.Issuer)
	}
	if nbf := unixOrZero(c.NotBefore); nbf != 0 {
		b = append(b, `,"nbf":`...)
		b = strconv.AppendInt(b, nbf, 10)
	}
	b = append(b, `,"sub":`...)
	b = appendJSONString(b, c.Subject.String())
	return append(b, '}')
}

// appendJSONString appends s as a JSON string the way encoding/json
// writes it: quotes, backslashes and control characters escaped, <, >
// and & as \u escapes, invalid UTF-8 as U+FFFD, U+2028 and U+2029
// escaped.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
