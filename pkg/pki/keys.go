package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
)

// KeyType names a key algorithm and size that mayfly generates and accepts.
type KeyType string

// The key types mayfly supports.
const (
	KeyTypeECDSAP256 KeyType = "ecdsa-p256"
	KeyTypeECDSAP384 KeyType = "ecdsa-p384"
	KeyTypeEd25519   KeyType = "ed25519"
	KeyTypeRSA2048   KeyType = "rsa-2048"
	KeyTypeRSA3072   KeyType = "rsa-3072"

	// DefaultKeyType is used when no key type is configured.
	DefaultKeyType = KeyTypeECDSAP256
)

const (
	minRSABits = 2048
	maxRSABits = 8192
)

// MaxKeyPEMSize bounds the input of ParsePrivateKeyPEM, and what a caller
// reads from a key file; an RSA-8192 PKCS#8 key is about 6.5 KiB in PEM.
const MaxKeyPEMSize = 64 << 10

var (
	// ErrWeakKey is wrapped by errors about keys that are too weak, such as
	// RSA keys below 2048 bits.
	ErrWeakKey = errors.New("weak key")
	// ErrUnsupportedKey is wrapped by errors about key algorithms, curves or
	// sizes mayfly does not support.
	ErrUnsupportedKey = errors.New("unsupported key")
	// ErrKeyMalformed is wrapped by errors about private key encodings that
	// cannot be parsed.
	ErrKeyMalformed = errors.New("malformed private key")
)

// KeyTypes returns the supported key types, default first.
func KeyTypes() []KeyType {
	return []KeyType{KeyTypeECDSAP256, KeyTypeECDSAP384, KeyTypeEd25519, KeyTypeRSA2048, KeyTypeRSA3072}
}

// ParseKeyType parses a key type name; the empty string is DefaultKeyType.
func ParseKeyType(s string) (KeyType, error) {
	if s == "" {
		return DefaultKeyType, nil
	}
	for _, kt := range KeyTypes() {
		if string(kt) == s {
			return kt, nil
		}
	}
	return "", fmt.Errorf("%w: key type %q; supported are %v", ErrUnsupportedKey, s, KeyTypes())
}

// GenerateKey generates a private key of type kt. Note that since Go 1.26 the
// standard library draws key material from its own secure source and ignores
// rand unless GODEBUG=cryptocustomrand=1 is set; rand is kept for that case.
func GenerateKey(kt KeyType, rand io.Reader) (crypto.Signer, error) {
	if rand == nil {
		return nil, errors.New("generate key: rand is nil")
	}
	var (
		key crypto.Signer
		err error
	)
	switch kt {
	case KeyTypeECDSAP256:
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand)
	case KeyTypeECDSAP384:
		key, err = ecdsa.GenerateKey(elliptic.P384(), rand)
	case KeyTypeEd25519:
		var priv ed25519.PrivateKey
		_, priv, err = ed25519.GenerateKey(rand)
		key = priv
	case KeyTypeRSA2048:
		key, err = rsa.GenerateKey(rand, 2048)
	case KeyTypeRSA3072:
		key, err = rsa.GenerateKey(rand, 3072)
	default:
		return nil, fmt.Errorf("generate key: %w: key type %q", ErrUnsupportedKey, kt)
	}
	if err != nil {
		return nil, fmt.Errorf("generate %s key: %w", kt, err)
	}
	return key, nil
}

