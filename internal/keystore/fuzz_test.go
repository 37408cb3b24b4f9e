package keystore_test

import (
	"strings"
	"testing"

	mayflyconfig "github.com/mayfly-pki/mayfly/internal/config"
	"github.com/mayfly-pki/mayfly/internal/keystore"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// FuzzPKCS11Config: the keys section as users write it, decoded strictly
// and validated: no panic, and what validates names a module by absolute
// path, one token and one PIN source.
func FuzzPKCS11Config(f *testing.F) {
	f.Add([]byte("pkcs11: {modulePath: /usr/lib/softhsm/libsofthsm2.so, token: mayfly, pinFile: /etc/mayfly/pin}\n"))
	f.Add([]byte(`{"pkcs11":{"modulePath":"/m.so","slotID":0,"pinEnv":"PIN","label":"ca-1"}}`))
	f.Add([]byte("pkcs11: {modulePath: m.so, token: a, serial: b, pinFile: x, pinEnv: y, slotID: -3}\n"))
	f.Add([]byte("pkcs11: {pin: '1234'}\n"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		c, err := mayflyconfig.Parse(raw, "keys", func(c *keystore.Config) (*keystore.Config, error) {
			if c.PKCS11 == nil {
				return c, nil
			}
			return c, c.PKCS11.Validate("keys.pkcs11", pki.KeyTypeECDSAP256)
		})
		if err != nil || c.PKCS11 == nil {
			return
		}
		p := c.PKCS11
		tokens := 0
		for _, set := range []bool{p.Token != "", p.Serial != "", p.SlotID != nil} {
			if set {
				tokens++
			}
		}
		if !strings.HasPrefix(p.ModulePath, "/") || tokens != 1 || (p.PINFile == "") == (p.PINEnv == "") || (p.SlotID != nil && *p.SlotID < 0) {
			t.Fatalf("accepted %+v", p)
		}
	})
}
