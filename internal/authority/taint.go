package authority

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Roles of an authority key, as ca taint and ca revoke name them.
const (
	RoleRoot         = "root"
	RoleIntermediate = "intermediate"
)

// Errors of Taint and Revoke that callers branch on.
var (
	// ErrNoSuchAuthority: no key of the role (and serial) is in the state.
	ErrNoSuchAuthority = errors.New("no such authority")
	// ErrNotTainted: revoke was asked for an authority that is not tainted.
	ErrNotTainted = errors.New("authority is not tainted")
	// ErrStillSigning: revoke was asked for a tainted authority that still
	// signs (a tainted root whose successor waits for the agents).
	ErrStillSigning = errors.New("authority still signs")
)

// Taint marks one authority key as compromised (ca taint): the CA moves
// issuance off it at once, the trust bundle announces it so that every
// holder of a credential chaining to it re-issues, and ca revoke may then
// drop it from the bundle. A taint is forgotten once the key expired.
type Taint struct {
	Role string
	// SubjectKeyID identifies the key; agents match it against the
	// SubjectKeyId and AuthorityKeyId of the certificates of their chains.
	SubjectKeyID []byte
	Serial       string
	NotAfter     time.Time
	At           time.Time
	// Force activates a tainted root's successor without waiting for the
	// agents to hold it.
	Force bool
	// Revoked is set by ca revoke: a revoked root left the bundle.
	Revoked bool
}

type taintJSON struct {
	Role         string    `json:"role"`
	SubjectKeyID string    `json:"subjectKeyId"`
	Serial       string    `json:"serial"`
	NotAfter     time.Time `json:"notAfter"`
	At           time.Time `json:"taintedAt"`
	Force        bool      `json:"force,omitempty"`
	Revoked      bool      `json:"revoked,omitempty"`
}

func (t Taint) toJSON() taintJSON {
	return taintJSON{Role: t.Role, SubjectKeyID: hex.EncodeToString(t.SubjectKeyID), Serial: t.Serial, NotAfter: t.NotAfter.UTC(), At: t.At.UTC(), Force: t.Force, Revoked: t.Revoked}
}

func (j taintJSON) decode(i int) (Taint, error) {
	ski, err := hex.DecodeString(j.SubjectKeyID)
	if err != nil || len(ski) == 0 {
		return Taint{}, fmt.Errorf("%w: %s: taints[%d].subjectKeyId: must be non-empty hex", ErrCorrupt, KeyMeta, i)
	}
	if j.Role != RoleRoot && j.Role != RoleIntermediate {
		return Taint{}, fmt.Errorf("%w: %s: taints[%d].role: must be root or intermediate, got %q", ErrCorrupt, KeyMeta, i, j.Role)
	}
	return Taint{Role: j.Role, SubjectKeyID: ski, Serial: j.Serial, NotAfter: j.NotAfter, At: j.At, Force: j.Force, Revoked: j.Revoked}, nil
}

// Tainted reports whether c's key is tainted.
func (s *State) Tainted(c *x509.Certificate) bool {
	return s.taintOf(c) != nil
}

func (s *State) taintOf(c *x509.Certificate) *Taint {
	if c == nil || len(c.SubjectKeyId) == 0 {
		return nil
	}
	for i := range s.Taints {
		if bytes.Equal(s.Taints[i].SubjectKeyID, c.SubjectKeyId) {
			return &s.Taints[i]
		}
	}
	return nil
}

// ActiveTaints returns the taints the CA announces in the trust bundle:
// those of keys that no longer sign (issuance moved off them), so that a
// credential re-issued on the announcement no longer chains to them.
func (s *State) ActiveTaints() []Taint {
	var out []Taint
	for _, t := range s.Taints {
		if s.signsWith(t.SubjectKeyID) {
			continue
		}
		out = append(out, t)
	}
	return out
}

// SigningTainted reports whether a tainted key still signs (a tainted root
// whose successor waits for the agents): what is issued meanwhile chains to
// it and must be re-issued once the CA moved off it.
func (s *State) SigningTainted() bool {
	for _, t := range s.Taints {
		if s.signsWith(t.SubjectKeyID) {
			return true
		}
	}
	return false
}

