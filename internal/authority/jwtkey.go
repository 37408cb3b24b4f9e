package authority

import (
	"cmp"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"time"

	"github.com/mayfly-pki/mayfly/pkg/jwtsvid"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// The JWT key types (Policy.JWTKeyType), named by their JWS algorithm.
const (
	JWTES256 = "ES256"
	JWTES384 = "ES384"
	JWTRS256 = "RS256"
)

// JWTKeyTypes are the allowed values of Policy.JWTKeyType.
var JWTKeyTypes = []string{JWTES256, JWTES384, JWTRS256}

// Keys of the JWT signing keys in the state data; their validity and the
// retired keys are in meta.json.
const (
	KeyJWT     = "jwt.key"
	KeyNextJWT = "jwt-next.key"
)

// jwtRetireSkew is added to a retired JWT key's publication: verifiers
// accept a token that long after its exp (jwtsvid.Skew).
const jwtRetireSkew = jwtsvid.Skew

func (p Policy) jwtKeyTTL() time.Duration      { return cmp.Or(p.JWTKeyTTL, 24*time.Hour) }
func (p Policy) jwtMaxTokenTTL() time.Duration { return cmp.Or(p.JWTMaxTokenTTL, time.Hour) }
func (p Policy) jwtKeyType() string            { return cmp.Or(p.JWTKeyType, JWTES256) }

// newJWTKey mints a JWT signing key valid from now for the policy's JWT key
// lifetime.
func (m *Minter) newJWTKey(now time.Time) (*Slot, error) {
	var key crypto.Signer
	var err error
	switch t := m.Policy.jwtKeyType(); t {
	case JWTES256:
		key, err = ecdsa.GenerateKey(elliptic.P256(), m.rand())
	case JWTES384:
		key, err = ecdsa.GenerateKey(elliptic.P384(), m.rand())
	case JWTRS256:
		key, err = rsa.GenerateKey(m.rand(), 2048)
	default:
		return nil, fmt.Errorf("JWT key: unknown key type %q", t)
	}
	if err != nil {
		return nil, fmt.Errorf("JWT key: %w", err)
	}
	return jwtSlot(key, now, now.Add(m.Policy.jwtKeyTTL()))
}

func (m *Minter) rand() io.Reader {
	if m.Rand == nil {
		return rand.Reader
	}
	return m.Rand
}

func jwtSlot(key crypto.Signer, from, until time.Time) (*Slot, error) {
	if _, err := jwtsvid.Algorithm(key.Public()); err != nil {
		return nil, err
	}
	kid, err := jwtsvid.KeyID(key.Public())
	if err != nil {
		return nil, err
	}
	return &Slot{Key: key, KeyID: kid, ValidFrom: from, ValidUntil: until}, nil
}

// JWTKeys returns the JWT keys relying parties must accept now, by kid:
// the signing key, its published successor and the retired keys whose
// tokens may still be in use.
func (s *State) JWTKeys(now time.Time) map[string]crypto.PublicKey {
	keys := map[string]crypto.PublicKey{}
	if c := s.JWT.Current; c != nil {
		keys[c.KeyID] = c.Key.Public()
	}
	if n := s.JWT.Next; n != nil {
		keys[n.KeyID] = n.Key.Public()
	}
	for _, r := range s.JWT.Retired {
		if now.Before(r.Until) {
			keys[r.KeyID] = r.Public
		}
	}
	return keys
}

// jwtMeta is the part of meta.json about JWT keys.
type jwtMeta struct {
	Current     *validityJSON    `json:"current,omitempty"`
	Next        *validityJSON    `json:"next,omitempty"`
	PublishedAt *time.Time       `json:"nextPublishedAt,omitempty"`
	Retired     []retiredKeyJSON `json:"retired,omitempty"`
}

type validityJSON struct {
	NotBefore time.Time `json:"notBefore"`
	NotAfter  time.Time `json:"notAfter"`
}

type retiredKeyJSON struct {
	// PublicKey is PEM (PKIX).
	PublicKey string    `json:"publicKey"`
	Until     time.Time `json:"until"`
}

// encodeJWT writes the JWT rotation into data and returns its meta.
func encodeJWT(r Rotation, data map[string][]byte) (*jwtMeta, error) {
	if r.Current == nil && r.Next == nil && len(r.Retired) == 0 {
		return nil, nil
	}
	m := &jwtMeta{}
	for _, p := range []struct {
		key  string
		slot *Slot
		v    **validityJSON
	}{{KeyJWT, r.Current, &m.Current}, {KeyNextJWT, r.Next, &m.Next}} {
		if p.slot == nil {
			continue
		}
		keyPEM, err := pki.MarshalPrivateKeyPEM(p.slot.Key)
		if err != nil {
			return nil, fmt.Errorf("encoding %s: %w", p.key, err)
		}
		data[p.key] = keyPEM
		*p.v = &validityJSON{NotBefore: p.slot.ValidFrom.UTC(), NotAfter: p.slot.ValidUntil.UTC()}
	}
	if !r.NextPublishedAt.IsZero() {
		t := r.NextPublishedAt.UTC()
		m.PublishedAt = &t
	}
	for _, k := range r.Retired {
		der, err := x509.MarshalPKIXPublicKey(k.Public)
		if err != nil {
			return nil, fmt.Errorf("encoding retired JWT key %s: %w", k.KeyID, err)
		}
		m.Retired = append(m.Retired, retiredKeyJSON{PublicKey: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})), Until: k.Until.UTC()})
	}
	return m, nil
}

