package rotate

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"sync"
	"time"
)

// ErrAlreadyRunning is returned by [Rotator.Start] when the rotator is
// already running.
var ErrAlreadyRunning = errors.New("rotator is already running")

// ErrExpiredOnArrival is wrapped by the error recorded when the obtained
// credential has already expired; such a credential is discarded and the
// attempt counts as failed.
var ErrExpiredOnArrival = errors.New("obtained certificate has already expired")

// Options configure a [Rotator]. Every field is optional.
type Options struct {
	// Policy decides when to renew. The zero Policy means [DefaultPolicy];
	// otherwise a zero RenewFraction, BackoffFloor or BackoffCap takes its
	// default value, and a zero Jitter means no jitter. [Rotator.Start]
	// returns the error of [Policy.Validate] for an invalid policy.
	Policy Policy
	// Clock is the source of time; nil means [RealClock].
	Clock Clock
	// Rand returns uniformly distributed numbers in [0,1). It is called from
	// the rotator's goroutine only, once per credential, to draw the jitter.
	// nil means math/rand/v2.Float64.
	Rand func() float64
	// Sinks receive every new credential.
	Sinks []Sink
	// Name identifies the identity in events and state (e.g. a SPIFFE ID).
	Name string
	// OnEvent, if set, is called synchronously from the rotator's goroutine
	// for every [Event]. It must not block; it may call the rotator's methods.
	OnEvent func(Event)
}

// EventKind says what happened in an [Event].
type EventKind string

// Kinds of [Event].
const (
	// EventRotated: a new credential was obtained and is now current.
	EventRotated EventKind = "Rotated"
	// EventObtainFailed: obtaining failed; the previous credential stays.
	EventObtainFailed EventKind = "ObtainFailed"
	// EventSinkUpdated: a sink accepted the current credential.
	EventSinkUpdated EventKind = "SinkUpdated"
	// EventSinkFailed: a sink refused the current credential; it is retried
	// with backoff.
	EventSinkFailed EventKind = "SinkFailed"
)

// Event reports one step of a [Rotator], for logs and metrics. It never
// carries key material.
type Event struct {
	Kind EventKind
	// Name is [Options.Name].
	Name string
	// Time is the clock's time when the event happened.
	Time time.Time
	// Validity is the validity of the current credential; zero when there is
	// none.
	Validity Validity
	// Attempt is the number of consecutive failures, of obtaining for
	// EventObtainFailed and of this sink for EventSinkFailed; else 0.
	Attempt int
	// Next is the decision taken after the event (EventRotated,
	// EventObtainFailed) or the sink's next retry time (EventSinkFailed).
	Next Decision
	// Err is the failure, for the *Failed kinds.
	Err error
}

// State is a snapshot of a [Rotator], for metrics and status output.
type State struct {
	// Name is [Options.Name].
	Name string
	// Current is the validity of the current credential; nil when there is
	// none yet.
	Current *Validity
	// NextAt and NextReason are the last decision of the policy.
	NextAt     time.Time
	NextReason Reason
	// LastError is the last obtain error, cleared on success.
	LastError string
	// LastSuccess is when the current credential was obtained.
	LastSuccess time.Time
	// Attempts is the number of failed obtain attempts since the last success.
	Attempts int
	// Rotations counts the credentials obtained, the first one included.
	Rotations uint64
	// Failures counts failed obtain attempts.
	Failures uint64
	// SinkFailures counts failed Put calls.
	SinkFailures uint64
	// LastSinkError is the last sink error, cleared when no sink is pending.
	LastSinkError string
	// PendingSinks is the number of sinks that do not hold the current
	// credential yet.
	PendingSinks int
}

// Rotator keeps one identity fresh: it obtains a credential when its
// [Policy] says so, keeps the last good credential while obtaining fails,
// and pushes every new credential to its sinks. Create it with [New], run it
// with [Rotator.Start]. Its methods are safe for concurrent use.
type Rotator struct {
	obtain  ObtainFunc
	policy  Policy
	clock   Clock
	rand    func() float64
	name    string
	onEvent func(Event)

	trigger   chan struct{} // buffered 1: renew now, coalesced
	wake      chan struct{} // buffered 1: the sinks or the state changed outside the loop
	ready     chan struct{} // closed after the first success
	readyOnce sync.Once

	mu          sync.Mutex
	running     bool
	current     *Credential
	jitter      float64 // drawn once per credential, in [-1,1]
	attempts    int     // failed obtains since the last success
	hot         int     // consecutive successes that were due at once
	sinks       []*sinkEntry
	next        Decision
	lastErr     string
	lastSuccess time.Time
	rotations   uint64
	failures    uint64
	sinkFails   uint64
	lastSinkErr string
	renewBy     time.Time // zero, or RenewBy's deadline until a credential obtained after it
	renewBySeq  uint64    // counts RenewBy calls, to tell a renewal that began before one
}

