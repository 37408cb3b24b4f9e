package rotate

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Default values of [Policy], taken from the design: renew at 50% of the
// lifetime with ±10% jitter, retry failures between 1s and 30s apart.
const (
	DefaultRenewFraction = 0.5
	DefaultJitter        = 0.1
	DefaultBackoffFloor  = time.Second
	DefaultBackoffCap    = 30 * time.Second
)

// maxDuration is the largest representable time.Duration.
const maxDuration = time.Duration(math.MaxInt64)

// Policy decides when a certificate is renewed and how failed attempts are
// retried. Build one with [DefaultPolicy] and change what you need; check it
// with [Policy.Validate].
//
// Renewal point: NotBefore + RenewFraction×life + jitter×Jitter×life, where life
// is NotAfter−NotBefore and jitter is drawn in [-1,1] once per certificate.
//
// Backoff after n failed attempts (n ≥ 1): the nominal delay is
// BackoffFloor×2^(n−1), capped by the effective cap min(BackoffCap, 10% of the
// remaining life of the current certificate). When 10% of the remaining life is
// below BackoffFloor, the effective cap is BackoffFloor: the floor always wins,
// so a failing client never retries faster than BackoffFloor, even in the last
// seconds of a certificate. When there is no certificate or it has expired, the
// effective cap is BackoffCap. The nominal delay is then jittered downwards by
// up to Jitter of itself (delay×(1 − Jitter×(1−jitter)/2), that is ±Jitter/2
// around delay×(1−Jitter/2)), so that clients that share an outage spread their
// retries instead of arriving together, and finally clamped into
// [BackoffFloor, effective cap]. The cap is therefore a hard upper bound.
type Policy struct {
	// RenewFraction is the fraction of the lifetime after NotBefore at which a
	// certificate is renewed; in (0,1). Default 0.5.
	RenewFraction float64
	// Jitter is the maximal shift of the renewal point, as a fraction of the
	// lifetime, in either direction; in [0,1) and such that
	// RenewFraction±Jitter stays inside (0,1). It also scales backoff jitter.
	// Default 0.1.
	Jitter float64
	// BackoffFloor is the first and smallest retry delay; > 0. Default 1s.
	BackoffFloor time.Duration
	// BackoffCap is the largest retry delay; ≥ BackoffFloor. Default 30s.
	BackoffCap time.Duration
}

// DefaultPolicy returns the policy of the design: renew at half-life ±10% of
// the lifetime, retry from 1s doubling up to 30s.
func DefaultPolicy() Policy {
	return Policy{
		RenewFraction: DefaultRenewFraction,
		Jitter:        DefaultJitter,
		BackoffFloor:  DefaultBackoffFloor,
		BackoffCap:    DefaultBackoffCap,
	}
}

// ErrInvalidPolicy is wrapped by every error of [Policy.Validate].
var ErrInvalidPolicy = errors.New("invalid rotation policy")

// policyError is one invalid field: its message starts with the field name,
// so that a caller can prefix its own path (spec.rotation.), and it matches
// [ErrInvalidPolicy] with errors.Is.
type policyError string

func (e policyError) Error() string        { return string(e) }
func (e policyError) Is(target error) bool { return target == ErrInvalidPolicy }

// Validate reports every invalid field, one line each, each starting with the
// field name (e.g. "renewFraction: must be in (0,1), got 1.2"). The returned
// error matches [ErrInvalidPolicy] with errors.Is.
func (p Policy) Validate() error {
	var errs []error
	add := func(format string, args ...any) {
		errs = append(errs, policyError(fmt.Sprintf(format, args...)))
	}
	fractionOK := p.RenewFraction > 0 && p.RenewFraction < 1 // false for NaN
	if !fractionOK {
		add("renewFraction: must be in (0,1), got %v", p.RenewFraction)
	}
	switch {
	case !(p.Jitter >= 0 && p.Jitter < 1): // catches NaN
		add("jitter: must be in [0,1), got %v", p.Jitter)
	case fractionOK && (p.RenewFraction-p.Jitter <= 0 || p.RenewFraction+p.Jitter >= 1):
		add("jitter: renewFraction±jitter must stay inside (0,1), got %v±%v", p.RenewFraction, p.Jitter)
	}
	if p.BackoffFloor <= 0 {
		add("backoffFloor: must be > 0, got %v", p.BackoffFloor)
	}
	if p.BackoffCap < p.BackoffFloor {
		add("backoffCap: must be >= backoffFloor (%v), got %v", p.BackoffFloor, p.BackoffCap)
	}
	return errors.Join(errs...)
}

// Validity is the validity window of a certificate.
type Validity struct {
	NotBefore, NotAfter time.Time
}

// Lifetime returns NotAfter−NotBefore, or 0 when the window is empty or
// inverted.
func (v Validity) Lifetime() time.Duration {
	if d := v.NotAfter.Sub(v.NotBefore); d > 0 {
		return d
	}
	return 0
}

// Reason says why [Policy.Next] chose its time.
type Reason string

