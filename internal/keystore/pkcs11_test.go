package keystore_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ThalesIgnite/crypto11"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/keystore"
	"github.com/mayfly-pki/mayfly/internal/test/softhsm"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

const field = "keys.pkcs11"

func config(tok softhsm.Token) keystore.PKCS11Config {
	return keystore.PKCS11Config{ModulePath: tok.Module, Token: tok.Label, PINFile: tok.PINFile}
}

func open(t testing.TB, cfg keystore.PKCS11Config) *keystore.PKCS11 {
	t.Helper()
	k, err := keystore.OpenPKCS11(context.Background(), field, cfg)
	if err != nil {
		t.Fatalf("OpenPKCS11: %v", err)
	}
	t.Cleanup(func() { _ = k.Close() })
	return k
}

// TestPKCS11SignsWithAKeyThatStaysInTheToken: a root and an intermediate
// made with token keys verify, and the private keys are sensitive and not
// extractable (their value cannot be read).
func TestPKCS11SignsWithAKeyThatStaysInTheToken(t *testing.T) {
	tok := softhsm.NewToken(t, "mayfly-test")
	k := open(t, config(tok))
	ctx := context.Background()
	now := time.Now()
	for _, kt := range []pki.KeyType{pki.KeyTypeECDSAP256, pki.KeyTypeECDSAP384, pki.KeyTypeRSA2048} {
		t.Run(string(kt), func(t *testing.T) {
			rootURI, rootKey, err := k.CreateKey(ctx, "root", kt)
			if err != nil {
				t.Fatalf("CreateKey: %v", err)
			}
			if strings.Contains(rootURI, tok.PIN) || strings.Contains(rootURI, "pin") || !strings.HasPrefix(rootURI, authority.KeyURIPrefix) {
				t.Fatalf("key URI %q: want a pkcs11: URI without a PIN", rootURI)
			}
			root, err := pki.SelfSignedRoot(rootKey, td, 24*time.Hour, now, rand.Reader)
			if err != nil {
				t.Fatalf("SelfSignedRoot with a token key: %v", err)
			}
			_, interKey, err := k.CreateKey(ctx, "intermediate", kt)
			if err != nil {
				t.Fatal(err)
			}
			inter, err := authority.SignIntermediate(root, rootKey, interKey.Public(), td, time.Hour, now, rand.Reader)
			if err != nil {
				t.Fatalf("SignIntermediate with a token key: %v", err)
			}
			roots := x509.NewCertPool()
			roots.AddCert(root)
			if _, err := inter.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now.Add(time.Minute)}); err != nil {
				t.Fatalf("the intermediate does not verify: %v", err)
			}
		})
	}
	// Look at the keys with a second PKCS#11 context on the same token.
	c11, pairs := tokenKeyPairs(t, tok)
	if len(pairs) != 6 {
		t.Fatalf("the token holds %d key pairs, want 6", len(pairs))
	}
	for i, p := range pairs {
		attrs, err := c11.GetAttributes(p, []crypto11.AttributeType{crypto11.CkaSensitive, crypto11.CkaExtractable})
		if err != nil {
			t.Fatal(err)
		}
		if v := attrs[crypto11.CkaSensitive].Value; len(v) != 1 || v[0] != 1 {
			t.Errorf("key %d: CKA_SENSITIVE = %v, want true", i, v)
		}
		if v := attrs[crypto11.CkaExtractable].Value; len(v) != 1 || v[0] != 0 {
			t.Errorf("key %d: CKA_EXTRACTABLE = %v, want false", i, v)
		}
		secret, name := crypto11.CkaValue, "CKA_VALUE"
		if _, ok := p.Public().(*rsa.PublicKey); ok {
			secret, name = crypto11.CkaPrivateExponent, "CKA_PRIVATE_EXPONENT"
		}
		if _, err := c11.GetAttribute(p, secret); err == nil || !strings.Contains(err.Error(), "CKR_ATTRIBUTE_SENSITIVE") {
			t.Errorf("key %d: reading its %s = %v, want CKR_ATTRIBUTE_SENSITIVE", i, name, err)
		}
	}
}

