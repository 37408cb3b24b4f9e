package pki_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"
	"testing"

	"github.com/mayfly-pki/mayfly/pkg/pki"
)

func TestParseKeyType(t *testing.T) {
	tests := []struct {
		in      string
		want    pki.KeyType
		wantErr bool
	}{
		{"", pki.DefaultKeyType, false},
		{"ecdsa-p256", pki.KeyTypeECDSAP256, false},
		{"ecdsa-p384", pki.KeyTypeECDSAP384, false},
		{"ed25519", pki.KeyTypeEd25519, false},
		{"rsa-2048", pki.KeyTypeRSA2048, false},
		{"rsa-3072", pki.KeyTypeRSA3072, false},
		{"rsa-1024", "", true},
		{"ECDSA-P256", "", true},
		{"ecdsa-p521", "", true},
	}
	for _, tt := range tests {
		got, err := pki.ParseKeyType(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseKeyType(%q) = %q, %v; want %q, err=%v", tt.in, got, err, tt.want, tt.wantErr)
		}
		if err != nil && !errors.Is(err, pki.ErrUnsupportedKey) {
			t.Errorf("ParseKeyType(%q) error %v does not wrap ErrUnsupportedKey", tt.in, err)
		}
	}
}

func TestGenerateKey_roundTripsEveryKeyTypeThroughPEM(t *testing.T) {
	for _, kt := range pki.KeyTypes() {
		t.Run(string(kt), func(t *testing.T) {
			key, err := pki.GenerateKey(kt, rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			got, err := pki.KeyTypeOf(key.Public())
			if err != nil || got != kt {
				t.Fatalf("KeyTypeOf = %q, %v; want %q", got, err, kt)
			}
			pemBytes, err := pki.MarshalPrivateKeyPEM(key)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(string(pemBytes), "-----BEGIN PRIVATE KEY-----\n") {
				t.Fatalf("not a PKCS#8 PEM block: %.40q", pemBytes)
			}
			back, err := pki.ParsePrivateKeyPEM(pemBytes)
			if err != nil {
				t.Fatal(err)
			}
			if !back.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(key.Public()) {
				t.Fatal("parsed key differs from the generated key")
			}
		})
	}
}

func TestGenerateKey_rejectsUnknownType(t *testing.T) {
	if _, err := pki.GenerateKey("dsa-1024", rand.Reader); !errors.Is(err, pki.ErrUnsupportedKey) {
		t.Fatalf("err = %v, want ErrUnsupportedKey", err)
	}
}

func TestParsePrivateKeyPEM_rejects(t *testing.T) {
	ec := mustKey(t, pki.KeyTypeECDSAP256)
	good, err := pki.MarshalPrivateKeyPEM(ec)
	if err != nil {
		t.Fatal(err)
	}
	p521 := mustP521(t)
	p521DER, err := x509.MarshalPKCS8PrivateKey(p521)
	if err != nil {
		t.Fatal(err)
	}
	rsa1024DER, err := x509.MarshalPKCS8PrivateKey(mustRSA1024(t))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		in      []byte
		wantErr error
	}{
		{"rejects_empty", nil, pki.ErrKeyMalformed},
		{"rejects_trailing_data", append(append([]byte(nil), good...), "junk"...), pki.ErrKeyMalformed},
		{"rejects_certificate_block", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1}}), pki.ErrPEMWrongType},
		{"rejects_garbage_der", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte("nope")}), pki.ErrKeyMalformed},
		{"rejects_p521_as_unsupported", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: p521DER}), pki.ErrUnsupportedKey},
		{"rejects_rsa1024_as_weak", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: rsa1024DER}), pki.ErrWeakKey},
		{"rejects_oversized_input", make([]byte, 1<<20), pki.ErrPEMTooLarge},
		{"rejects_leading_garbage", append([]byte("garbage\n"), good...), pki.ErrPEMTrailingData},
		{"rejects_two_keys", append(append([]byte(nil), good...), good...), pki.ErrPEMTooManyBlocks},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := pki.ParsePrivateKeyPEM(tt.in)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), "MII") {
				t.Fatalf("error leaks base64 key material: %v", err)
			}
		})
	}
}

func TestParsePrivateKeyPEM_acceptsLegacyECBlock(t *testing.T) {
	k := mustKey(t, pki.KeyTypeECDSAP384).(*ecdsa.PrivateKey)
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pki.ParsePrivateKeyPEM(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})); err != nil {
		t.Fatal(err)
	}
}

func TestCheckPublicKey(t *testing.T) {
	rsa2048 := mustKey(t, pki.KeyTypeRSA2048).Public().(*rsa.PublicKey)
	ed := mustKey(t, pki.KeyTypeEd25519).Public()
	tests := []struct {
		name    string
		pub     any
		wantErr error
	}{
		{"accepts_p256", mustKey(t, pki.KeyTypeECDSAP256).Public(), nil},
		{"accepts_p384", mustKey(t, pki.KeyTypeECDSAP384).Public(), nil},
		{"accepts_ed25519", ed, nil},
		{"accepts_rsa2048", rsa2048, nil},
		{"accepts_rsa8192_modulus", &rsa.PublicKey{N: new(big.Int).Lsh(big.NewInt(1), 8191), E: 65537}, nil},
		{"rejects_rsa1024_as_weak", mustRSA1024(t).Public(), pki.ErrWeakKey},
		{"rejects_rsa_over_8192_bits", &rsa.PublicKey{N: new(big.Int).Lsh(big.NewInt(1), 8192), E: 65537}, pki.ErrUnsupportedKey},
		{"rejects_rsa_exponent_1", &rsa.PublicKey{N: rsa2048.N, E: 1}, pki.ErrWeakKey},
		{"rejects_p521_as_unsupported", mustP521(t).Public(), pki.ErrUnsupportedKey},
		{"rejects_p224_as_unsupported", &ecdsa.PublicKey{Curve: elliptic.P224()}, pki.ErrUnsupportedKey},
		{"rejects_short_ed25519", ed25519.PublicKey(make([]byte, 31)), pki.ErrUnsupportedKey},
		{"rejects_nil", nil, pki.ErrUnsupportedKey},
		{"rejects_nil_rsa_pointer", (*rsa.PublicKey)(nil), pki.ErrUnsupportedKey},
		{"rejects_unknown_type", "not a key", pki.ErrUnsupportedKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := pki.CheckPublicKey(tt.pub)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Fatalf("CheckPublicKey = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestKeyTypeOf_rejectsRSA4096WithoutKeyType(t *testing.T) {
	pub := &rsa.PublicKey{N: new(big.Int).Lsh(big.NewInt(1), 4095), E: 65537}
	if _, err := pki.KeyTypeOf(pub); !errors.Is(err, pki.ErrUnsupportedKey) {
		t.Fatalf("err = %v, want ErrUnsupportedKey", err)
	}
}

func TestKeyMatches(t *testing.T) {
	a, err := pki.GenerateKey(pki.KeyTypeECDSAP256, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	b, err := pki.GenerateKey(pki.KeyTypeECDSAP256, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cert := &x509.Certificate{PublicKey: a.Public()}
	switch {
	case !pki.KeyMatches(cert, a):
		t.Error("a certificate does not match its own key")
	case pki.KeyMatches(cert, b):
		t.Error("a certificate matches another key")
	case pki.KeyMatches(nil, a), pki.KeyMatches(cert, nil):
		t.Error("nil matches")
	case pki.PublicKeysEqual(nil, a.Public()), pki.PublicKeysEqual(a.Public(), nil):
		t.Error("nil public key equal")
	}
}