// signsWith reports whether the key with ski signs now: the current
// intermediate or the root above it.
func (s *State) signsWith(ski []byte) bool {
	if c := s.Intermediate.Current; c != nil {
		for _, cert := range c.Chain {
			if bytes.Equal(cert.SubjectKeyId, ski) || bytes.Equal(cert.AuthorityKeyId, ski) {
				return true
			}
		}
	}
	return false
}

// taintsDue reports whether a taint outlived its key, and else the
// earliest NotAfter of a taint.
func (s *State) taintsDue(now time.Time) (due bool, next time.Time) {
	return expiryDue(s.Taints, taintEnd, now)
}

func (s *State) withoutExpiredTaints(now time.Time) []Taint {
	return unexpired(s.Taints, taintEnd, now)
}

func taintEnd(t Taint) time.Time { return t.NotAfter }

// findAuthority returns the certificate of role with serial (hex, any
// case), or the current one when serial is empty.
func (s *State) findAuthority(role, serial string) (*x509.Certificate, error) {
	var found *x509.Certificate
	var cands []string
	match := func(c *x509.Certificate) {
		cands = append(cands, c.SerialNumber.Text(16))
		if found == nil && c.SerialNumber.Text(16) == normSerial(serial) {
			found = c
		}
	}
	switch role {
	case RoleRoot:
		if s.Root.Current == nil {
			return nil, errors.New("the roots belong to the upstream CA: taint and rotate them there (ca taint --authority intermediate moves mayfly off its intermediate)")
		}
		if serial == "" {
			return s.Root.Current.Cert(), nil
		}
		s.Root.each(func(_ string, c *x509.Certificate) { match(c) })
	case RoleIntermediate:
		if serial == "" {
			return s.Intermediate.Current.Cert(), nil
		}
		s.Intermediate.each(func(_ string, c *x509.Certificate) { match(c) })
	default:
		return nil, fmt.Errorf("--authority: must be root or intermediate, got %q", role)
	}
	if found == nil {
		return nil, fmt.Errorf("%w: no %s with serial %q (have %s)", ErrNoSuchAuthority, role, serial, strings.Join(cands, ", "))
	}
	return found, nil
}

// normSerial is a serial in the form big.Int.Text(16) prints: lower case,
// no 0x, no leading zeros.
func normSerial(s string) string {
	s = strings.TrimLeft(strings.TrimPrefix(strings.ToLower(strings.TrimSpace(s)), "0x"), "0")
	if s == "" {
		return "0"
	}
	return s
}

// TaintRequest names the authority ca taint marks.
type TaintRequest struct {
	Role string
	// Serial (hex) picks a key; empty means the current one.
	Serial string
	// Force activates a tainted root's successor without waiting for the
	// agents to hold it in their bundle.
	Force bool
}

// TaintAuthority marks an authority key of the stored state as tainted; the
// rotation loop of the leading replica then moves issuance off it. For the
// current root it also requests a root rotation. It works on the store
// directly, like RequestRootRotation, and returns the taint recorded.
func TaintAuthority(ctx context.Context, store Store, req TaintRequest, now time.Time) (Taint, error) {
	var out Taint
	err := updateState(ctx, store, func(s *State) error {
		c, err := s.findAuthority(req.Role, req.Serial)
		if err != nil {
			return err
		}
		if len(c.SubjectKeyId) == 0 {
			return fmt.Errorf("the %s %s has no SubjectKeyId: agents could not match it", req.Role, c.SerialNumber.Text(16))
		}
		if t := s.taintOf(c); t != nil {
			t.Force = t.Force || req.Force
			out = *t
		} else {
			out = Taint{Role: req.Role, SubjectKeyID: c.SubjectKeyId, Serial: c.SerialNumber.Text(16), NotAfter: c.NotAfter, At: now, Force: req.Force}
			s.Taints = append(s.Taints, out)
		}
		if req.Role == RoleRoot && s.Root.Current != nil && s.Root.Current.Cert().Equal(c) {
			s.Root.Requested = true
		}
		// A tainted successor never signed: drop it, the plan prepares
		// another (and a dropped next root leaves the bundle).
		for _, r := range []*Rotation{&s.Root, &s.Intermediate} {
			if r.Next != nil && r.Next.Cert().Equal(c) {
				r.Next, r.NextPublishedAt = nil, time.Time{}
			}
		}
		return nil
	})
	return out, err
}

