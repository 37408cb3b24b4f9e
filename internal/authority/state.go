// Package authority holds the CA's own keys: the self-signed or upstream
// roots and the intermediate slots (current and next) that sign leaves. It
// decides when to rotate them (a pure plan), performs the rotation, and keeps
// the state in a Store: one Kubernetes Secret, or a directory on a plain host.
package authority

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
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

// ErrFormatTooNew means the state was written by a newer CA, in a format
// this one does not know: an older CA must not rewrite it (a rollback after
// an upgrade that changed the format; docs/upgrade.md).
var ErrFormatTooNew = errors.New("CA state is in a newer format than this CA knows")

// StateFormat is the version of the state layout this CA writes (the
// "format" field of meta.json). Format 0 is the unversioned layout of the
// releases before it: the same keys, without the field.
const StateFormat = 1

// migrations[v] turns state data of format v into format v+1, in place.
// Adding a format is adding one function here, a test with data of the
// previous format (testdata/legacy), and a line in docs/upgrade.md.
var migrations = [StateFormat]func(data map[string][]byte) error{
	// 0 -> 1: the layout is unchanged; Encode stamps the format.
	func(map[string][]byte) error { return nil },
}

// migrate brings data of an earlier format to StateFormat, and refuses data
// of a later one.
func migrate(data map[string][]byte) error {
	format := 0
	if raw, ok := data[KeyMeta]; ok {
		var m struct {
			Format *int `json:"format"`
		}
		if err := json.Unmarshal(raw, &m); err != nil {
			return fmt.Errorf("%w: %s: %w", ErrCorrupt, KeyMeta, err)
		}
		if m.Format != nil {
			format = *m.Format
		}
	}
	switch {
	case format < 0:
		return fmt.Errorf("%w: %s: format %d", ErrCorrupt, KeyMeta, format)
	case format > StateFormatKeyURIs:
		return fmt.Errorf("%w: format %d, this CA writes %d: run the mayfly version that wrote it (or a newer one), or restore a backup taken before the upgrade (docs/upgrade.md)",
			ErrFormatTooNew, format, StateFormatKeyURIs)
	}
	for v := format; v < StateFormat; v++ {
		if err := migrations[v](data); err != nil {
			return fmt.Errorf("migrating CA state from format %d to %d: %w", v, v+1, err)
		}
	}
	return nil
}

// State is the whole CA state: one Rotation per kind of key.
type State struct {
	// Root is the self-signed root: its next root is published in the trust
	// bundle ahead of activation (NextPublishedAt), and a retired root stays
	// in the bundle until the last intermediate under it has expired.
	// Root.Current and Root.Next are nil with an upstream authority, whose
	// roots are UpstreamRoots instead.
	Root          Rotation
	UpstreamRoots []*x509.Certificate
	// Intermediate signs the leaves; it is never published (leaves carry
	// it in their chain) and never retired.
	Intermediate Rotation
	// JWT is the key that signs JWT-SVIDs: published (JWT bundle, JWKS)
	// ahead of use like a root, retired keys published until their last
	// token expired. Current is nil in a state from before JWT-SVIDs until
	// the rotation loop mints one.
	JWT Rotation
	// Generation counts the rotations, for logs and status.
	Generation int64
	// Taints are the keys marked compromised (ca taint), until they expire.
	Taints []Taint
	// KeyDeletions are keys of the KeyStore that left the state, deleted
	// from it once their grace has passed.
	KeyDeletions []KeyDeletion
}

// slotKeys are the data keys of a rotation's current and next slot.
type slotKeys struct {
	cert, key, nextCert, nextKey string
	selfSigned                   bool
}

var (
	rootKeys         = slotKeys{KeyRoot, KeyRootKey, KeyNextRoot, KeyNextRootKey, true}
	intermediateKeys = slotKeys{KeyIntermediate, KeyIntermediateKey, KeyNextIntermediate, KeyNextIntermediateKey, false}
)

type meta struct {
	// Format is StateFormat when written; absent in format 0.
	Format              int        `json:"format"`
	Generation          int64      `json:"generation"`
	RootRotation        bool       `json:"rootRotationRequested,omitempty"`
	RootActivateNow     bool       `json:"rootActivateNow,omitempty"`
	NextRootPublishedAt *time.Time `json:"nextRootPublishedAt,omitempty"`
	// NextIntermediatePublishedAt is set while the next intermediate
	// chains to an upstream root new to the bundle and waits for the
	// consumers to hold it.
	NextIntermediatePublishedAt *time.Time    `json:"nextIntermediatePublishedAt,omitempty"`
	Retired                     []retiredJSON `json:"retiredRoots,omitempty"`
	// Taints was added with ca taint; states without it have none.
	Taints []taintJSON `json:"taints,omitempty"`
	// JWT was added with JWT-SVIDs; states without it have no JWT key.
	JWT *jwtMeta `json:"jwt,omitempty"`
	// KeyDeletions was added with key stores (format 2).
	KeyDeletions []keyDeletionJSON `json:"keyDeletions,omitempty"`
}

