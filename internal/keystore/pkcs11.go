package keystore

import (
	"context"
	"crypto"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"

	"go.step.sm/crypto/kms/apiv1"
	steppkcs11 "go.step.sm/crypto/kms/pkcs11"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// ErrUnsupported means this binary was built without cgo and cannot load
// a PKCS#11 module.
var ErrUnsupported = errors.New("this ca binary has no PKCS#11 support: it was built with CGO_ENABLED=0 (the static release images are); build the CA with cgo (make build-pkcs11) and run it where the token's module and libc are")

// PKCS11 is a PKCS#11 token holding the CA's keys (authority.KeyStore).
type PKCS11 struct {
	kms   apiv1.KeyManager
	cfg   PKCS11Config
	pin   string
	desc  string
	label string
	rand  io.Reader

	closeOnce sync.Once
}

var _ authority.KeyStore = (*PKCS11)(nil)

// OpenPKCS11 loads the module, finds the token and logs in. field is the
// path of cfg in the config (for errors). Close it when done.
func OpenPKCS11(ctx context.Context, field string, cfg PKCS11Config) (*PKCS11, error) {
	if !Supported {
		return nil, fmt.Errorf("%s: %w", field, ErrUnsupported)
	}
	st, err := os.Stat(cfg.ModulePath)
	switch {
	case err != nil:
		return nil, fmt.Errorf("%s.modulePath: %w (install the token's PKCS#11 module, e.g. apt-get install softhsm2, or fix the path)", field, err)
	case st.IsDir():
		return nil, fmt.Errorf("%s.modulePath %s: is a directory, not a PKCS#11 module", field, cfg.ModulePath)
	}
	pin, err := cfg.readPIN(field)
	if err != nil {
		return nil, err
	}
	k := &PKCS11{cfg: cfg, pin: pin, label: cfg.Label, rand: rand.Reader}
	if k.label == "" {
		k.label = DefaultLabel
	}
	k.desc = "PKCS#11 token " + k.tokenName() + " (" + cfg.ModulePath + ")"
	// The PIN goes in Options.Pin, never in the URI: step's errors quote
	// URIs.
	kms, err := steppkcs11.New(ctx, apiv1.Options{Type: apiv1.PKCS11, URI: k.moduleURI(), Pin: pin})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", field, k.explain(err))
	}
	k.kms = kms
	return k, nil
}

func (k *PKCS11) tokenName() string {
	switch {
	case k.cfg.Token != "":
		return strconv.Quote(k.cfg.Token)
	case k.cfg.Serial != "":
		return "serial " + k.cfg.Serial
	default:
		return "in slot " + strconv.Itoa(*k.cfg.SlotID)
	}
}

// moduleURI selects the module and the token (RFC 7512 form).
func (k *PKCS11) moduleURI() string {
	parts := []string{"module-path=" + url.QueryEscape(k.cfg.ModulePath)}
	switch {
	case k.cfg.Token != "":
		parts = append(parts, "token="+url.QueryEscape(k.cfg.Token))
	case k.cfg.Serial != "":
		parts = append(parts, "serial="+url.QueryEscape(k.cfg.Serial))
	default:
		parts = append(parts, "slot-id="+strconv.Itoa(*k.cfg.SlotID))
	}
	return authority.KeyURIPrefix + strings.Join(parts, ";")
}

// explain turns a token error into one that says what to fix. It never
// returns text holding the PIN.
func (k *PKCS11) explain(err error) error {
	msg := err.Error()
	if k.pin != "" && strings.Contains(msg, k.pin) {
		return errSensitive
	}
	switch {
	case strings.Contains(msg, "CKR_PIN_INCORRECT"), strings.Contains(msg, "CKR_PIN_LEN_RANGE"):
		return fmt.Errorf("the token %s refused the PIN from %s (%w)", k.tokenName(), k.pinSource(), err)
	case strings.Contains(msg, "CKR_PIN_LOCKED"):
		return fmt.Errorf("the token %s has locked its user PIN after too many wrong ones: unlock it with the SO PIN (%w)", k.tokenName(), err)
	case strings.Contains(msg, "could not find PKCS#11 token"):
		return fmt.Errorf("no token %s in %s: initialise it (softhsm2-util --init-token --free --label ...) or fix the token field", k.tokenName(), k.cfg.ModulePath)
	case strings.Contains(msg, "could not open PKCS#11"), strings.Contains(msg, "failed to initialize PKCS#11 library"):
		return fmt.Errorf("%s is not a PKCS#11 module that loads here (%w)", k.cfg.ModulePath, err)
	}
	return err
}