// TestPKCS11KeysSurviveReopenAndDelete: a key created by one session is
// found by the next (a CA restart), and deleted keys are gone.
func TestPKCS11KeysSurviveReopenAndDelete(t *testing.T) {
	tok := softhsm.NewToken(t, "mayfly-test")
	ctx := context.Background()
	k := open(t, config(tok))
	uri, key, err := k.CreateKey(ctx, "intermediate", pki.KeyTypeECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Close(); err != nil {
		t.Fatal(err)
	}

	k2 := open(t, config(tok))
	again, err := k2.LoadKey(ctx, uri)
	if err != nil {
		t.Fatalf("LoadKey after reopening: %v", err)
	}
	if !pki.PublicKeysEqual(key.Public(), again.Public()) {
		t.Fatal("the reloaded key is another key")
	}
	if err := k2.DeleteKey(ctx, uri); err != nil {
		t.Fatalf("DeleteKey: %v", err)
	}
	if err := k2.DeleteKey(ctx, uri); err != nil {
		t.Fatalf("DeleteKey of a deleted key: %v, want nil", err)
	}
	_, err = k2.LoadKey(ctx, uri)
	if err == nil || !strings.Contains(err.Error(), "is not in") {
		t.Fatalf("LoadKey of a deleted key = %v, want 'is not in'", err)
	}
}

// TestPKCS11BadConfig: every mistake fails closed, says what is wrong, and
// never shows the PIN.
func TestPKCS11BadConfig(t *testing.T) {
	tok := softhsm.NewToken(t, "mayfly-test")
	const wrongPIN = "9911-wrong-pin"
	wrongFile := t.TempDir() + "/wrong"
	writeFile(t, wrongFile, wrongPIN+"\n")
	slot := 99
	tests := []struct {
		name string
		edit func(c *keystore.PKCS11Config)
		env  map[string]string
		want string
	}{
		{"wrong_pin", func(c *keystore.PKCS11Config) { c.PINFile = wrongFile }, nil, "refused the PIN from " + wrongFile},
		{"wrong_pin_from_env", func(c *keystore.PKCS11Config) { c.PINFile, c.PINEnv = "", "MAYFLY_TEST_PIN" }, map[string]string{"MAYFLY_TEST_PIN": wrongPIN}, "refused the PIN from the environment variable MAYFLY_TEST_PIN"},
		{"pin_env_unset", func(c *keystore.PKCS11Config) { c.PINFile, c.PINEnv = "", "MAYFLY_TEST_PIN_UNSET" }, nil, "keys.pkcs11.pinEnv: the environment variable MAYFLY_TEST_PIN_UNSET is not set"},
		{"pin_file_missing", func(c *keystore.PKCS11Config) { c.PINFile = "/nonexistent/pin" }, nil, "keys.pkcs11.pinFile: open /nonexistent/pin"},
		{"missing_module", func(c *keystore.PKCS11Config) { c.ModulePath = "/nonexistent/libsofthsm2.so" }, nil, "keys.pkcs11.modulePath: stat /nonexistent/libsofthsm2.so: no such file"},
		{"module_not_a_pkcs11_library", func(c *keystore.PKCS11Config) { c.ModulePath = wrongFile }, nil, "is not a PKCS#11 module that loads here"},
		{"unknown_token", func(c *keystore.PKCS11Config) { c.Token = "no-such-token" }, nil, `no token "no-such-token" in ` + tok.Module},
		{"unknown_slot", func(c *keystore.PKCS11Config) { c.Token, c.SlotID = "", &slot }, nil, "no token in slot 99"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			cfg := config(tok)
			tt.edit(&cfg)
			k, err := keystore.OpenPKCS11(context.Background(), field, cfg)
			if err == nil {
				_ = k.Close()
				t.Fatal("OpenPKCS11 succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %q, want it to contain %q", err, tt.want)
			}
			for _, pin := range []string{tok.PIN, wrongPIN} {
				if strings.Contains(err.Error(), pin) {
					t.Errorf("error %q shows a PIN", err)
				}
			}
		})
	}
	// After all of that the right configuration still works.
	k := open(t, config(tok))
	if _, _, err := k.CreateKey(context.Background(), "root", pki.KeyTypeECDSAP256); err != nil {
		t.Fatal(err)
	}
}