type retiredJSON struct {
	Cert  string    `json:"cert"`
	Until time.Time `json:"until"`
}

// Roots returns the roots that sign now: the local root or the upstream's.
func (s *State) Roots() []*x509.Certificate {
	if s.Root.Current != nil {
		return []*x509.Certificate{s.Root.Current.Cert()}
	}
	return s.UpstreamRoots
}

// EachSlot calls f for every certificate of the state with its role ("root"
// or "intermediate") and slot ("current", "next", "retired"), in that
// order: what status output and expiry metrics list.
func (s *State) EachSlot(f func(role, slot string, c *x509.Certificate)) {
	if s.Root.Current == nil {
		for _, r := range s.UpstreamRoots {
			f("root", "current", r)
		}
	}
	s.Root.each(func(slot string, c *x509.Certificate) { f("root", slot, c) })
	s.Intermediate.each(func(slot string, c *x509.Certificate) { f("intermediate", slot, c) })
}

// Bundle returns every root relying parties must trust now: the signing
// roots, the next root (published ahead of its activation) and retired roots
// whose certificates may still be in use.
func (s *State) Bundle(now time.Time) []*x509.Certificate {
	out := slices.Clone(s.Roots())
	if s.Root.Next != nil {
		out = append(out, s.Root.Next.Cert())
	}
	for _, r := range s.Root.Retired {
		if now.Before(r.Until) {
			out = append(out, r.Cert)
		}
	}
	return dedupe(out)
}

// SigningAuthority returns the pki.Authority of the current intermediate.
func (s *State) SigningAuthority() (pki.Authority, error) {
	cur := s.Intermediate.Current
	if cur == nil {
		return pki.Authority{}, fmt.Errorf("%w: no current intermediate", ErrCorrupt)
	}
	return pki.Authority{Cert: cur.Cert(), Key: cur.Key, Chain: cur.Chain[1:]}, nil
}

// Encode returns the state as data for a Store.
func (s *State) Encode() (map[string][]byte, error) {
	data := map[string][]byte{}
	put := func(certKey, keyKey string, slot *Slot) error {
		if slot == nil {
			return nil
		}
		data[certKey] = pki.EncodeCertificates(slot.Chain...)
		if slot.KeyURI != "" {
			data[keyKey] = []byte(slot.KeyURI)
			return nil
		}
		keyPEM, err := pki.MarshalPrivateKeyPEM(slot.Key)
		if err != nil {
			return fmt.Errorf("encoding %s: %w", keyKey, err)
		}
		data[keyKey] = keyPEM
		return nil
	}
	if in := s.Intermediate; len(in.Retired) > 0 || in.Requested || in.ActivateNow || (in.Next == nil && !in.NextPublishedAt.IsZero()) {
		// The format has no place for these: fail rather than drop them.
		return nil, errors.New("encoding state: intermediates are never retired or rotated on request, and only a next one is published")
	}
	for _, p := range []struct {
		keys slotKeys
		r    Rotation
	}{{rootKeys, s.Root}, {intermediateKeys, s.Intermediate}} {
		if err := put(p.keys.cert, p.keys.key, p.r.Current); err != nil {
			return nil, err
		}
		if err := put(p.keys.nextCert, p.keys.nextKey, p.r.Next); err != nil {
			return nil, err
		}
	}
	if len(s.UpstreamRoots) > 0 {
		data[KeyUpstreamRoots] = pki.EncodeCertificates(s.UpstreamRoots...)
	}
	var err error
	format := StateFormat
	if len(s.keyURIs()) > 0 || len(s.KeyDeletions) > 0 {
		format = StateFormatKeyURIs
	}
	m := meta{Format: format, Generation: s.Generation, RootRotation: s.Root.Requested, RootActivateNow: s.Root.ActivateNow}
	if !s.Root.NextPublishedAt.IsZero() {
		t := s.Root.NextPublishedAt.UTC()
		m.NextRootPublishedAt = &t
	}
	if !s.Intermediate.NextPublishedAt.IsZero() {
		t := s.Intermediate.NextPublishedAt.UTC()
		m.NextIntermediatePublishedAt = &t
	}
	for _, r := range s.Root.Retired {
		m.Retired = append(m.Retired, retiredJSON{Cert: string(pki.EncodeCertificates(r.Cert)), Until: r.Until.UTC()})
	}
	for _, t := range s.Taints {
		m.Taints = append(m.Taints, t.toJSON())
	}
	for _, d := range s.KeyDeletions {
		m.KeyDeletions = append(m.KeyDeletions, keyDeletionJSON{URI: d.URI, After: d.After.UTC()})
	}
	if m.JWT, err = encodeJWT(s.JWT, data); err != nil {
		return nil, err
	}
	mj, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encoding %s: %w", KeyMeta, err)
	}
	data[KeyMeta] = mj
	return data, nil
}