type sinkEntry struct {
	sink      Sink
	delivered *Credential // last credential this sink accepted
	attempts  int         // consecutive failures
	retryAt   time.Time   // earliest retry after a failure
}

// New returns a Rotator that obtains credentials with obtain. It does not
// start it; call [Rotator.Start].
func New(obtain ObtainFunc, opts Options) *Rotator {
	r := &Rotator{
		obtain:  obtain,
		policy:  opts.Policy,
		clock:   opts.Clock,
		rand:    opts.Rand,
		name:    opts.Name,
		onEvent: opts.OnEvent,
		trigger: make(chan struct{}, 1),
		wake:    make(chan struct{}, 1),
		ready:   make(chan struct{}),
	}
	if r.policy == (Policy{}) {
		r.policy = DefaultPolicy()
	}
	r.policy.RenewFraction = cmp.Or(r.policy.RenewFraction, DefaultRenewFraction)
	r.policy.BackoffFloor = cmp.Or(r.policy.BackoffFloor, DefaultBackoffFloor)
	r.policy.BackoffCap = cmp.Or(r.policy.BackoffCap, max(DefaultBackoffCap, r.policy.BackoffFloor))
	if r.clock == nil {
		r.clock = RealClock{}
	}
	if r.rand == nil {
		r.rand = rand.Float64
	}
	for _, s := range opts.Sinks {
		if s != nil {
			r.sinks = append(r.sinks, &sinkEntry{sink: s})
		}
	}
	r.jitter = r.drawJitter()
	return r
}

// Start runs the rotation loop until ctx is done, then returns nil. It obtains
// the first credential at once. It returns [ErrAlreadyRunning] when the
// rotator is already running (it may be started again after it returned),
// and an error wrapping [ErrInvalidPolicy] when the policy is invalid.
func (r *Rotator) Start(ctx context.Context) error {
	if err := r.policy.Validate(); err != nil {
		return fmt.Errorf("rotator %q: policy: %w", r.name, err)
	}
	r.mu.Lock()
	if r.running {
		r.mu.Unlock()
		return ErrAlreadyRunning
	}
	r.running = true
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.running = false
		r.mu.Unlock()
	}()

	// The decision is taken once at start and after every attempt, and then
	// followed: recomputing it on wake-up would push a backoff "now+delay"
	// forever into the future.
	r.decide(r.clock.Now())
	triggered := false
	for {
		if ctx.Err() != nil {
			return nil
		}
		select {
		case <-r.trigger:
			triggered = true
		default:
		}
		now := r.clock.Now()
		r.mu.Lock()
		d := r.next
		r.mu.Unlock()
		if triggered || !now.Before(d.At) {
			triggered = false
			r.renew(ctx)
			continue
		}
		wakeAt := d.At
		if at, ok := r.nextSinkRetry(); ok {
			if !now.Before(at) {
				r.deliver(ctx, false)
				continue
			}
			if at.Before(wakeAt) {
				wakeAt = at
			}
		}
		timer := NewTimerAt(r.clock, wakeAt)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-timer.C():
		case <-r.trigger:
			timer.Stop()
			triggered = true
		case <-r.wake:
			timer.Stop()
		}
	}
}

// Trigger asks for a renewal now, even before the renewal point or during a
// backoff. Calls that arrive before the loop acts on the first are coalesced
// into one renewal. It never blocks.
func (r *Rotator) Trigger() {
	select {
	case r.trigger <- struct{}{}:
	default:
	}
}