// MarshalPrivateKeyPEM encodes key as a PKCS#8 "PRIVATE KEY" PEM block.
func MarshalPrivateKeyPEM(key crypto.Signer) ([]byte, error) {
	if key == nil {
		return nil, errors.New("marshal private key: key is nil")
	}
	if err := CheckPublicKey(key.Public()); err != nil {
		return nil, fmt.Errorf("marshal private key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal private key: %w: %T", ErrUnsupportedKey, key)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParsePrivateKeyPEM parses exactly one PEM block, surrounded by whitespace
// only, holding a private key: PKCS#8 "PRIVATE KEY", or the legacy "EC
// PRIVATE KEY" and "RSA PRIVATE KEY" (unencrypted). The key must pass
// CheckPublicKey. Errors wrap ErrKeyMalformed (and the PEM sentinel, e.g.
// ErrPEMWrongType), ErrWeakKey or ErrUnsupportedKey, and never include key
// material.
func ParsePrivateKeyPEM(data []byte) (crypto.Signer, error) {
	blocks, err := decodePEMBlocks(data, PEMLimits{MaxBlocks: 1, MaxBytes: MaxKeyPEMSize},
		"PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY")
	if err != nil {
		return nil, fmt.Errorf("parse private key: %w: %w", ErrKeyMalformed, err)
	}
	block := blocks[0]
	var key any
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	}
	if err != nil {
		// The x509 parse errors describe structure, never key bytes.
		return nil, fmt.Errorf("parse private key: %w: %s: %w", ErrKeyMalformed, block.Type, err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("parse private key: %w: %T is not a signer", ErrUnsupportedKey, key)
	}
	if err := CheckPublicKey(signer.Public()); err != nil {
		return nil, fmt.Errorf("parse private key: %w", err)
	}
	return signer, nil
}

// CheckPublicKey accepts ECDSA P-256 and P-384, Ed25519, and RSA keys of 2048
// to 8192 bits. Other keys are rejected with an error wrapping ErrWeakKey
// (RSA below 2048 bits or with a weak exponent) or ErrUnsupportedKey (other
// curves, sizes and algorithms).
func CheckPublicKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k == nil || k.Curve == nil {
			return fmt.Errorf("%w: empty ECDSA key", ErrUnsupportedKey)
		}
		switch k.Curve {
		case elliptic.P256(), elliptic.P384():
			return nil
		}
		return fmt.Errorf("%w: ECDSA curve %s; allowed are P-256 and P-384", ErrUnsupportedKey, k.Curve.Params().Name)
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return fmt.Errorf("%w: Ed25519 key of %d bytes", ErrUnsupportedKey, len(k))
		}
		return nil
	case *rsa.PublicKey:
		if k == nil || k.N == nil {
			return fmt.Errorf("%w: empty RSA key", ErrUnsupportedKey)
		}
		bits := k.N.BitLen()
		if bits < minRSABits {
			return fmt.Errorf("%w: RSA key of %d bits; minimum is %d", ErrWeakKey, bits, minRSABits)
		}
		if bits > maxRSABits {
			return fmt.Errorf("%w: RSA key of %d bits; maximum is %d", ErrUnsupportedKey, bits, maxRSABits)
		}
		if k.E < 3 || k.E%2 == 0 {
			return fmt.Errorf("%w: RSA public exponent %d", ErrWeakKey, k.E)
		}
		return nil
	case nil:
		return fmt.Errorf("%w: no public key", ErrUnsupportedKey)
	default:
		return fmt.Errorf("%w: key type %T", ErrUnsupportedKey, pub)
	}
}

// KeyTypeOf returns the KeyType of a public key. RSA keys must be exactly
// 2048 or 3072 bits; other keys CheckPublicKey accepts (e.g. RSA-4096) have
// no KeyType and yield an error wrapping ErrUnsupportedKey.
func KeyTypeOf(pub crypto.PublicKey) (KeyType, error) {
	if err := CheckPublicKey(pub); err != nil {
		return "", err
	}
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() {
			return KeyTypeECDSAP256, nil
		}
		return KeyTypeECDSAP384, nil
	case ed25519.PublicKey:
		return KeyTypeEd25519, nil
	case *rsa.PublicKey:
		switch k.N.BitLen() {
		case 2048:
			return KeyTypeRSA2048, nil
		case 3072:
			return KeyTypeRSA3072, nil
		}
		return "", fmt.Errorf("%w: RSA key of %d bits has no key type", ErrUnsupportedKey, k.N.BitLen())
	}
	return "", fmt.Errorf("%w: key type %T", ErrUnsupportedKey, pub)
}

// isRSA reports whether pub is an RSA public key.
func isRSA(pub crypto.PublicKey) bool {
	_, ok := pub.(*rsa.PublicKey)
	return ok
}

// PublicKeysEqual reports whether a and b are the same public key. It is the
// one key comparison of mayfly: a certificate and its key, a CSR and the
// certificate issued for it, an upstream chain and the CA's own key.
func PublicKeysEqual(a, b crypto.PublicKey) bool {
	e, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && b != nil && e.Equal(b)
}

// KeyMatches reports whether key is the private key of cert.
func KeyMatches(cert *x509.Certificate, key crypto.Signer) bool {
	return cert != nil && key != nil && PublicKeysEqual(cert.PublicKey, key.Public())
}
