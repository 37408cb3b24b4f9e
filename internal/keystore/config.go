package keystore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"unicode"

	"github.com/mayfly-pki/mayfly/pkg/pki"
	"github.com/mayfly-pki/mayfly/pkg/readlimit"
)

// Config selects where the CA's root and intermediate keys are kept (the
// CA config's keys). Empty: in the state, as before.
type Config struct {
	// PKCS11 keeps them in a PKCS#11 token.
	PKCS11 *PKCS11Config `json:"pkcs11,omitempty"`
}

// PKCS11Config names a PKCS#11 token and how to log in to it.
type PKCS11Config struct {
	// ModulePath is the token vendor's PKCS#11 module, e.g.
	// /usr/lib/softhsm/libsofthsm2.so.
	ModulePath string `json:"modulePath"`
	// Token is the token's label. Set one of Token, Serial, SlotID.
	Token string `json:"token,omitempty"`
	// Serial is the token's serial number.
	Serial string `json:"serial,omitempty"`
	// SlotID is the slot the token is in.
	SlotID *int `json:"slotID,omitempty"`
	// PINFile holds the user PIN (trailing white space ignored); keep it
	// 0600 or 0400. Set one of PINFile, PINEnv.
	PINFile string `json:"pinFile,omitempty"`
	// PINEnv names the environment variable that holds the user PIN.
	PINEnv string `json:"pinEnv,omitempty"`
	// Label starts the CKA_LABEL of the keys mayfly creates (default
	// "mayfly"): <label>-root-<random>, <label>-intermediate-<random>.
	Label string `json:"label,omitempty"`
}

// DefaultLabel starts the labels of the keys mayfly creates.
const DefaultLabel = "mayfly"

// Validate names the first field that is missing or wrong; field is the
// path of c in the config ("keys.pkcs11"). kt is the CA's key type.
func (c *PKCS11Config) Validate(field string, kt pki.KeyType) error {
	n := 0
	if c.Token != "" {
		n++
	}
	if c.Serial != "" {
		n++
	}
	if c.SlotID != nil {
		n++
	}
	switch {
	case c.ModulePath == "":
		return fmt.Errorf("%s.modulePath: required (the token vendor's PKCS#11 module, e.g. /usr/lib/softhsm/libsofthsm2.so)", field)
	case !filepath.IsAbs(c.ModulePath):
		return fmt.Errorf("%s.modulePath: %q must be an absolute path", field, c.ModulePath)
	case n != 1:
		return fmt.Errorf("%s: set exactly one of token, serial, slotID", field)
	case c.SlotID != nil && *c.SlotID < 0:
		return fmt.Errorf("%s.slotID: must not be negative, got %d", field, *c.SlotID)
	case (c.PINFile == "") == (c.PINEnv == ""):
		return fmt.Errorf("%s: set exactly one of pinFile, pinEnv (the token's user PIN; never in the config itself)", field)
	case c.Label != "" && !validLabel(c.Label):
		return fmt.Errorf("%s.label: %q may hold letters, digits, '-', '_' and '.' only", field, c.Label)
	}
	switch kt {
	case pki.KeyTypeECDSAP256, pki.KeyTypeECDSAP384, pki.KeyTypeRSA2048, pki.KeyTypeRSA3072:
	default:
		return fmt.Errorf("%s: keyType %s cannot be generated in a PKCS#11 token here; use ecdsa-p256, ecdsa-p384, rsa-2048 or rsa-3072", field, kt)
	}
	return nil
}

func validLabel(s string) bool {
	return len(s) <= 32 && !strings.ContainsFunc(s, func(r rune) bool {
		return r > unicode.MaxASCII || !unicode.IsLetter(r) && !unicode.IsDigit(r) && r != '-' && r != '_' && r != '.'
	})
}

// maxPIN bounds a PIN file: PINs are short, a large file is a mistake.
const maxPIN = 256

// readPIN returns the PIN from its file or environment variable. Errors
// name where the PIN was looked for, never the PIN.
func (c *PKCS11Config) readPIN(field string) (string, error) {
	var raw string
	if c.PINEnv != "" {
		v, ok := os.LookupEnv(c.PINEnv)
		if !ok || v == "" {
			return "", fmt.Errorf("%s.pinEnv: the environment variable %s is not set", field, c.PINEnv)
		}
		raw = v
	} else {
		buf, err := readlimit.File(c.PINFile, maxPIN)
		if err != nil {
			return "", fmt.Errorf("%s.pinFile: %w", field, err)
		}
		raw = string(buf)
	}
	pin := strings.TrimRightFunc(raw, unicode.IsSpace)
	switch {
	case pin == "":
		return "", fmt.Errorf("%s: the PIN is empty", field)
	case strings.ContainsAny(pin, "\n\r\x00"):
		return "", fmt.Errorf("%s: the PIN must be one line", field)
	}
	return pin, nil
}

// errSensitive is what a token error is replaced by when its text holds
// the PIN (no module is known to do that; this makes sure).
var errSensitive = errors.New("the PKCS#11 module's error text contained the PIN; it is withheld")