func (k *PKCS11) pinSource() string {
	if k.cfg.PINEnv != "" {
		return "the environment variable " + k.cfg.PINEnv
	}
	return k.cfg.PINFile
}

// Describe names the token for logs and status.
func (k *PKCS11) Describe() string { return k.desc }

// Close logs out and unloads the module.
func (k *PKCS11) Close() error {
	var err error
	k.closeOnce.Do(func() { err = k.kms.Close() })
	return err
}

// CreateKey generates a key pair inside the token (CKA_SENSITIVE, not
// CKA_EXTRACTABLE) with a fresh random CKA_ID and the label
// <label>-<role>-<random>.
func (k *PKCS11) CreateKey(_ context.Context, role string, kt pki.KeyType) (string, crypto.Signer, error) {
	alg, bits, err := algorithm(kt)
	if err != nil {
		return "", nil, err
	}
	id := make([]byte, 16)
	if _, err := io.ReadFull(k.rand, id); err != nil {
		return "", nil, fmt.Errorf("key id: %w", err)
	}
	var idEsc strings.Builder
	for _, b := range id {
		fmt.Fprintf(&idEsc, "%%%02x", b)
	}
	uri := fmt.Sprintf("%sid=%s;object=%s-%s-%x", authority.KeyURIPrefix, idEsc.String(), k.label, role, id[:4])
	resp, err := k.kms.CreateKey(&apiv1.CreateKeyRequest{Name: uri, SignatureAlgorithm: alg, Bits: bits})
	if err != nil {
		return "", nil, fmt.Errorf("creating a %s key in %s: %w", kt, k.desc, k.explain(err))
	}
	signer, err := k.kms.CreateSigner(&resp.CreateSignerRequest)
	if err != nil {
		_ = k.deleteKey(uri)
		return "", nil, fmt.Errorf("using the new key %s in %s: %w", uri, k.desc, k.explain(err))
	}
	return uri, signer, nil
}

// LoadKey returns a signer for a key created before.
func (k *PKCS11) LoadKey(_ context.Context, uri string) (crypto.Signer, error) {
	signer, err := k.kms.CreateSigner(&apiv1.CreateSignerRequest{SigningKey: uri})
	if err != nil {
		if strings.Contains(err.Error(), "not found") {
			return nil, fmt.Errorf("the key %s is not in %s: was the token re-initialised, or is this the wrong token? (%w)", uri, k.desc, k.explain(err))
		}
		return nil, k.explain(err)
	}
	return signer, nil
}

// DeleteKey removes a key pair; one that is gone already is not an error.
func (k *PKCS11) DeleteKey(_ context.Context, uri string) error {
	if err := k.deleteKey(uri); err != nil {
		return k.explain(err)
	}
	return nil
}

// deleteKey calls the KMS's DeleteKey, which step's PKCS#11 KMS has only
// when built with cgo (New fails without it, so this is never reached).
func (k *PKCS11) deleteKey(uri string) error {
	d, ok := k.kms.(interface{ DeleteKey(string) error })
	if !ok {
		return ErrUnsupported
	}
	return d.DeleteKey(uri)
}

func algorithm(kt pki.KeyType) (apiv1.SignatureAlgorithm, int, error) {
	switch kt {
	case pki.KeyTypeECDSAP256, "":
		return apiv1.ECDSAWithSHA256, 0, nil
	case pki.KeyTypeECDSAP384:
		return apiv1.ECDSAWithSHA384, 0, nil
	case pki.KeyTypeRSA2048:
		return apiv1.SHA256WithRSA, 2048, nil
	case pki.KeyTypeRSA3072:
		return apiv1.SHA256WithRSA, 3072, nil
	}
	return 0, 0, fmt.Errorf("key type %s cannot be generated in a PKCS#11 token here", kt)
}
