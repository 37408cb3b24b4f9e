package authority

import (
	"crypto/x509"
	"fmt"
	"slices"
	"time"

	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// Policy says when the authority's keys rotate.
type Policy struct {
	// RootTTL is the lifetime of a self-signed root (default 1 year).
	RootTTL time.Duration
	// IntermediateTTL is the lifetime of an intermediate (default 48h).
	IntermediateTTL time.Duration
	// PrepareAt is the fraction of a key's life at which its successor is
	// prepared and published (default 0.5).
	PrepareAt float64
	// ActivateAt is the fraction of a key's life at which its successor takes
	// over signing (default 2/3).
	ActivateAt float64
	// RootAckWait is how long a prepared root waits for every expected node
	// to report that it holds the new bundle before it activates anyway
	// (default 24h).
	RootAckWait time.Duration
	// TaintReissueWindow is how long after seeing a taint in the trust
	// bundle every holder of a credential chaining to the tainted key has
	// to re-issue it (each at a random point of the window; default 10m).
	TaintReissueWindow time.Duration
	// MaxPrepareAhead caps how early a successor is prepared for a long
	// lifetime: at the latest of the PrepareAt point and (its activation
	// point - MaxPrepareAhead). Half of a 1-year root would otherwise be 6
	// months ahead; the default 30 days puts a new root in the trust bundle
	// a month before it signs, and never binds for intermediates (their
	// lifetime is at most 30 days). 0 means no cap; else it must be at
	// least RootAckWait, so that the cap never makes a root wait for the
	// agents past its activation point.
	MaxPrepareAhead time.Duration
	// JWTKeyTTL is how long a JWT signing key is in use before it rotates
	// (default 24h): its successor is published in the JWT bundle and the
	// JWKS at PrepareAt of its life and signs from ActivateAt on, once the
	// agents hold it.
	JWTKeyTTL time.Duration
	// JWTMaxTokenTTL is the longest a JWT-SVID lives (default 1h): a
	// retired JWT key stays published that long after its last token.
	JWTMaxTokenTTL time.Duration
	// JWTKeyType is the algorithm of new JWT keys: ES256 (default, P-256),
	// ES384 (P-384) or RS256 (RSA-2048). A zero JWT field means its
	// default.
	JWTKeyType string
}

// DefaultPolicy returns the lifetimes and rotation points of docs/architecture.md (Identities).
func DefaultPolicy() Policy {
	return Policy{
		RootTTL:         365 * 24 * time.Hour,
		IntermediateTTL: 48 * time.Hour,
		PrepareAt:       0.5,
		ActivateAt:      2.0 / 3.0,
		RootAckWait:     24 * time.Hour,
		MaxPrepareAhead: 30 * 24 * time.Hour,
		JWTKeyTTL:       24 * time.Hour,
		JWTMaxTokenTTL:  time.Hour,
		JWTKeyType:      JWTES256,

		TaintReissueWindow: 10 * time.Minute,
	}
}

// Validate names the first field that is out of range.
func (p Policy) Validate() error {
	switch {
	case p.RootTTL < time.Hour:
		return fmt.Errorf("rotation.rootTTL: must be at least 1h, got %s", p.RootTTL)
	case p.IntermediateTTL < pki.MinIntermediateTTL || p.IntermediateTTL > pki.MaxIntermediateTTL:
		// The bounds of the signing policy (pki.DefaultIntermediateOptions):
		// a policy outside them would validate and then fail every mint.
		return fmt.Errorf("rotation.intermediateTTL: must be between %s and %s, got %s", pki.MinIntermediateTTL, pki.MaxIntermediateTTL, p.IntermediateTTL)
	case p.IntermediateTTL*2 > p.RootTTL:
		return fmt.Errorf("rotation.intermediateTTL: must be at most half of rootTTL (%s), got %s", p.RootTTL, p.IntermediateTTL)
	case !(p.PrepareAt > 0 && p.PrepareAt < 1):
		return fmt.Errorf("rotation.prepareAt: must be in (0,1), got %v", p.PrepareAt)
	case !(p.ActivateAt > p.PrepareAt && p.ActivateAt < 1):
		return fmt.Errorf("rotation.activateAt: must be in (prepareAt=%v, 1), got %v", p.PrepareAt, p.ActivateAt)
	case p.RootAckWait < 0:
		return fmt.Errorf("rotation.rootAckWait: must not be negative, got %s", p.RootAckWait)
	case p.MaxPrepareAhead < 0:
		return fmt.Errorf("rotation.maxPrepareAhead: must not be negative, got %s", p.MaxPrepareAhead)
	case p.MaxPrepareAhead != 0 && p.MaxPrepareAhead < p.RootAckWait:
		return fmt.Errorf("rotation.maxPrepareAhead: must be at least rootAckWait (%s), got %s", p.RootAckWait, p.MaxPrepareAhead)
	case p.JWTMaxTokenTTL != 0 && p.JWTMaxTokenTTL < time.Minute:
		return fmt.Errorf("rotation.jwtMaxTokenTTL: must be at least 1m, got %s", p.JWTMaxTokenTTL)
	case p.JWTKeyTTL != 0 && p.JWTKeyTTL < 4*p.jwtMaxTokenTTL():
		return fmt.Errorf("rotation.jwtKeyTTL: must be at least 4 times jwtMaxTokenTTL (%s), got %s", p.jwtMaxTokenTTL(), p.JWTKeyTTL)
	case p.JWTKeyType != "" && !slices.Contains(JWTKeyTypes, p.JWTKeyType):
		return fmt.Errorf("rotation.jwtKeyType: must be one of %v, got %q", JWTKeyTypes, p.JWTKeyType)
	case p.TaintReissueWindow < 0 || p.TaintReissueWindow > p.IntermediateTTL/2:
		return fmt.Errorf("rotation.taintReissueWindow: must be between 0 and half of intermediateTTL (%s), got %s", p.IntermediateTTL/2, p.TaintReissueWindow)
	}
	return nil
}

// RootSchedule is when the self-signed root rotates: its successor is
// published in the trust bundle and activates once every expected node
// holds it, RootAckWait after it was published, or when an intermediate
// would no longer fit in the current root's life, whichever comes first.
func (p Policy) RootSchedule() Schedule {
	return Schedule{
		PrepareAt: p.PrepareAt, ActivateAt: p.ActivateAt, MaxPrepareAhead: p.MaxPrepareAhead,
		Published: true, AdoptionWait: p.RootAckWait, ForceBefore: p.IntermediateTTL,
	}
}

// IntermediateSchedule is when the intermediate rotates: at its rotation
// points, with no one to wait for, and at once when it expired with no
// successor.
func (p Policy) IntermediateSchedule() Schedule {
	return Schedule{PrepareAt: p.PrepareAt, ActivateAt: p.ActivateAt, MaxPrepareAhead: p.MaxPrepareAhead, Replaceable: true}
}

// JWTSchedule is when the JWT signing key rotates: like a root, its
// successor is published (JWT bundle, JWKS) ahead of use and signs only
// once every agent holds it, or after the wait (RootAckWait at most, and a
// quarter of the key's remaining life before its end at the latest). It is
// never replaced unpublished: a CA that was down past a key's end signs
// with that key until the successor is published and adopted.
func (p Policy) JWTSchedule() Schedule {
	return Schedule{
		PrepareAt: p.PrepareAt, ActivateAt: p.ActivateAt,
		Published: true, AdoptionWait: p.RootAckWait,
		ForceBefore: time.Duration(float64(p.jwtKeyTTL()) * (1 - p.ActivateAt) / 2),
	}
}

// newUpstreamRootSchedule is s for an intermediate that chains to an
// upstream root the bundle did not hold before it was prepared: it waits
// for the consumers as a root of mayfly's own does (RootAckWait), and
// takes over regardless when the current intermediate is within a sixth
// of its life of expiring (the leaves it signs would be cut short).
func (p Policy) newUpstreamRootSchedule(s Schedule) Schedule {
	s.Published, s.AdoptionWait = true, p.RootAckWait
	s.ForceBefore = time.Duration(float64(p.IntermediateTTL) * (1 - p.ActivateAt) / 2)
	return s
}

// Step is one change to the authority state.
type Step string

// The steps Plan may return, in the order they are applied.
const (
	// StepDropRetired removes retired roots whose last leaf has expired
	// (and retired JWT keys, expired taints, and the key store's keys whose
	// deletion grace has passed).
	StepDropRetired Step = "DropRetiredRoots"
	// StepPrepareRoot creates the next self-signed root and publishes it.
	StepPrepareRoot Step = "PrepareRoot"
	// StepActivateRoot makes the next root the signing root, retires the old
	// one and replaces the intermediate with one under the new root.
	StepActivateRoot Step = "ActivateRoot"
	// StepPrepareIntermediate creates the next intermediate.
	StepPrepareIntermediate Step = "PrepareIntermediate"
	// StepActivateIntermediate makes the next intermediate the signing one.
	StepActivateIntermediate Step = "ActivateIntermediate"
	// StepReplaceIntermediate mints a new signing intermediate at once: the
	// current one expired (the CA was down) and no usable successor exists,
	// or it was tainted (ca taint).
	StepReplaceIntermediate Step = "ReplaceIntermediate"
	// StepMintJWTKey creates the first JWT signing key (a state from before
	// JWT-SVIDs has none).
	StepMintJWTKey Step = "MintJWTKey"
	// StepPrepareJWTKey creates the next JWT key and publishes it.
	StepPrepareJWTKey Step = "PrepareJWTKey"
	// StepActivateJWTKey makes the next JWT key the signing one and keeps
	// the old one published until its last token has expired.
	StepActivateJWTKey Step = "ActivateJWTKey"
)

// Decision is the outcome of Plan: the steps due now, and when to look again.
type Decision struct {
	Steps []Step
	// Next is the earliest time another step may become due.
	Next time.Time
	// Reason explains the decision for logs.
	Reason string
}

// BundleAcks reports whether every node that should hold the bundle with the
// next root acknowledged it (internal/adoption counts them across replicas).
// Plan only asks while a next root waits for activation.
type BundleAcks func() bool

// AllOf is the BundleAcks that holds only when every gate holds (and holds
// with no gates): the agents' acknowledgements and the Kubernetes delivery
// paths, say. A nil gate is skipped. The gates are asked in order, and no
// further once one does not hold. Policy.RootAckWait bounds the wait for
// all of them together.
func AllOf(gates ...func() bool) BundleAcks {
	return func() bool {
		for _, g := range gates {
			if g != nil && !g() {
				return false
			}
		}
		return true
	}
}

// kind is one rotating key of the state and the steps that rotate it.
type kind struct {
	name     string
	rotation func(*State) *Rotation
	schedule func(Policy) Schedule
	// prepare, activate and replace name the steps (replace only for a
	// Replaceable schedule).
	prepare, activate, replace Step
	// replacedBy is a step of another kind that replaces this kind's keys
	// (a new root comes with a new intermediate under it).
	replacedBy Step
	// mint is the step that creates the first key when there is none (a
	// kind added after the state was created).
	mint Step
}

// kinds are the rotating keys, in the order Plan considers them.
var kinds = []kind{
	{
		name:     "root",
		rotation: func(s *State) *Rotation { return &s.Root },
		schedule: Policy.RootSchedule,
		prepare:  StepPrepareRoot, activate: StepActivateRoot,
	},
	{
		name:     "intermediate",
		rotation: func(s *State) *Rotation { return &s.Intermediate },
		schedule: Policy.IntermediateSchedule,
		prepare:  StepPrepareIntermediate, activate: StepActivateIntermediate, replace: StepReplaceIntermediate,
		replacedBy: StepActivateRoot,
	},
	{
		name:     "JWT key",
		rotation: func(s *State) *Rotation { return &s.JWT },
		schedule: Policy.JWTSchedule,
		prepare:  StepPrepareJWTKey, activate: StepActivateJWTKey, mint: StepMintJWTKey,
	},
}

// Plan decides which rotation steps are due at now. It is a pure function of
// the state, the clock and the agents' bundle acknowledgements.
func Plan(s *State, now time.Time, p Policy, acked BundleAcks) Decision {
	var d Decision
	next := farFuture
	consider := func(t time.Time) {
		if t.After(now) && t.Before(next) {
			next = t
		}
	}

	rootsDue, until := s.Root.retiredDue(now)
	jwtDue, jwtUntil := s.JWT.retiredDue(now)
	taintsDue, taintUntil := s.taintsDue(now)
	keysDue, keysUntil := s.keyDeletionsDue(now)
	if rootsDue || jwtDue || taintsDue || keysDue {
		d.Steps = append(d.Steps, StepDropRetired)
	} else {
		consider(until)
		consider(jwtUntil)
		consider(taintUntil)
		consider(keysUntil)
	}
	if t := s.taintOf(currentCert(s.Root.Current)); t != nil && t.Force {
		// A tainted root's successor does not wait for the agents.
		acked = func() bool { return true }
	}

	for _, k := range kinds {
		if k.replacedBy != "" && slices.Contains(d.Steps, k.replacedBy) {
			continue
		}
		r := k.rotation(s)
		if k.mint != "" && r.Current == nil {
			d.Steps = append(d.Steps, k.mint)
			continue
		}
		if k.replace != "" && s.Tainted(currentCert(r.Current)) {
			d.Steps = append(d.Steps, k.replace)
			d.Reason = fmt.Sprintf("current %s is tainted", k.name)
			continue
		}
		sched := k.schedule(p)
		if r.Next != nil && !r.NextPublishedAt.IsZero() && !sched.Published {
			sched = p.newUpstreamRootSchedule(sched)
		}
		action, at := r.Decide(now, sched, acked)
		switch action {
		case ActionNone:
			consider(at)
		case ActionReplace:
			d.Steps = append(d.Steps, k.replace)
			d.Reason = fmt.Sprintf("current %s expired with no successor", k.name)
		case ActionActivate:
			d.Steps = append(d.Steps, k.activate)
			switch {
			case r.ActivateNow:
				d.Reason = fmt.Sprintf("operator override: next %s activated without waiting for the agents", k.name)
			case sched.Published:
				d.Reason = fmt.Sprintf("next %s published to every agent, or the wait is over", k.name)
			}
		case ActionPrepare:
			d.Steps = append(d.Steps, k.prepare)
		}
	}
	if d.Reason == "" && len(d.Steps) > 0 {
		d.Reason = "rotation point reached"
	}
	if len(d.Steps) > 0 {
		next = now // apply, then plan again
	}
	d.Next = next
	return d
}

func currentCert(s *Slot) *x509.Certificate {
	if s == nil {
		return nil
	}
	return s.Cert()
}

var farFuture = time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)
