// Package authority holds the CA's own keys: the self-signed or upstream
// roots and the intermediate slots (current and next) that sign leaves. It
// decides when to rotate them (a pure plan), performs the rotation, and keeps
// the state in a Store: one Kubernetes Secret, or a directory on a plain host.
package authority

import (
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// Keys of the state data, the same in a Secret and in the state file.
const (
	KeyRoot                = "root.crt"
	KeyRootKey             = "root.key"
	KeyNextRoot            = "root-next.crt"
	KeyNextRootKey         = "root-next.key"
	KeyUpstreamRoots       = "upstream-roots.crt"
	KeyIntermediate        = "intermediate.crt"
	KeyIntermediateKey     = "intermediate.key"
	KeyNextIntermediate    = "intermediate-next.crt"
	KeyNextIntermediateKey = "intermediate-next.key"
	KeyMeta                = "meta.json"
)

// ErrCorrupt is wrapped by every error about state that cannot be decoded.
var ErrCorrupt = errors.New("CA state is corrupt")

// Slot is one key pair of the authority: a certificate (with the chain above
// it, not including a root) and its private key.
type Slot struct {
	Chain []*x509.Certificate // Chain[0] is the slot's own certificate
	Key   crypto.Signer
}

// Cert is the slot's own certificate.
func (s *Slot) Cert() *x509.Certificate { return s.Chain[0] }

// RetiredRoot is a root that no longer signs but stays in the trust bundle
// until the last certificate under it has expired.
type RetiredRoot struct {
	Cert  *x509.Certificate
	Until time.Time
}

// State is the whole CA state. Root and NextRoot are nil with an upstream
// authority, whose roots are UpstreamRoots instead.
type State struct {
	Root             *Slot
	NextRoot         *Slot
	UpstreamRoots    []*x509.Certificate
	Intermediate     *Slot
	NextIntermediate *Slot
	Retired          []RetiredRoot
	// NextRootPublishedAt is when NextRoot first entered the trust bundle.
	NextRootPublishedAt time.Time
	// Generation counts the rotations, for logs and status.
	Generation int64
	// RootRotationRequested asks the leader to rotate the root now, without
	// waiting for the root's rotation point (ca rotate-root).
	RootRotationRequested bool
}

type meta struct {
	Generation          int64         `json:"generation"`
	RootRotation        bool          `json:"rootRotationRequested,omitempty"`
	NextRootPublishedAt *time.Time    `json:"nextRootPublishedAt,omitempty"`
	Retired             []retiredJSON `json:"retiredRoots,omitempty"`
}

type retiredJSON struct {
	Cert  string    `json:"cert"`
	Until time.Time `json:"until"`
}

// Roots returns the roots that sign now: the local root or the upstream's.
func (s *State) Roots() []*x509.Certificate {
	if s.Root != nil {
		return []*x509.Certificate{s.Root.Cert()}
	}
	return s.UpstreamRoots
}

// EachSlot calls f for every certificate of the state with its role ("root"
// or "intermediate") and slot ("current", "next", "retired"), in that
// order: what status output and expiry metrics list.
func (s *State) EachSlot(f func(role, slot string, c *x509.Certificate)) {
	for _, r := range s.Roots() {
		f("root", "current", r)
	}
	if s.NextRoot != nil {
		f("root", "next", s.NextRoot.Cert())
	}
	for _, r := range s.Retired {
		f("root", "retired", r.Cert)
	}
	f("intermediate", "current", s.Intermediate.Cert())
	if s.NextIntermediate != nil {
		f("intermediate", "next", s.NextIntermediate.Cert())
	}
}

// Bundle returns every root relying parties must trust now: the signing
// roots, the next root (published ahead of its activation) and retired roots
// whose certificates may still be in use.
func (s *State) Bundle(now time.Time) []*x509.Certificate {
	out := slices.Clone(s.Roots())
	if s.NextRoot != nil {
		out = append(out, s.NextRoot.Cert())
	}
	for _, r := range s.Retired {
		if now.Before(r.Until) {
			out = append(out, r.Cert)
		}
	}
	return dedupe(out)
}

// SigningAuthority returns the pki.Authority of the current intermediate.
func (s *State) SigningAuthority() (pki.Authority, error) {
	if s.Intermediate == nil {
		return pki.Authority{}, fmt.Errorf("%w: no current intermediate", ErrCorrupt)
	}
	return pki.Authority{Cert: s.Intermediate.Cert(), Key: s.Intermediate.Key, Chain: s.Intermediate.Chain[1:]}, nil
}

// Encode returns the state as data for a Store.
func (s *State) Encode() (map[string][]byte, error) {
	data := map[string][]byte{}
	put := func(certKey, keyKey string, slot *Slot) error {
		if slot == nil {
			return nil
		}
		keyPEM, err := pki.MarshalPrivateKeyPEM(slot.Key)
		if err != nil {
			return fmt.Errorf("encoding %s: %w", keyKey, err)
		}
		data[certKey] = pki.EncodeCertificates(slot.Chain...)
		data[keyKey] = keyPEM
		return nil
	}
	for _, p := range []struct {
		c, k string
		s    *Slot
	}{
		{KeyRoot, KeyRootKey, s.Root},
		{KeyNextRoot, KeyNextRootKey, s.NextRoot},
		{KeyIntermediate, KeyIntermediateKey, s.Intermediate},
		{KeyNextIntermediate, KeyNextIntermediateKey, s.NextIntermediate},
	} {
		if err := put(p.c, p.k, p.s); err != nil {
			return nil, err
		}
	}
	if len(s.UpstreamRoots) > 0 {
		data[KeyUpstreamRoots] = pki.EncodeCertificates(s.UpstreamRoots...)
	}
	m := meta{Generation: s.Generation, RootRotation: s.RootRotationRequested}
	if !s.NextRootPublishedAt.IsZero() {
		t := s.NextRootPublishedAt.UTC()
		m.NextRootPublishedAt = &t
	}
	for _, r := range s.Retired {
		m.Retired = append(m.Retired, retiredJSON{Cert: string(pki.EncodeCertificates(r.Cert)), Until: r.Until.UTC()})
	}
	mj, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encoding %s: %w", KeyMeta, err)
	}
	data[KeyMeta] = mj
	return data, nil
}