// RevokeRequest names the authority ca revoke drops.
type RevokeRequest struct {
	Role string
	// Serial (hex) picks a tainted key; empty means the one tainted key of
	// Role that no longer signs and is not revoked yet.
	Serial string
	// Check, when set, may refuse the revocation of the taint found (live
	// leaves still chain to it).
	Check func(Taint) error
}

// RevokeAuthority drops a tainted authority from the trust bundle (a root;
// an intermediate is never in the bundle, so revoking it only records it).
// It refuses an authority that is not tainted or still signs.
func RevokeAuthority(ctx context.Context, store Store, req RevokeRequest) (Taint, error) {
	role, serial := req.Role, req.Serial
	if role != RoleRoot && role != RoleIntermediate {
		return Taint{}, fmt.Errorf("--authority: must be root or intermediate, got %q", role)
	}
	var out Taint
	err := updateState(ctx, store, func(s *State) error {
		var t *Taint
		for i := range s.Taints {
			c := &s.Taints[i]
			if c.Role != role || s.signsWith(c.SubjectKeyID) && serial == "" {
				continue
			}
			if serial == "" && !c.Revoked || serial != "" && normSerial(c.Serial) == normSerial(serial) {
				t = c
			}
		}
		if t == nil {
			if serial == "" {
				return fmt.Errorf("%w: no tainted %s that no longer signs; taint it first with ca taint --authority %s", ErrNotTainted, role, role)
			}
			if _, err := s.findAuthority(role, serial); err != nil {
				return err
			}
			return fmt.Errorf("%w: the %s %s; taint it first with ca taint --authority %s --serial %s", ErrNotTainted, role, serial, role, serial)
		}
		if s.signsWith(t.SubjectKeyID) {
			return fmt.Errorf("%w: the %s %s still signs (its successor waits for the agents to hold it; see ca status, or taint again with --force)", ErrStillSigning, role, t.Serial)
		}
		if req.Check != nil {
			if err := req.Check(*t); err != nil {
				return err
			}
		}
		t.Revoked = true
		out = *t
		if role == RoleRoot {
			var kept []Retired
			for _, r := range s.Root.Retired {
				if !bytes.Equal(r.Cert.SubjectKeyId, t.SubjectKeyID) {
					kept = append(kept, r)
				}
			}
			s.Root.Retired = kept
			if s.Root.Next != nil && bytes.Equal(s.Root.Next.Cert().SubjectKeyId, t.SubjectKeyID) {
				s.Root.Next, s.Root.NextPublishedAt = nil, time.Time{}
			}
		}
		return nil
	})
	return out, err
}

// errUnchanged tells updateState that f found nothing to change: nothing is
// saved.
var errUnchanged = errors.New("state unchanged")

// updateState applies f to the stored state with compare-and-swap, retrying
// on a conflicting save. When f returns errUnchanged nothing is saved.
func updateState(ctx context.Context, store Store, f func(*State) error) error {
	for range 5 {
		snap, err := store.Load(ctx)
		if err != nil {
			return err
		}
		s, err := Decode(snap.Data)
		if err != nil {
			return err
		}
		if err := f(s); errors.Is(err, errUnchanged) {
			return nil
		} else if err != nil {
			return err
		}
		data, err := s.Encode()
		if err != nil {
			return err
		}
		if _, err := store.Save(ctx, data, snap.Version); errors.Is(err, ErrConflict) {
			continue
		} else if err != nil {
			return err
		}
		return nil
	}
	return fmt.Errorf("%w: gave up after 5 attempts", ErrConflict)
}