// Decode parses state data. Every error wraps ErrCorrupt and names the key
// that is wrong, or wraps ErrFormatTooNew; none quotes key material.
//
// State of an earlier format is migrated (a copy: data stays as it is);
// state of a later format fails with ErrFormatTooNew.
func Decode(data map[string][]byte) (*State, error) {
	data = maps.Clone(data)
	if err := migrate(data); err != nil {
		return nil, err
	}
	s := &State{}
	var err error
	if s.Root, err = decodeRotation(data, rootKeys); err != nil {
		return nil, err
	}
	if s.Intermediate, err = decodeRotation(data, intermediateKeys); err != nil {
		return nil, err
	}
	if raw, ok := data[KeyUpstreamRoots]; ok {
		if s.UpstreamRoots, err = pki.DecodeCertificates(raw, pki.PEMLimits{}); err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrCorrupt, KeyUpstreamRoots, err)
		}
	}
	if s.Intermediate.Current == nil {
		return nil, fmt.Errorf("%w: %s is missing", ErrCorrupt, KeyIntermediate)
	}
	if s.Root.Current == nil && len(s.UpstreamRoots) == 0 {
		return nil, fmt.Errorf("%w: neither %s nor %s is present", ErrCorrupt, KeyRoot, KeyUpstreamRoots)
	}
	var m meta
	if raw, ok := data[KeyMeta]; ok {
		if err := json.Unmarshal(raw, &m); err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrCorrupt, KeyMeta, err)
		}
		s.Generation = m.Generation
		s.Root.Requested = m.RootRotation
		s.Root.ActivateNow = m.RootActivateNow
		if m.NextRootPublishedAt != nil {
			s.Root.NextPublishedAt = *m.NextRootPublishedAt
		}
		if m.NextIntermediatePublishedAt != nil && s.Intermediate.Next != nil {
			s.Intermediate.NextPublishedAt = *m.NextIntermediatePublishedAt
		}
		for i, r := range m.Retired {
			certs, err := pki.DecodeCertificates([]byte(r.Cert), pki.PEMLimits{MaxBlocks: 1})
			if err != nil {
				return nil, fmt.Errorf("%w: %s: retiredRoots[%d].cert: %w", ErrCorrupt, KeyMeta, i, err)
			}
			s.Root.Retired = append(s.Root.Retired, Retired{Cert: certs[0], Until: r.Until})
		}
		for i, tj := range m.Taints {
			t, err := tj.decode(i)
			if err != nil {
				return nil, err
			}
			s.Taints = append(s.Taints, t)
		}
		for i, d := range m.KeyDeletions {
			if _, err := checkKeyURI([]byte(d.URI)); err != nil {
				return nil, fmt.Errorf("%w: %s: keyDeletions[%d].uri: %w", ErrCorrupt, KeyMeta, i, err)
			}
			s.KeyDeletions = append(s.KeyDeletions, KeyDeletion(d))
		}
	}
	if s.JWT, err = decodeJWT(data, m.JWT); err != nil {
		return nil, err
	}
	return s, nil
}

func decodeRotation(data map[string][]byte, k slotKeys) (Rotation, error) {
	cur, err := decodeSlot(data, k.cert, k.key, k.selfSigned)
	if err != nil {
		return Rotation{}, err
	}
	next, err := decodeSlot(data, k.nextCert, k.nextKey, k.selfSigned)
	if err != nil {
		return Rotation{}, err
	}
	return Rotation{Current: cur, Next: next}, nil
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
	slot := &Slot{Chain: chain}
	if isKeyURI(rawKey) {
		// The key is in a KeyStore: State.LoadKeys fetches and checks it.
		if slot.KeyURI, err = checkKeyURI(rawKey); err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrCorrupt, keyKey, err)
		}
	} else if slot.Key, err = pki.ParsePrivateKeyPEM(rawKey); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrCorrupt, keyKey, err)
	}
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
	if s.Key != nil && !pki.KeyMatches(c, s.Key) {
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
