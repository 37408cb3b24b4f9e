package authority

import (
	"bytes"
	"context"
	"crypto"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// KeyStore keeps the root and intermediate keys outside the state: a
// PKCS#11 token (internal/keystore). The key is generated and used inside
// the store and never leaves it; the state holds the key's URI in place of
// the key (KeyURIPrefix), and a restarted CA loads the key by its URI.
// Without a KeyStore the keys are generated in memory and kept in the
// state. JWT signing keys always stay in the state.
type KeyStore interface {
	// CreateKey generates a key of type kt for role ("root",
	// "intermediate") inside the store and returns its URI (which holds no
	// secret) and a signer that uses it.
	CreateKey(ctx context.Context, role string, kt pki.KeyType) (uri string, key crypto.Signer, err error)
	// LoadKey returns a signer for the key at uri.
	LoadKey(ctx context.Context, uri string) (crypto.Signer, error)
	// DeleteKey removes the key at uri; a key that is gone already is not
	// an error.
	DeleteKey(ctx context.Context, uri string) error
	// Describe names the store for logs and status (no secret in it).
	Describe() string
}

// KeyURIPrefix starts a key entry of the state that is a reference to a
// key in a PKCS#11 token instead of the key itself.
const KeyURIPrefix = "pkcs11:"

// StateFormatKeyURIs is the format of a state whose root or intermediate
// keys are kept in a PKCS#11 token (their entries hold URIs). Only such a
// state is stamped with it, so that a CA from before key stores refuses it
// as too new instead of calling it corrupt, while a state with its keys in
// it stays at StateFormat, readable by the CAs before.
const StateFormatKeyURIs = StateFormat + 1

// KeyDeleteGrace is how long a key that left the state (an intermediate
// replaced by its successor, a root after activation, a successor that was
// never activated) stays in the key store before it is deleted: replicas
// that have not yet re-read the state may still sign with it.
const KeyDeleteGrace = time.Hour

// KeyDeletion is a key of the key store that no state refers to any more,
// deleted from the store once After has passed.
type KeyDeletion struct {
	URI   string
	After time.Time
}

type keyDeletionJSON struct {
	URI   string    `json:"uri"`
	After time.Time `json:"after"`
}

// ErrKeyStore is wrapped by the errors of a state whose keys cannot be
// loaded from the key store (no key store configured, the key is missing,
// the key does not match the certificate).
var ErrKeyStore = errors.New("CA key store")

// checkKeyURI accepts a key URI of the state: one line, the PKCS#11 scheme,
// and no PIN (a state never holds one).
func checkKeyURI(raw []byte) (string, error) {
	s := string(bytes.TrimSpace(raw))
	switch {
	case !strings.HasPrefix(s, KeyURIPrefix):
		return "", fmt.Errorf("not a %s URI", strings.TrimSuffix(KeyURIPrefix, ":"))
	case strings.ContainsAny(s, "\n\r\x00"):
		return "", errors.New("key URI must be one line")
	case strings.Contains(s, "pin-") || strings.Contains(s, "?"):
		// pin-value, pin-source, pin-prompt: a state never holds a PIN
		// or says where one is.
		return "", errors.New("key URI must not carry a PIN or query attributes")
	}
	return s, nil
}

// isKeyURI reports whether a key entry of the state is a reference.
func isKeyURI(raw []byte) bool {
	return bytes.HasPrefix(bytes.TrimSpace(raw), []byte(KeyURIPrefix))
}

// keySlots are the slots of the state whose keys a KeyStore may hold, by
// the name errors use.
func (s *State) keySlots() []struct {
	name string
	slot *Slot
} {
	return []struct {
		name string
		slot *Slot
	}{
		{KeyRootKey, s.Root.Current}, {KeyNextRootKey, s.Root.Next},
		{KeyIntermediateKey, s.Intermediate.Current}, {KeyNextIntermediateKey, s.Intermediate.Next},
	}
}

// keyURIs returns the URIs of the keys the state keeps in a key store.
func (s *State) keyURIs() []string {
	var out []string
	for _, ks := range s.keySlots() {
		if ks.slot != nil && ks.slot.KeyURI != "" {
			out = append(out, ks.slot.KeyURI)
		}
	}
	return out
}

// LoadKeys gives every slot whose key is a URI a signer from ks and checks
// that it matches the slot's certificate. A state decoded with key URIs
// cannot sign before this.
func (s *State) LoadKeys(ctx context.Context, ks KeyStore) error {
	for _, e := range s.keySlots() {
		slot := e.slot
		if slot == nil || slot.KeyURI == "" || slot.Key != nil {
			continue
		}
		if ks == nil {
			return fmt.Errorf("%w: %s is kept in a PKCS#11 token (%s), and this CA has no keys.pkcs11 configured: configure the token the keys were created in", ErrKeyStore, e.name, slot.KeyURI)
		}
		key, err := ks.LoadKey(ctx, slot.KeyURI)
		if err != nil {
			return fmt.Errorf("%w: loading %s from %s: %w", ErrKeyStore, e.name, ks.Describe(), err)
		}
		if !pki.KeyMatches(slot.Cert(), key) {
			return fmt.Errorf("%w: %s: the key %s in %s does not match the certificate", ErrKeyStore, e.name, slot.KeyURI, ks.Describe())
		}
		slot.Key = key
	}
	return nil
}

// keysDropped returns the key URIs of before that after no longer holds.
func keysDropped(before, after *State) []string {
	kept := after.keyURIs()
	var out []string
	for _, u := range before.keyURIs() {
		if !slices.Contains(kept, u) {
			out = append(out, u)
		}
	}
	return out
}

// keyDeletionsDue reports whether a key deletion is due, and else the
// earliest one.
func (s *State) keyDeletionsDue(now time.Time) (due bool, next time.Time) {
	return expiryDue(s.KeyDeletions, func(d KeyDeletion) time.Time { return d.After }, now)
}

// deleteDueKeys deletes the keys whose deletion is due from ks and returns
// the deletions that are not.
func deleteDueKeys(ctx context.Context, ks KeyStore, pending []KeyDeletion, now time.Time) ([]KeyDeletion, error) {
	var kept []KeyDeletion
	for _, d := range pending {
		if now.Before(d.After) {
			kept = append(kept, d)
			continue
		}
		if ks == nil {
			return nil, fmt.Errorf("%w: deleting %s: no keys.pkcs11 configured", ErrKeyStore, d.URI)
		}
		if err := ks.DeleteKey(ctx, d.URI); err != nil {
			return nil, fmt.Errorf("%w: deleting the unused key %s from %s: %w", ErrKeyStore, d.URI, ks.Describe(), err)
		}
	}
	return kept, nil
}