// Reasons returned by [Policy.Next].
const (
	// ReasonNoCertificate: nothing obtained yet; obtain now (or after backoff).
	ReasonNoCertificate Reason = "NoCertificate"
	// ReasonScheduled: the certificate is valid; renew at the renewal point.
	ReasonScheduled Reason = "Scheduled"
	// ReasonRenewalDue: the renewal point has passed; renew now (or after backoff).
	ReasonRenewalDue Reason = "RenewalDue"
	// ReasonExpired: the certificate has expired, or its validity window is
	// empty or inverted; renew now (or after backoff).
	ReasonExpired Reason = "Expired"
	// ReasonNotYetValid: NotBefore lies in the future (clock skew); the renewal
	// point is computed from NotBefore as usual.
	ReasonNotYetValid Reason = "NotYetValid"
	// ReasonRetry: an early renewal (before the renewal point, for instance a
	// triggered one) failed; retry after backoff, but no later than the
	// renewal point.
	ReasonRetry Reason = "Retry"
	// ReasonRenewBy: a renewal was asked for by a time ([Rotator.RenewBy]),
	// before the policy's own point (the issuing authority was tainted).
	ReasonRenewBy Reason = "RenewBy"
)

// Decision is the result of [Policy.Next]: act at At, because of Reason.
type Decision struct {
	At     time.Time
	Reason Reason
}

// Next decides when to obtain the next certificate. It is a pure function.
//
// v is the validity of the current certificate, nil if there is none yet; now
// is the current time; attempt is the number of failed attempts since the last
// success (0 if none); jitter is a value in [-1,1] that the caller draws once
// per certificate (values outside are clamped, NaN counts as 0).
//
// Rules, in order:
//   - no certificate: now, after backoff when attempt > 0 (NoCertificate);
//   - now ≥ NotAfter, or an empty/inverted window: now, after backoff (Expired);
//   - now ≥ renewal point: now, after backoff (RenewalDue);
//   - attempt > 0 (an early renewal failed): now+backoff, but not after the
//     renewal point (Retry);
//   - NotBefore > now: the renewal point (NotYetValid);
//   - otherwise: the renewal point (Scheduled).
//
// The renewal point is clamped into [NotBefore, NotAfter), and the result is
// never before now. Next does not validate p; fields out of range are clamped
// so that it never panics, but the result of an invalid policy is unspecified.
func (p Policy) Next(v *Validity, now time.Time, attempt int, jitter float64) Decision {
	jitter = clampJitter(jitter)
	if attempt < 0 {
		attempt = 0
	}
	if v == nil {
		return Decision{At: now.Add(p.backoff(attempt, 0, jitter)), Reason: ReasonNoCertificate}
	}
	life := v.Lifetime()
	if life <= 0 || !now.Before(v.NotAfter) {
		return Decision{At: now.Add(p.backoff(attempt, 0, jitter)), Reason: ReasonExpired}
	}
	remaining := v.NotAfter.Sub(now)
	renewAt := p.renewalPoint(*v, life, jitter)
	if !now.Before(renewAt) {
		return Decision{At: now.Add(p.backoff(attempt, remaining, jitter)), Reason: ReasonRenewalDue}
	}
	if attempt > 0 {
		at := now.Add(p.backoff(attempt, remaining, jitter))
		if at.After(renewAt) {
			at = renewAt
		}
		return Decision{At: at, Reason: ReasonRetry}
	}
	if now.Before(v.NotBefore) {
		return Decision{At: renewAt, Reason: ReasonNotYetValid}
	}
	return Decision{At: renewAt, Reason: ReasonScheduled}
}

// renewalPoint returns NotBefore + (RenewFraction + jitter×Jitter)×life,
// clamped into [NotBefore, NotAfter). life must be > 0.
func (p Policy) renewalPoint(v Validity, life time.Duration, jitter float64) time.Time {
	f := p.RenewFraction + jitter*p.Jitter
	if !(f > 0) { // also NaN
		return v.NotBefore
	}
	if f >= 1 {
		return v.NotAfter.Add(-time.Nanosecond)
	}
	var at time.Time
	if life < maxDuration {
		at = v.NotBefore.Add(time.Duration(f * float64(life)))
	} else {
		// The window is too long for a Duration (Sub saturated); work in seconds.
		secs := f * float64(v.NotAfter.Unix()-v.NotBefore.Unix())
		at = time.Unix(v.NotBefore.Unix()+int64(secs), 0).In(v.NotBefore.Location())
	}
	if !at.Before(v.NotAfter) {
		at = v.NotAfter.Add(-time.Nanosecond)
	}
	return at
}

// backoff returns the retry delay after attempt failed attempts (0 for
// attempt ≤ 0). remaining is the remaining life of the current certificate,
// ≤ 0 when there is none or it has expired. See [Policy] for the formula.
func (p Policy) backoff(attempt int, remaining time.Duration, jitter float64) time.Duration {
	if attempt <= 0 {
		return 0
	}
	floor, capD := p.BackoffFloor, p.BackoffCap
	if floor <= 0 {
		floor = time.Nanosecond
	}
	if remaining > 0 {
		capD = min(capD, remaining/10)
	}
	capD = max(capD, floor) // the floor wins over 10% of a short remaining life
	d := floor
	for i := 1; i < attempt && d < capD; i++ {
		if d > maxDuration/2 {
			d = capD
			break
		}
		d *= 2
	}
	d = min(d, capD)
	j := min(max(p.Jitter, 0), 1) // NaN stays NaN, and NaN > 0 is false
	if j > 0 {
		d = time.Duration(float64(d) * (1 - j*(1-jitter)/2))
	}
	return min(max(d, floor), capD)
}

// clampJitter maps NaN to 0 and clamps into [-1,1].
func clampJitter(j float64) float64 {
	switch {
	case math.IsNaN(j):
		return 0
	case j < -1:
		return -1
	case j > 1:
		return 1
	}
	return j
}