// decodeJWT reads the JWT rotation from data and its meta. Every error
// wraps ErrCorrupt and names the key.
func decodeJWT(data map[string][]byte, m *jwtMeta) (Rotation, error) {
	var r Rotation
	if m == nil {
		m = &jwtMeta{}
	}
	for _, p := range []struct {
		key  string
		slot **Slot
		v    *validityJSON
	}{{KeyJWT, &r.Current, m.Current}, {KeyNextJWT, &r.Next, m.Next}} {
		raw, ok := data[p.key]
		if !ok && p.v == nil {
			continue
		}
		if !ok || p.v == nil {
			return Rotation{}, fmt.Errorf("%w: %s and its validity in %s must be present together", ErrCorrupt, p.key, KeyMeta)
		}
		key, err := pki.ParsePrivateKeyPEM(raw)
		if err != nil {
			return Rotation{}, fmt.Errorf("%w: %s: %w", ErrCorrupt, p.key, err)
		}
		slot, err := jwtSlot(key, p.v.NotBefore, p.v.NotAfter)
		if err != nil {
			return Rotation{}, fmt.Errorf("%w: %s: %w", ErrCorrupt, p.key, err)
		}
		*p.slot = slot
	}
	if m.PublishedAt != nil {
		r.NextPublishedAt = *m.PublishedAt
	}
	for i, k := range m.Retired {
		block, _ := pem.Decode([]byte(k.PublicKey))
		if block == nil || block.Type != "PUBLIC KEY" {
			return Rotation{}, fmt.Errorf("%w: %s: jwt.retired[%d].publicKey: not a PUBLIC KEY PEM block", ErrCorrupt, KeyMeta, i)
		}
		pub, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return Rotation{}, fmt.Errorf("%w: %s: jwt.retired[%d].publicKey: %w", ErrCorrupt, KeyMeta, i, err)
		}
		kid, err := jwtsvid.KeyID(pub)
		if err != nil {
			return Rotation{}, fmt.Errorf("%w: %s: jwt.retired[%d].publicKey: %w", ErrCorrupt, KeyMeta, i, err)
		}
		r.Retired = append(r.Retired, Retired{KeyID: kid, Public: pub, Until: k.Until})
	}
	return r, nil
}

// JWTSigner is the key that signs JWT-SVIDs now.
type JWTSigner struct {
	KeyID string
	Key   crypto.Signer
}

// jwtSigner returns the current JWT key of s.
func (s *State) jwtSigner() (*JWTSigner, error) {
	if s.JWT.Current == nil {
		return nil, errors.New("no JWT signing key yet")
	}
	return &JWTSigner{KeyID: s.JWT.Current.KeyID, Key: s.JWT.Current.Key}, nil
}

// jwtKIDs are the kids of keys, sorted, for the bundle version.
func jwtKIDs(keys map[string]crypto.PublicKey) []string {
	return slices.Sorted(maps.Keys(keys))
}
