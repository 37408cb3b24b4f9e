package authority

import (
	"crypto"
	"crypto/x509"
	"time"
)

// Slot is one key pair of the authority: a certificate (with the chain above
// it, not including a root) and its private key, or, for a key published
// without a certificate (a JWT signing key), the key with its ID and
// validity.
type Slot struct {
	Chain []*x509.Certificate // Chain[0] is the slot's own certificate
	Key   crypto.Signer
	// KeyURI is where the key is kept when a KeyStore holds it (a PKCS#11
	// URI); the state then stores the URI instead of the key.
	KeyURI string
	// KeyID, ValidFrom and ValidUntil describe a key without certificate
	// (Chain empty); a certificate's key takes them from the certificate.
	KeyID                 string
	ValidFrom, ValidUntil time.Time
}

// Cert is the slot's own certificate; nil for a key without one.
func (s *Slot) Cert() *x509.Certificate {
	if len(s.Chain) == 0 {
		return nil
	}
	return s.Chain[0]
}

// NotBefore is when the slot's key starts to be valid.
func (s *Slot) NotBefore() time.Time {
	if c := s.Cert(); c != nil {
		return c.NotBefore
	}
	return s.ValidFrom
}

// NotAfter is when the slot's key expires.
func (s *Slot) NotAfter() time.Time {
	if c := s.Cert(); c != nil {
		return c.NotAfter
	}
	return s.ValidUntil
}

// Retired is a key that no longer signs but stays trusted until the last
// credential it signed has expired: a certificate, or a key without one
// (KeyID and Public).
type Retired struct {
	Cert   *x509.Certificate
	KeyID  string
	Public crypto.PublicKey
	Until  time.Time
}

// Rotation is one rotating key of the authority (the root, the
// intermediate): the key in use, its prepared successor, and the keys it
// replaced that relying parties must still trust. Every kind of key goes
// through the same steps: prepare the next key (and, for a published kind,
// publish it), activate it once the schedule and the consumers allow, retire
// the old one.
type Rotation struct {
	// Current signs now; nil when the kind is not ours (roots of an
	// upstream authority).
	Current *Slot
	// Next is the prepared successor, or nil.
	Next *Slot
	// NextPublishedAt is when Next was first published to the consumers
	// (published kinds only; zero otherwise).
	NextPublishedAt time.Time
	// Retired keys stay trusted until their Until.
	Retired []Retired
	// Requested asks for a rotation now, without waiting for the
	// rotation points (ca rotate-root).
	Requested bool
	// ActivateNow is the operator's override (ca rotate-root
	// --activate-now): the successor activates at once, without waiting
	// for the consumers' adoption. It implies Requested.
	ActivateNow bool
}

// Schedule says when one kind of key rotates. Policy.RootSchedule and
// Policy.IntermediateSchedule derive it from the Policy.
type Schedule struct {
	// PrepareAt and ActivateAt are fractions of the current key's life.
	PrepareAt, ActivateAt float64
	// MaxPrepareAhead caps how long before its activation point the next
	// key is prepared: preparation starts at the later of the PrepareAt
	// point and (activation point - MaxPrepareAhead). 0 means no cap.
	MaxPrepareAhead time.Duration
	// Published kinds publish the next key before it is used and activate
	// it only once the consumers adopted it (the agents hold the bundle
	// with the next root), AdoptionWait after it was published, or
	// ForceBefore the current key expires, whichever comes first.
	Published    bool
	AdoptionWait time.Duration
	ForceBefore  time.Duration
	// Replaceable kinds mint a new current key at once when theirs expired
	// with no usable successor (the CA was down). A root is not: its
	// successor must be published first.
	Replaceable bool
}

// PreparePoint is when the successor of the current key is due (without a
// requested rotation). Current must not be nil.
func (r *Rotation) PreparePoint(s Schedule) time.Time {
	c := r.Current
	prepare := at(c.NotBefore(), c.NotAfter(), s.PrepareAt)
	if s.MaxPrepareAhead > 0 {
		prepare = maxTime(prepare, r.ActivatePoint(s).Add(-s.MaxPrepareAhead))
	}
	return prepare
}

// ActivatePoint is when the successor takes over, adoption permitting
// (without a requested rotation). Current must not be nil.
func (r *Rotation) ActivatePoint(s Schedule) time.Time {
	c := r.Current
	return at(c.NotBefore(), c.NotAfter(), s.ActivateAt)
}

// points are PreparePoint and ActivatePoint, both moved to now at the
// latest when a rotation was requested.
func (r *Rotation) points(now time.Time, s Schedule) (prepare, activate time.Time) {
	prepare, activate = r.PreparePoint(s), r.ActivatePoint(s)
	if r.Requested || r.ActivateNow {
		prepare, activate = minTime(prepare, now), minTime(activate, now)
	}
	return prepare, activate
}

// NextUsable reports whether a successor exists and has not expired.
func (r *Rotation) NextUsable(now time.Time) bool {
	return r.Next != nil && now.Before(r.Next.NotAfter())
}

// ShouldPrepare reports whether a successor must be prepared at now: the
// preparation point passed and no usable successor exists.
func (r *Rotation) ShouldPrepare(now time.Time, s Schedule) bool {
	if r.Current == nil || r.NextUsable(now) {
		return false
	}
	prepare, _ := r.points(now, s)
	return !now.Before(prepare)
}