func TestPKCS11ConfigValidate(t *testing.T) {
	slot := 1
	neg := -1
	good := keystore.PKCS11Config{ModulePath: "/usr/lib/softhsm/libsofthsm2.so", Token: "mayfly", PINFile: "/etc/mayfly/pin"}
	tests := []struct {
		name string
		edit func(c *keystore.PKCS11Config)
		kt   pki.KeyType
		want string
	}{
		{"valid", func(*keystore.PKCS11Config) {}, pki.KeyTypeECDSAP256, ""},
		{"valid_slot_and_env", func(c *keystore.PKCS11Config) { c.Token, c.SlotID, c.PINFile, c.PINEnv = "", &slot, "", "PIN" }, pki.KeyTypeRSA3072, ""},
		{"no_module", func(c *keystore.PKCS11Config) { c.ModulePath = "" }, pki.KeyTypeECDSAP256, "keys.pkcs11.modulePath: required"},
		{"relative_module", func(c *keystore.PKCS11Config) { c.ModulePath = "libsofthsm2.so" }, pki.KeyTypeECDSAP256, "must be an absolute path"},
		{"no_token", func(c *keystore.PKCS11Config) { c.Token = "" }, pki.KeyTypeECDSAP256, "set exactly one of token, serial, slotID"},
		{"two_tokens", func(c *keystore.PKCS11Config) { c.Serial = "abc" }, pki.KeyTypeECDSAP256, "set exactly one of token, serial, slotID"},
		{"negative_slot", func(c *keystore.PKCS11Config) { c.Token, c.SlotID = "", &neg }, pki.KeyTypeECDSAP256, "keys.pkcs11.slotID: must not be negative"},
		{"no_pin", func(c *keystore.PKCS11Config) { c.PINFile = "" }, pki.KeyTypeECDSAP256, "set exactly one of pinFile, pinEnv"},
		{"two_pins", func(c *keystore.PKCS11Config) { c.PINEnv = "PIN" }, pki.KeyTypeECDSAP256, "set exactly one of pinFile, pinEnv"},
		{"bad_label", func(c *keystore.PKCS11Config) { c.Label = "a;b" }, pki.KeyTypeECDSAP256, "keys.pkcs11.label"},
		{"ed25519", func(*keystore.PKCS11Config) {}, pki.KeyTypeEd25519, "keyType ed25519 cannot be generated in a PKCS#11 token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := good
			tt.edit(&c)
			err := c.Validate(field, tt.kt)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("Validate = %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("Validate = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestPKCS11PINFile(t *testing.T) {
	tok := softhsm.NewToken(t, "mayfly-test")
	dir := t.TempDir()
	for name, tc := range map[string]struct{ body, want string }{
		"empty":     {"", "the PIN is empty"},
		"blank":     {" \n", "the PIN is empty"},
		"two_lines": {"12\n34\n", "the PIN must be one line"},
		"too_long":  {strings.Repeat("1", 300), "longer than 256 bytes"},
	} {
		t.Run(name, func(t *testing.T) {
			p := dir + "/" + name
			writeFile(t, p, tc.body)
			cfg := config(tok)
			cfg.PINFile = p
			_, err := keystore.OpenPKCS11(context.Background(), field, cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("OpenPKCS11 = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestSupportedMatchesTheBuild(t *testing.T) {
	// go test builds with cgo where gcc is (as make test does): this
	// package's tests need it, and say so instead of passing vacuously.
	if !keystore.Supported {
		t.Fatal("keystore.Supported is false: run the tests with CGO_ENABLED=1 (a C compiler is needed for PKCS#11)")
	}
	if !errors.Is(fmt.Errorf("x: %w", keystore.ErrUnsupported), keystore.ErrUnsupported) {
		t.Fatal("ErrUnsupported does not wrap")
	}
}

func writeFile(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

// tokenKeyPairs opens a second PKCS#11 context on tok, as another program
// on the token would, and lists the key pairs it holds; the context stays
// open until the test ends.
func tokenKeyPairs(t *testing.T, tok softhsm.Token) (*crypto11.Context, []crypto11.Signer) {
	t.Helper()
	c11, err := crypto11.Configure(&crypto11.Config{Path: tok.Module, TokenLabel: tok.Label, Pin: tok.PIN})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c11.Close() })
	pairs, err := c11.FindAllKeyPairs()
	if err != nil {
		t.Fatal(err)
	}
	return c11, pairs
}