// RenewBy asks for a renewal at t at the latest (now when t has passed),
// ahead of the policy's renewal point: the credential chains to an
// authority that must no longer be used. An earlier pending deadline wins.
// The deadline holds until a credential obtained after the call became
// current; while obtaining fails, the policy's backoff applies. It never
// blocks.
func (r *Rotator) RenewBy(t time.Time) {
	r.mu.Lock()
	r.renewBySeq++
	if r.renewBy.IsZero() || t.Before(r.renewBy) {
		r.renewBy = t
	}
	r.decideLocked(r.clock.Now())
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Current returns the last good credential, or nil before the first success.
// The credential stays current while obtaining fails, even after it expired.
// It is shared: do not modify it.
func (r *Rotator) Current() *Credential {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.current
}

// Ready returns a channel that is closed once the first credential has been
// obtained.
func (r *Rotator) Ready() <-chan struct{} { return r.ready }

// WaitReady blocks until the first credential has been obtained and returns
// the current one, or returns ctx.Err().
func (r *Rotator) WaitReady(ctx context.Context) (*Credential, error) {
	select {
	case <-r.ready:
		return r.Current(), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// State returns a snapshot for metrics and status output.
func (r *Rotator) State() State {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := State{
		Name:          r.name,
		NextAt:        r.next.At,
		NextReason:    r.next.Reason,
		LastError:     r.lastErr,
		LastSuccess:   r.lastSuccess,
		Attempts:      r.attempts,
		Rotations:     r.rotations,
		Failures:      r.failures,
		SinkFailures:  r.sinkFails,
		LastSinkError: r.lastSinkErr,
	}
	if r.current != nil {
		v := r.current.Validity()
		s.Current = &v
		for _, e := range r.sinks {
			if e.delivered != r.current {
				s.PendingSinks++
			}
		}
	}
	return s
}

// AddSink adds a sink. When a credential is current, the running loop puts
// it to the new sink at once (a stopped rotator does so when started). The
// returned function removes the sink again; it works for every sink,
// including ones that are not comparable such as a [SinkFunc].
func (r *Rotator) AddSink(s Sink) (remove func()) {
	if s == nil {
		return func() {}
	}
	e := &sinkEntry{sink: s}
	r.mu.Lock()
	r.sinks = append(r.sinks, e)
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
	return func() { r.removeEntry(func(x *sinkEntry) bool { return x == e }) }
}

// RemoveSink removes every registration of s and reports whether there was
// one. Sinks whose value is not comparable (a [SinkFunc], for instance) are
// never matched; remove them with the function returned by [Rotator.AddSink].
// A Put that is in flight finishes.
func (r *Rotator) RemoveSink(s Sink) bool {
	if s == nil || !reflect.ValueOf(s).Comparable() {
		return false
	}
	return r.removeEntry(func(x *sinkEntry) bool {
		return reflect.ValueOf(x.sink).Comparable() && x.sink == s
	})
}

func (r *Rotator) removeEntry(match func(*sinkEntry) bool) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	kept := r.sinks[:0]
	removed := false
	for _, e := range r.sinks {
		if match(e) {
			removed = true
			continue
		}
		kept = append(kept, e)
	}
	clear(r.sinks[len(kept):])
	r.sinks = kept
	return removed
}

// drawJitter maps one draw of r.rand from [0,1) to [-1,1].
func (r *Rotator) drawJitter() float64 { return clampJitter(2*r.rand() - 1) }

// decide asks the policy and records the decision.
func (r *Rotator) decide(now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.decideLocked(now)
}

func (r *Rotator) decideLocked(now time.Time) Decision {
	var v *Validity
	if r.current != nil {
		val := r.current.Validity()
		v = &val
	}
	r.next = r.policy.Next(v, now, max(r.attempts, r.hot), r.jitter)
	if !r.renewBy.IsZero() && r.attempts == 0 && r.renewBy.Before(r.next.At) {
		r.next = Decision{At: r.renewBy, Reason: ReasonRenewBy}
	}
	return r.next
}

// renew obtains a credential once and records the outcome.
func (r *Rotator) renew(ctx context.Context) {
	r.mu.Lock()
	seq := r.renewBySeq
	r.mu.Unlock()
	cred, err := r.obtain(ctx)
	if err == nil {
		err = r.check(cred, r.clock.Now())
	}
	if err != nil && ctx.Err() != nil {
		return // shutting down: not a failure
	}
	if r.record(cred, err, seq) == nil {
		r.deliver(ctx, true)
	}
}

// Record takes the outcome of an attempt to obtain made outside the loop,
// by a caller that needed the credential at once (a first request), as the
// rotator's own: a credential becomes current (Ready closes, the sinks get
// it, the next renewal is scheduled from it) and an error counts as a
// failed attempt (the next one waits out the backoff). It emits the same
// events as an attempt of the loop and returns the error recorded: err, or
// why cred is unusable, or nil when cred became current. It may be called
// before [Rotator.Start] or while the loop runs, which then re-decides.
func (r *Rotator) Record(cred *Credential, err error) error {
	if err == nil {
		err = r.check(cred, r.clock.Now())
	}
	r.mu.Lock()
	seq := r.renewBySeq
	r.mu.Unlock()
	err = r.record(cred, err, seq)
	select {
	case r.wake <- struct{}{}:
	default:
	}
	return err
}

// check refuses a credential that is unusable or has already expired.
func (r *Rotator) check(cred *Credential, now time.Time) error {
	if err := cred.Validate(); err != nil {
		return err
	}
	if !now.Before(cred.Validity().NotAfter) {
		return fmt.Errorf("%w (notAfter %s)", ErrExpiredOnArrival, cred.Validity().NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}

// record makes the outcome of one attempt (already checked) the state and
// emits its event; a new credential is due to every sink at once. seq is
// renewBySeq when obtaining began: a credential obtained after the last
// RenewBy clears its deadline.
func (r *Rotator) record(cred *Credential, err error, seq uint64) error {
	now := r.clock.Now()
	if err != nil {
		r.mu.Lock()
		r.attempts++
		r.failures++
		r.lastErr = err.Error()
		ev := Event{Kind: EventObtainFailed, Attempt: r.attempts, Err: err, Next: r.decideLocked(now)}
		r.mu.Unlock()
		r.emit(ev, now)
		return err
	}

	r.mu.Lock()
	r.current = cred
	r.attempts = 0
	r.lastErr = ""
	r.lastSuccess = now
	r.rotations++
	r.jitter = r.drawJitter()
	if seq == r.renewBySeq {
		r.renewBy = time.Time{}
	}
	for _, e := range r.sinks {
		e.retryAt = time.Time{}
	}
	// Guard against a hot loop when a fresh credential is already due (a CA
	// clock far ahead, or a lifetime too short for the policy): count such
	// successes as attempts for the backoff.
	v := cred.Validity()
	if due := r.policy.Next(&v, now, 0, r.jitter); !now.Before(due.At) {
		r.hot++
	} else {
		r.hot = 0
	}
	ev := Event{Kind: EventRotated, Next: r.decideLocked(now)}
	r.mu.Unlock()
	r.readyOnce.Do(func() { close(r.ready) })
	r.emit(ev, now)
	return nil
}

// nextSinkRetry returns the earliest time at which a pending sink should be
// retried, and false when no sink is pending.
func (r *Rotator) nextSinkRetry() (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.current == nil {
		return time.Time{}, false
	}
	var at time.Time
	found := false
	for _, e := range r.sinks {
		if e.delivered == r.current {
			continue
		}
		if !found || e.retryAt.Before(at) {
			at, found = e.retryAt, true
		}
	}
	return at, found
}

// deliver puts the current credential to every pending sink: all of them
// when force is set (a new credential), else those whose retry time has come.
func (r *Rotator) deliver(ctx context.Context, force bool) {
	r.mu.Lock()
	cred := r.current
	now := r.clock.Now()
	var due []*sinkEntry
	for _, e := range r.sinks {
		if cred != nil && e.delivered != cred && (force || !now.Before(e.retryAt)) {
			due = append(due, e)
		}
	}
	r.mu.Unlock()

	for _, e := range due {
		err := e.sink.Put(ctx, cred)
		if err != nil && ctx.Err() != nil {
			return // shutting down: not a failure
		}
		now := r.clock.Now()
		r.mu.Lock()
		var ev Event
		if err != nil {
			e.attempts++
			r.sinkFails++
			r.lastSinkErr = err.Error()
			remaining := cred.Validity().NotAfter.Sub(now)
			e.retryAt = now.Add(r.policy.backoff(e.attempts, remaining, r.jitter))
			ev = Event{Kind: EventSinkFailed, Attempt: e.attempts, Err: err,
				Next: Decision{At: e.retryAt, Reason: ReasonRetry}}
		} else {
			e.delivered = cred
			e.attempts = 0
			e.retryAt = time.Time{}
			if r.pendingLocked() == 0 {
				r.lastSinkErr = ""
			}
			ev = Event{Kind: EventSinkUpdated}
		}
		r.mu.Unlock()
		r.emit(ev, now)
	}
}

func (r *Rotator) pendingLocked() int {
	n := 0
	for _, e := range r.sinks {
		if e.delivered != r.current {
			n++
		}
	}
	return n
}

// emit fills the common fields of ev and hands it to OnEvent.
func (r *Rotator) emit(ev Event, now time.Time) {
	if r.onEvent == nil {
		return
	}
	ev.Name = r.name
	ev.Time = now
	ev.Validity = r.Current().Validity()
	r.onEvent(ev)
}
