package authority

import (
	"fmt"
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
	// RootAckWait is how long a prepared root waits for every connected agent
	// to report that it holds the new bundle before it activates anyway
	// (default 24h).
	RootAckWait time.Duration
}

// DefaultPolicy returns the lifetimes and rotation points of DESIGN.md.
func DefaultPolicy() Policy {
	return Policy{
		RootTTL:         365 * 24 * time.Hour,
		IntermediateTTL: 48 * time.Hour,
		PrepareAt:       0.5,
		ActivateAt:      2.0 / 3.0,
		RootAckWait:     24 * time.Hour,
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
	}
	return nil
}

// Step is one change to the authority state.
type Step string

// The steps Plan may return, in the order they are applied.
const (
	// StepDropRetired removes retired roots whose last leaf has expired.
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
	// current one expired (the CA was down) and no usable successor exists.
	StepReplaceIntermediate Step = "ReplaceIntermediate"
)

// Decision is the outcome of Plan: the steps due now, and when to look again.
type Decision struct {
	Steps []Step
	// Next is the earliest time another step may become due.
	Next time.Time
	// Reason explains the decision for logs.
	Reason string
}

// BundleAcks reports whether every connected agent holds the bundle with the
// next root. Plan only asks while a next root waits for activation.
type BundleAcks func() bool

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

	for _, r := range s.Retired {
		if !now.Before(r.Until) {
			d.Steps = append(d.Steps, StepDropRetired)
			break
		}
		consider(r.Until)
	}

	if s.Root != nil { // self-signed: we rotate the root ourselves
		root := s.Root.Cert()
		prepare := at(root.NotBefore, root.NotAfter, p.PrepareAt)
		activate := at(root.NotBefore, root.NotAfter, p.ActivateAt)
		if s.RootRotationRequested {
			// An operator asked for a rotation now (ca rotate-root): prepare
			// at once, activate as soon as the agents hold the new root.
			prepare, activate = minTime(prepare, now), minTime(activate, now)
		}
		switch {
		case s.NextRoot == nil && !now.Before(prepare):
			d.Steps = append(d.Steps, StepPrepareRoot)
			consider(now.Add(time.Second))
		case s.NextRoot == nil:
			consider(prepare)
		case !now.Before(activate) && (acked == nil || acked() || !now.Before(s.NextRootPublishedAt.Add(p.RootAckWait)) || !now.Before(root.NotAfter.Add(-p.IntermediateTTL))):
			d.Steps = append(d.Steps, StepActivateRoot)
			d.Reason = "next root published to every agent, or the wait is over"
		case !now.Before(activate):
			// Waiting for acknowledgements: look again soon.
			consider(now.Add(10 * time.Second))
			consider(s.NextRootPublishedAt.Add(p.RootAckWait))
		default:
			consider(activate)
		}
	}

	if s.Intermediate != nil && !containsStep(d.Steps, StepActivateRoot) {
		cur := s.Intermediate.Cert()
		prepare := at(cur.NotBefore, cur.NotAfter, p.PrepareAt)
		activate := at(cur.NotBefore, cur.NotAfter, p.ActivateAt)
		nextUsable := s.NextIntermediate != nil && now.Before(s.NextIntermediate.Cert().NotAfter)
		switch {
		case !now.Before(cur.NotAfter) && !nextUsable:
			d.Steps = append(d.Steps, StepReplaceIntermediate)
			d.Reason = "current intermediate expired with no successor"
		case !now.Before(activate) && nextUsable:
			d.Steps = append(d.Steps, StepActivateIntermediate)
		case !now.Before(prepare) && !nextUsable:
			d.Steps = append(d.Steps, StepPrepareIntermediate)
			consider(activate)
		case nextUsable:
			consider(activate)
		default:
			consider(prepare)
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

var farFuture = time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)

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

func containsStep(steps []Step, s Step) bool {
	for _, x := range steps {
		if x == s {
			return true
		}
	}
	return false
}