// ShouldActivate reports whether the successor must take over at now: the
// activation point passed and, for a published kind, the consumers adopted
// it or the wait for them is over. adopted is asked only then; nil counts
// as adopted.
func (r *Rotation) ShouldActivate(now time.Time, s Schedule, adopted func() bool) bool {
	if r.Current == nil || !r.NextUsable(now) {
		return false
	}
	if _, activate := r.points(now, s); now.Before(activate) {
		return false
	}
	return !s.Published || r.ActivateNow || adopted == nil || adopted() || r.adoptionWaitOver(now, s)
}

// adoptionWaitOver reports whether a published successor activates without
// the consumers' adoption: it waited AdoptionWait, or the current key is
// too close to its end.
func (r *Rotation) adoptionWaitOver(now time.Time, s Schedule) bool {
	return !now.Before(r.NextPublishedAt.Add(s.AdoptionWait)) || !now.Before(r.Current.NotAfter().Add(-s.ForceBefore))
}

// ShouldReplace reports whether the current key expired with no usable
// successor (the CA was down): a new key must sign at once.
func (r *Rotation) ShouldReplace(now time.Time) bool {
	return r.Current != nil && !now.Before(r.Current.NotAfter()) && !r.NextUsable(now)
}

// Action is what a Rotation needs at an instant.
type Action int

// The actions of a Rotation, in the order Decide considers them.
const (
	ActionNone Action = iota
	// ActionReplace: the current key expired with no usable successor.
	ActionReplace
	// ActionActivate: the successor takes over.
	ActionActivate
	// ActionPrepare: a successor is minted (and published).
	ActionPrepare
)

// Decide returns the action due at now and, when none is, the earliest
// time one may become due. adopted is as for ShouldActivate.
func (r *Rotation) Decide(now time.Time, s Schedule, adopted func() bool) (Action, time.Time) {
	if r.Current == nil {
		return ActionNone, farFuture
	}
	prepare, activate := r.points(now, s)
	switch {
	case s.Replaceable && r.ShouldReplace(now):
		return ActionReplace, now
	case r.ShouldActivate(now, s, adopted):
		return ActionActivate, now
	case r.NextUsable(now) && !now.Before(activate):
		// Waiting for the consumers: look again soon, and at the latest
		// when the wait is over (which lies after now, or it would be
		// over).
		return ActionNone, minTime(now.Add(10*time.Second), r.NextPublishedAt.Add(s.AdoptionWait))
	case r.ShouldPrepare(now, s):
		return ActionPrepare, now
	case r.NextUsable(now):
		return ActionNone, activate
	default:
		return ActionNone, prepare
	}
}

// each calls f for every key of r with its slot name, current first.
func (r *Rotation) each(f func(slot string, c *x509.Certificate)) {
	if r.Current != nil && r.Current.Cert() != nil {
		f("current", r.Current.Cert())
	}
	if r.Next != nil && r.Next.Cert() != nil {
		f("next", r.Next.Cert())
	}
	for _, k := range r.Retired {
		if k.Cert != nil {
			f("retired", k.Cert)
		}
	}
}

// prepared returns r with next as its successor, published at now for a
// published kind.
func (r Rotation) prepared(next *Slot, now time.Time, published bool) Rotation {
	r.Next, r.NextPublishedAt = next, time.Time{}
	if published {
		r.NextPublishedAt = now
	}
	return r
}

// activated returns r with the successor in force and the old key retired
// until retireUntil (zero: not retired, it was never published).
func (r Rotation) activated(retireUntil time.Time) Rotation {
	if !retireUntil.IsZero() {
		old := Retired{Cert: r.Current.Cert(), KeyID: r.Current.KeyID, Until: retireUntil}
		if old.Cert == nil {
			old.Public = r.Current.Key.Public()
		}
		r.Retired = append(append([]Retired(nil), r.Retired...), old)
	}
	r.Current, r.Next, r.NextPublishedAt, r.Requested, r.ActivateNow = r.Next, nil, time.Time{}, false, false
	return r
}

// replaced returns r with cur in force and no successor.
func (r Rotation) replaced(cur *Slot) Rotation {
	r.Current, r.Next, r.NextPublishedAt = cur, nil, time.Time{}
	return r
}

// withoutExpired returns r without the retired keys whose Until passed.
func (r Rotation) withoutExpired(now time.Time) Rotation {
	r.Retired = unexpired(r.Retired, retiredUntil, now)
	return r
}

// retiredDue reports whether a retired key's Until has passed, and else
// the earliest Until.
func (r *Rotation) retiredDue(now time.Time) (due bool, next time.Time) {
	return expiryDue(r.Retired, retiredUntil, now)
}

func retiredUntil(k Retired) time.Time { return k.Until }

// expiryDue reports whether the end of one of items (retired keys,
// taints) has passed, and else the earliest end.
func expiryDue[T any](items []T, end func(T) time.Time, now time.Time) (due bool, next time.Time) {
	next = farFuture
	for _, it := range items {
		if !now.Before(end(it)) {
			return true, now
		}
		next = minTime(next, end(it))
	}
	return false, next
}

// unexpired returns the items whose end has not passed.
func unexpired[T any](items []T, end func(T) time.Time, now time.Time) []T {
	var kept []T
	for _, it := range items {
		if now.Before(end(it)) {
			kept = append(kept, it)
		}
	}
	return kept
}

func at(notBefore, notAfter time.Time, fraction float64) time.Time {
	life := notAfter.Sub(notBefore)
	return notBefore.Add(time.Duration(float64(life) * fraction))
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