// Decode parses state data. Every error wraps ErrCorrupt and names the key
// that is wrong; none quotes key material.
func Decode(data map[string][]byte) (*State, error) {
	s := &State{}
	var err error
	if s.Root, err = decodeSlot(data, KeyRoot, KeyRootKey, true); err != nil {
		return nil, err
	}
	if s.NextRoot, err = decodeSlot(data, KeyNextRoot, KeyNextRootKey, true); err != nil {
		return nil, err
	}
	if s.Intermediate, err = decodeSlot(data, KeyIntermediate, KeyIntermediateKey, false); err != nil {
		return nil, err
	}
	if s.NextIntermediate, err = decodeSlot(data, KeyNextIntermediate, KeyNextIntermediateKey, false); err != nil {
		return nil, err
	}
	if raw, ok := data[KeyUpstreamRoots]; ok {
		if s.UpstreamRoots, err = pki.DecodeCertificates(raw, pki.PEMLimits{}); err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrCorrupt, KeyUpstreamRoots, err)
		}
	}
	if s.Intermediate == nil {
		return nil, fmt.Errorf("%w: %s is missing", ErrCorrupt, KeyIntermediate)
	}
	if s.Root == nil && len(s.UpstreamRoots) == 0 {
		return nil, fmt.Errorf("%w: neither %s nor %s is present", ErrCorrupt, KeyRoot, KeyUpstreamRoots)
	}
	if raw, ok := data[KeyMeta]; ok {
		var m meta
		if err := json.Unmarshal(raw, &m); err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrCorrupt, KeyMeta, err)
		}
		s.Generation = m.Generation
		s.RootRotationRequested = m.RootRotation
		if m.NextRootPublishedAt != nil {
			s.NextRootPublishedAt = *m.NextRootPublishedAt
		}
		for i, r := range m.Retired {
			certs, err := pki.DecodeCertificates([]byte(r.Cert), pki.PEMLimits{MaxBlocks: 1})
			if err != nil {
				return nil, fmt.Errorf("%w: %s: retiredRoots[%d].cert: %w", ErrCorrupt, KeyMeta, i, err)
			}
			s.Retired = append(s.Retired, RetiredRoot{Cert: certs[0], Until: r.Until})
		}
	}
	return s, nil
}

func decodeSlot(data map[string][]byte, certKey, keyKey string, selfSigned bool) (*Slot, error) {
	rawCert, hasCert := data[certKey]
	rawKey, hasKey := data[keyKey]
	if !hasCert && !hasKey {
		return nil, nil
	}
	if !hasCert || !hasKey {
		return nil, fmt.Errorf("%w: %s and %s must be present together", ErrCorrupt, certKey, keyKey)
	}
	chain, err := pki.DecodeCertificates(rawCert, pki.PEMLimits{})
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrCorrupt, certKey, err)
	}
	key, err := pki.ParsePrivateKeyPEM(rawKey)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrCorrupt, keyKey, err)
	}
	slot := &Slot{Chain: chain, Key: key}
	if err := checkSlot(slot, selfSigned); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrCorrupt, certKey, err)
	}
	return slot, nil
}

func checkSlot(s *Slot, selfSigned bool) error {
	c := s.Cert()
	if !c.IsCA || c.KeyUsage&x509.KeyUsageCertSign == 0 {
		return errors.New("certificate is not a CA with keyCertSign")
	}
	if !pki.KeyMatches(c, s.Key) {
		return errors.New("private key does not match the certificate")
	}
	if selfSigned {
		if err := c.CheckSignatureFrom(c); err != nil {
			return fmt.Errorf("root is not self-signed: %w", err)
		}
	}
	for i := 0; i+1 < len(s.Chain); i++ {
		if err := s.Chain[i].CheckSignatureFrom(s.Chain[i+1]); err != nil {
			return fmt.Errorf("chain[%d] is not signed by chain[%d]: %w", i, i+1, err)
		}
	}
	return nil
}

func dedupe(certs []*x509.Certificate) []*x509.Certificate {
	out := certs[:0:0]
	for _, c := range certs {
		if !slices.ContainsFunc(out, func(o *x509.Certificate) bool { return o.Equal(c) }) {
			out = append(out, c)
		}
	}
	return out
}
