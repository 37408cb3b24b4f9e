package rotate

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// noJitterPolicy makes backoff intervals exact: 1s, 2s, 4s, ... 30s.
var noJitterPolicy = Policy{RenewFraction: 0.5, Jitter: 0, BackoffFloor: time.Second, BackoffCap: 30 * time.Second}

// harness runs a Rotator on a FakeClock with a scripted ObtainFunc.
type harness struct {
	t     *testing.T
	ca    *testCA
	clock *FakeClock
	r     *Rotator
	life  time.Duration

	calls atomic.Int64
	// script, if set, decides the outcome of obtain call n (1-based); a nil
	// credential with a nil error means "issue a fresh one".
	script func(ctx context.Context, n int64) (*Credential, error)

	mu     sync.Mutex
	events []Event

	cancel context.CancelFunc
	done   chan error
}

func newHarness(t *testing.T, opts Options) *harness {
	t.Helper()
	h := &harness{t: t, ca: newTestCA(t), clock: NewFakeClock(t0), life: time.Hour}
	opts.Clock = h.clock
	if opts.Rand == nil {
		opts.Rand = func() float64 { return 0.5 } // jitter 0
	}
	userEvent := opts.OnEvent
	opts.OnEvent = func(ev Event) {
		h.mu.Lock()
		h.events = append(h.events, ev)
		h.mu.Unlock()
		if userEvent != nil {
			userEvent(ev)
		}
	}
	h.r = New(h.obtain, opts)
	return h
}

func (h *harness) obtain(ctx context.Context) (*Credential, error) {
	n := h.calls.Add(1)
	if h.script != nil {
		c, err := h.script(ctx, n)
		if c != nil || err != nil {
			return c, err
		}
	}
	now := h.clock.Now()
	return h.ca.issue(h.t, now, now.Add(h.life)), nil
}

func (h *harness) start() {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	done := make(chan error, 1)
	h.done = done
	go func() { done <- h.r.Start(ctx) }()
	h.t.Cleanup(func() {
		cancel()
		<-done
	})
}

// stop cancels the loop and returns what Start returned.
func (h *harness) stop() error {
	h.t.Helper()
	h.cancel()
	select {
	case err := <-h.done:
		h.done <- err // for the cleanup
		return err
	case <-testContext(h.t).Done():
		h.t.Fatal("Start did not return after cancel")
		return nil
	}
}

// idle waits until the loop sleeps on its timer and returns the wake-up time.
func (h *harness) idle() time.Time {
	h.t.Helper()
	if err := h.clock.BlockUntilContext(testContext(h.t), 1); err != nil {
		h.t.Fatalf("rotator never went idle: %v (state %+v)", err, h.r.State())
	}
	at, _ := h.clock.NextDeadline()
	return at
}

// advanceToWake moves the clock to the loop's wake-up time and waits until
// the loop sleeps again. It returns the time the clock was moved to.
func (h *harness) advanceToWake() time.Time {
	h.t.Helper()
	at := h.idle()
	h.clock.Set(at)
	h.idle()
	return at
}

func (h *harness) eventKinds() []EventKind {
	h.mu.Lock()
	defer h.mu.Unlock()
	var kinds []EventKind
	for _, ev := range h.events {
		kinds = append(kinds, ev.Kind)
	}
	return kinds
}

func TestRotatorRotatesAtHalfLife(t *testing.T) {
	h := newHarness(t, Options{Name: "spiffe://example.org/ns/default/sa/test"})
	h.start()

	wake := h.idle()
	if got := h.calls.Load(); got != 1 {
		t.Fatalf("obtain calls after start = %d, want 1", got)
	}
	select {
	case <-h.r.Ready():
	default:
		t.Fatal("Ready() not closed after the first success")
	}
	for i := 1; i <= 5; i++ {
		issued := t0.Add(time.Duration(i-1) * 30 * time.Minute)
		if want := issued.Add(30 * time.Minute); !wake.Equal(want) {
			t.Fatalf("rotation %d: loop wakes at %v, want half-life %v", i, wake, want)
		}
		st := h.r.State()
		if st.NextReason != ReasonScheduled || !st.NextAt.Equal(wake) {
			t.Fatalf("rotation %d: state next = %v %s, want %v Scheduled", i, st.NextAt, st.NextReason, wake)
		}
		if got := h.r.Current().Validity().NotBefore; !got.Equal(issued) {
			t.Fatalf("rotation %d: current notBefore = %v, want %v", i, got, issued)
		}
		// One nanosecond early: nothing happens.
		h.clock.Set(wake.Add(-time.Nanosecond))
		if got := h.calls.Load(); got != int64(i) {
			t.Fatalf("rotation %d: obtain calls before half-life = %d, want %d", i, got, i)
		}
		wake = func() time.Time { h.clock.Set(wake); return h.idle() }()
		if got := h.calls.Load(); got != int64(i+1) {
			t.Fatalf("rotation %d: obtain calls at half-life = %d, want %d", i, got, i+1)
		}
	}
	st := h.r.State()
	if st.Rotations != 6 || st.Failures != 0 || st.Attempts != 0 || st.LastError != "" {
		t.Errorf("state = %+v, want 6 rotations and no failure", st)
	}
	if st.Name != "spiffe://example.org/ns/default/sa/test" || st.Current == nil || !st.LastSuccess.Equal(t0.Add(150*time.Minute)) {
		t.Errorf("state = %+v, want name, current validity and last success at t0+150m", st)
	}
}

func TestRotatorDrawsJitterPerCertificate(t *testing.T) {
	draws := []float64{0.5, 1, 0, 0.75} // jitter 0 (no cert), +1, -1, +0.5
	var n int
	h := newHarness(t, Options{Rand: func() float64 { v := draws[n%len(draws)]; n++; return v }})
	h.start()
	want := []time.Duration{36 * time.Minute, 24 * time.Minute, 33 * time.Minute}
	issued := t0
	for i, w := range want {
		wake := h.idle()
		if !wake.Equal(issued.Add(w)) {
			t.Fatalf("certificate %d: renewal at +%v, want +%v", i+1, wake.Sub(issued), w)
		}
		h.clock.Set(wake)
		issued = wake
	}
}

func TestRotatorKeepsServingWhileObtainFails(t *testing.T) {
	var failing atomic.Bool
	h := newHarness(t, Options{Policy: noJitterPolicy})
	h.script = func(context.Context, int64) (*Credential, error) {
		if failing.Load() {
			return nil, errors.New("ca unreachable")
		}
		return nil, nil
	}
	h.start()
	wake := h.idle()
	first := h.r.Current()
	failing.Store(true)

	// Renewal fails at half-life; retries back off 1s, 2s, ... capped at 30s.
	h.clock.Set(wake)
	wantIntervals := []time.Duration{1, 2, 4, 8, 16, 30, 30, 30}
	now := wake
	for i, w := range wantIntervals {
		next := h.idle()
		if got := next.Sub(now); got != w*time.Second {
			t.Fatalf("retry %d: backoff %v, want %v", i+1, got, w*time.Second)
		}
		st := h.r.State()
		if st.Attempts != i+1 || st.Failures != uint64(i+1) || st.NextReason != ReasonRenewalDue ||
			!strings.Contains(st.LastError, "ca unreachable") {
			t.Fatalf("retry %d: state = %+v", i+1, st)
		}
		if h.r.Current() != first {
			t.Fatalf("retry %d: current credential replaced while obtain fails", i+1)
		}
		if i < len(wantIntervals)-1 {
			h.clock.Set(next)
			now = next
		}
	}

	// First success recovers: new credential, counters reset, half-life schedule.
	failing.Store(false)
	recovered := h.advanceToWake()
	st := h.r.State()
	if h.r.Current() == first || st.Attempts != 0 || st.LastError != "" || st.Rotations != 2 || st.Failures != 8 {
		t.Fatalf("after recovery: state = %+v", st)
	}
	if want := recovered.Add(30 * time.Minute); !st.NextAt.Equal(want) || st.NextReason != ReasonScheduled {
		t.Fatalf("after recovery: next = %v %s, want %v Scheduled", st.NextAt, st.NextReason, want)
	}
	kinds := h.eventKinds()
	if kinds[0] != EventRotated || kinds[1] != EventObtainFailed || kinds[len(kinds)-1] != EventRotated {
		t.Errorf("events = %v, want Rotated, ObtainFailed..., Rotated", kinds)
	}
}

// TestRotatorBackoffStaysBoundedUntilAndAfterExpiry lets obtain fail from the
// half-life through expiry, with the default (jittered) policy.
func TestRotatorBackoffStaysBoundedUntilAndAfterExpiry(t *testing.T) {
	var failing atomic.Bool
	h := newHarness(t, Options{Rand: func() float64 { return 0.1 }})
	h.script = func(context.Context, int64) (*Credential, error) {
		if failing.Load() {
			return nil, errors.New("ca unreachable")
		}
		return nil, nil
	}
	h.start()
	h.idle()
	first := h.r.Current()
	notAfter := first.Validity().NotAfter
	failing.Store(true)

	now := h.advanceToWake()
	for i := 0; now.Before(notAfter.Add(5 * time.Minute)); i++ {
		next := h.idle()
		wait := next.Sub(now)
		limit := 30 * time.Second
		if remaining := notAfter.Sub(now); remaining > 0 {
			limit = max(min(limit, remaining/10), time.Second)
		}
		if wait < time.Second || wait > limit {
			t.Fatalf("retry %d at %v before expiry: backoff %v outside [1s, %v]", i, notAfter.Sub(now), wait, limit)
		}
		st := h.r.State()
		if now.Before(notAfter) && st.NextReason != ReasonRenewalDue || !now.Before(notAfter) && st.NextReason != ReasonExpired {
			t.Fatalf("retry %d at %v: reason %s", i, now, st.NextReason)
		}
		if h.r.Current() != first {
			t.Fatal("current credential dropped while obtain fails")
		}
		h.clock.Set(next)
		now = next
	}
	if st := h.r.State(); st.Current == nil || !st.Current.NotAfter.Equal(notAfter) {
		t.Errorf("state current = %v, want the expired credential kept", st.Current)
	}
}

func TestRotatorTriggerCoalesces(t *testing.T) {
	t.Run("many_triggers_during_a_renewal_cause_one_more", func(t *testing.T) {
		started, release := make(chan struct{}), make(chan struct{})
		h := newHarness(t, Options{})
		h.script = func(_ context.Context, n int64) (*Credential, error) {
			if n == 2 {
				close(started)
				<-release
			}
			return nil, nil
		}
		h.start()
		h.idle()
		h.r.Trigger()
		<-started
		for range 10 {
			h.r.Trigger()
		}
		close(release)
		wake := h.idle()
		if got := h.calls.Load(); got != 3 {
			t.Fatalf("obtain calls = %d, want 3 (first, triggered, one coalesced)", got)
		}
		if want := t0.Add(30 * time.Minute); !wake.Equal(want) {
			t.Errorf("next wake = %v, want %v (half-life of the newest credential)", wake, want)
		}
		if st := h.r.State(); st.Rotations != 3 {
			t.Errorf("rotations = %d, want 3", st.Rotations)
		}
	})
	t.Run("many_triggers_before_start_cause_one_obtain", func(t *testing.T) {
		h := newHarness(t, Options{})
		for range 10 {
			h.r.Trigger()
		}
		h.start()
		h.idle()
		if got := h.calls.Load(); got != 1 {
			t.Fatalf("obtain calls = %d, want 1", got)
		}
	})
	t.Run("trigger_renews_before_the_renewal_point", func(t *testing.T) {
		h := newHarness(t, Options{})
		second := make(chan struct{})
		h.script = func(_ context.Context, n int64) (*Credential, error) {
			if n == 2 {
				close(second)
			}
			return nil, nil
		}
		h.start()
		h.idle()
		h.clock.Advance(10 * time.Minute)
		h.r.Trigger()
		<-second // the loop stopped its timer before obtaining
		if at := h.idle(); !at.Equal(t0.Add(40 * time.Minute)) {
			t.Fatalf("next wake = %v, want half-life of the triggered credential %v", at, t0.Add(40*time.Minute))
		}
		if got := h.calls.Load(); got != 2 {
			t.Fatalf("obtain calls = %d, want 2", got)
		}
	})
}

func TestRotatorStopsOnCancel(t *testing.T) {
	t.Run("while_idle", func(t *testing.T) {
		h := newHarness(t, Options{})
		h.start()
		h.idle()
		if err := h.stop(); err != nil {
			t.Fatalf("Start() = %v, want nil on cancel", err)
		}
		if h.clock.Waiters() != 0 {
			t.Errorf("timer left pending after stop")
		}
	})
	t.Run("while_obtaining", func(t *testing.T) {
		h := newHarness(t, Options{})
		inObtain := make(chan struct{})
		h.script = func(ctx context.Context, _ int64) (*Credential, error) {
			close(inObtain)
			<-ctx.Done()
			return nil, ctx.Err()
		}
		h.start()
		<-inObtain
		if err := h.stop(); err != nil {
			t.Fatalf("Start() = %v, want nil on cancel", err)
		}
		if st := h.r.State(); st.Failures != 0 {
			t.Errorf("failures = %d, want 0: cancellation is not a failure", st.Failures)
		}
	})
	t.Run("before_start", func(t *testing.T) {
		h := newHarness(t, Options{})
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := h.r.Start(ctx); err != nil {
			t.Fatalf("Start() = %v, want nil", err)
		}
		if got := h.calls.Load(); got != 0 {
			t.Errorf("obtain calls = %d, want 0", got)
		}
	})
}

func TestRotatorRejectsSecondStart(t *testing.T) {
	h := newHarness(t, Options{})
	h.start()
	h.idle()
	if err := h.r.Start(context.Background()); !errors.Is(err, ErrAlreadyRunning) {
		t.Fatalf("second Start() = %v, want ErrAlreadyRunning", err)
	}
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
	// It can run again after it returned.
	h.start()
	h.idle()
}

func TestRotatorRejectsBadCredentials(t *testing.T) {
	tests := []struct {
		name    string
		make    func(h *harness) *Credential
		wantErr string
	}{
		{"rejects_expired_on_arrival", func(h *harness) *Credential {
			return h.ca.issue(h.t, t0.Add(-2*time.Hour), t0.Add(-time.Hour))
		}, "already expired"},
		{"rejects_key_of_another_certificate", func(h *harness) *Credential {
			a, b := h.ca.issue(h.t, t0, t0.Add(time.Hour)), h.ca.issue(h.t, t0, t0.Add(time.Hour))
			a.Key = b.Key
			return a
		}, "does not match"},
		{"rejects_empty_chain", func(*harness) *Credential { return &Credential{} }, "no certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, Options{Policy: noJitterPolicy})
			h.script = func(context.Context, int64) (*Credential, error) { return tt.make(h), nil }
			h.start()
			wake := h.idle()
			st := h.r.State()
			if h.r.Current() != nil || st.Failures != 1 || !strings.Contains(st.LastError, tt.wantErr) {
				t.Fatalf("state = %+v, want one failure with %q and no credential", st, tt.wantErr)
			}
			if want := t0.Add(time.Second); !wake.Equal(want) || st.NextReason != ReasonNoCertificate {
				t.Fatalf("next = %v %s, want %v NoCertificate", wake, st.NextReason, want)
			}
		})
	}
}

// TestRotatorBacksOffWhenFreshCredentialIsDue guards against a hot loop when
// the CA hands out certificates that are already past their renewal point.
func TestRotatorBacksOffWhenFreshCredentialIsDue(t *testing.T) {
	h := newHarness(t, Options{Policy: noJitterPolicy})
	h.script = func(context.Context, int64) (*Credential, error) {
		now := h.clock.Now()
		return h.ca.issue(h.t, now.Add(-50*time.Minute), now.Add(10*time.Minute)), nil
	}
	h.start()
	wake := h.idle()
	if got := h.calls.Load(); got != 1 || !wake.Equal(t0.Add(time.Second)) {
		t.Fatalf("after first obtain: calls %d, wake +%v; want 1 call and a 1s backoff", got, wake.Sub(t0))
	}
	h.clock.Set(wake)
	if wake2 := h.idle(); !wake2.Equal(wake.Add(2 * time.Second)) {
		t.Fatalf("second backoff +%v, want 2s", wake2.Sub(wake))
	}
	if st := h.r.State(); st.Failures != 0 || st.Rotations != 2 {
		t.Errorf("state = %+v, want 2 rotations, no failure", st)
	}
}

// recordingSink records the credentials it receives and fails while fail
// returns an error.
type recordingSink struct {
	mu   sync.Mutex
	got  []*Credential
	fail func(n int) error
	put  chan *Credential // optional notification
}

func (s *recordingSink) Put(_ context.Context, c *Credential) error {
	s.mu.Lock()
	n := len(s.got) + 1
	s.got = append(s.got, c)
	fail := s.fail
	s.mu.Unlock()
	if s.put != nil {
		s.put <- c
	}
	if fail != nil {
		return fail(n)
	}
	return nil
}

func (s *recordingSink) calls() []*Credential {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*Credential(nil), s.got...)
}

func TestRotatorSinks(t *testing.T) {
	t.Run("pushes_every_credential_to_every_sink", func(t *testing.T) {
		a, b := &recordingSink{}, &recordingSink{}
		h := newHarness(t, Options{Sinks: []Sink{a, MultiSink{b}}})
		h.start()
		h.idle()
		h.advanceToWake()
		for name, s := range map[string]*recordingSink{"a": a, "b": b} {
			got := s.calls()
			if len(got) != 2 || got[1] != h.r.Current() {
				t.Errorf("sink %s got %d credentials, want 2 ending with the current one", name, len(got))
			}
		}
	})
	t.Run("retries_failed_sink_with_backoff_and_keeps_credential", func(t *testing.T) {
		s := &recordingSink{fail: func(n int) error {
			if n <= 3 {
				return errors.New("disk full")
			}
			return nil
		}}
		h := newHarness(t, Options{Policy: noJitterPolicy, Sinks: []Sink{s}})
		h.start()
		now := t0
		for i, w := range []time.Duration{1, 2, 4} {
			next := h.idle()
			if got := next.Sub(now); got != w*time.Second {
				t.Fatalf("sink retry %d: after %v, want %v", i+1, got, w*time.Second)
			}
			st := h.r.State()
			if st.SinkFailures != uint64(i+1) || st.PendingSinks != 1 || !strings.Contains(st.LastSinkError, "disk full") {
				t.Fatalf("sink retry %d: state = %+v", i+1, st)
			}
			if st.Failures != 0 || h.calls.Load() != 1 || h.r.Current() == nil {
				t.Fatalf("sink retry %d: a sink failure must not renew nor drop the credential (state %+v)", i+1, st)
			}
			h.clock.Set(next)
			now = next
		}
		next := h.idle()
		if want := t0.Add(30 * time.Minute); !next.Equal(want) {
			t.Fatalf("after sink recovery: wake %v, want half-life %v", next, want)
		}
		st := h.r.State()
		if st.PendingSinks != 0 || st.LastSinkError != "" || len(s.calls()) != 4 {
			t.Fatalf("after sink recovery: state = %+v, sink calls %d", st, len(s.calls()))
		}
	})
	t.Run("added_sink_gets_current_credential_at_once", func(t *testing.T) {
		h := newHarness(t, Options{})
		h.start()
		h.idle()
		late := &recordingSink{put: make(chan *Credential, 1)}
		remove := h.r.AddSink(late)
		select {
		case c := <-late.put:
			if c != h.r.Current() {
				t.Fatal("added sink got another credential than the current one")
			}
		case <-testContext(t).Done():
			t.Fatal("added sink never got the current credential")
		}
		if h.clock.Now() != t0 {
			t.Fatal("clock moved")
		}
		remove()
		h.advanceToWake()
		if got := len(late.calls()); got != 1 {
			t.Errorf("removed sink got %d credentials, want 1", got)
		}
	})
	t.Run("remove_sink_by_value", func(t *testing.T) {
		s := &recordingSink{}
		h := newHarness(t, Options{Sinks: []Sink{s}})
		if !h.r.RemoveSink(s) {
			t.Fatal("RemoveSink(pointer) = false, want true")
		}
		if h.r.RemoveSink(s) {
			t.Fatal("second RemoveSink = true, want false")
		}
		fn := SinkFunc(func(context.Context, *Credential) error { return nil })
		h.r.AddSink(fn)
		if h.r.RemoveSink(fn) {
			t.Fatal("RemoveSink(SinkFunc) = true, want false (not comparable)")
		}
		h.start()
		h.idle()
		if got := len(s.calls()); got != 0 {
			t.Errorf("removed sink got %d credentials", got)
		}
	})
}

func TestRotatorPolicyDefaultsAndValidation(t *testing.T) {
	t.Run("fills_zero_fields_with_defaults", func(t *testing.T) {
		r := New(nil, Options{Policy: Policy{RenewFraction: 0.7}})
		want := Policy{RenewFraction: 0.7, Jitter: 0, BackoffFloor: time.Second, BackoffCap: 30 * time.Second}
		if r.policy != want {
			t.Fatalf("policy = %+v, want %+v", r.policy, want)
		}
	})
	t.Run("start_rejects_invalid_policy", func(t *testing.T) {
		r := New(nil, Options{Policy: Policy{RenewFraction: 1.5}, Name: "x"})
		err := r.Start(context.Background())
		if !errors.Is(err, ErrInvalidPolicy) || !strings.Contains(err.Error(), "renewFraction") {
			t.Fatalf("Start() = %v, want an invalid policy error naming renewFraction", err)
		}
	})
}

func TestRotatorWaitReady(t *testing.T) {
	h := newHarness(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := h.r.WaitReady(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("WaitReady(canceled) = %v, want context.Canceled", err)
	}
	h.start()
	c, err := h.r.WaitReady(testContext(t))
	if err != nil || c == nil {
		t.Fatalf("WaitReady() = %v, %v", c, err)
	}
}

func TestMultiSinkJoinsErrors(t *testing.T) {
	boom := errors.New("boom")
	var calls int
	ok := SinkFunc(func(context.Context, *Credential) error { calls++; return nil })
	bad := SinkFunc(func(context.Context, *Credential) error { calls++; return boom })
	err := MultiSink{bad, ok, bad}.Put(context.Background(), nil)
	if !errors.Is(err, boom) || calls != 3 || !strings.Contains(err.Error(), "sink 2") {
		t.Fatalf("Put() = %v after %d calls, want boom from sinks 0 and 2 after 3 calls", err, calls)
	}
}

func TestRotatorRecord(t *testing.T) {
	t.Run("a_credential_recorded_before_start_is_renewed_not_obtained_again", func(t *testing.T) {
		s := &recordingSink{}
		h := newHarness(t, Options{Sinks: []Sink{s}})
		cred := h.ca.issue(t, t0, t0.Add(time.Hour))
		if err := h.r.Record(cred, nil); err != nil {
			t.Fatalf("Record: %v", err)
		}
		select {
		case <-h.r.Ready():
		default:
			t.Fatal("Ready() not closed after a recorded credential")
		}
		if h.r.Current() != cred {
			t.Fatal("the recorded credential is not current")
		}
		h.start()
		if wake := h.idle(); !wake.Equal(t0.Add(30 * time.Minute)) {
			t.Fatalf("loop wakes at %v, want the recorded credential's half-life", wake)
		}
		if got := h.calls.Load(); got != 0 {
			t.Fatalf("obtain calls after start = %d, want 0: the recorded credential is current", got)
		}
		if got := s.calls(); len(got) != 1 || got[0] != cred {
			t.Fatalf("sink got %d credentials, want the recorded one", len(got))
		}
		if kinds := h.eventKinds(); len(kinds) != 2 || kinds[0] != EventRotated || kinds[1] != EventSinkUpdated {
			t.Errorf("events = %v, want Rotated, SinkUpdated", kinds)
		}
		h.advanceToWake()
		if got := h.calls.Load(); got != 1 {
			t.Errorf("obtain calls at half-life = %d, want 1", got)
		}
	})
	t.Run("a_recorded_failure_is_retried_after_backoff", func(t *testing.T) {
		h := newHarness(t, Options{Policy: noJitterPolicy})
		errDenied := errors.New("denied")
		if err := h.r.Record(nil, errDenied); !errors.Is(err, errDenied) {
			t.Fatalf("Record = %v, want the recorded error", err)
		}
		st := h.r.State()
		if st.Failures != 1 || st.Attempts != 1 || st.LastError != "denied" || st.Current != nil {
			t.Fatalf("state %+v, want one failed attempt", st)
		}
		h.start()
		if wake := h.idle(); !wake.Equal(t0.Add(time.Second)) {
			t.Fatalf("loop wakes at %v, want after the first backoff (1s)", wake)
		}
		if got := h.calls.Load(); got != 0 {
			t.Fatalf("obtain calls = %d, want 0 before the backoff", got)
		}
		h.advanceToWake()
		if h.calls.Load() != 1 || h.r.Current() == nil {
			t.Fatalf("after the backoff: %d calls, current %v; want one successful call", h.calls.Load(), h.r.Current())
		}
	})
	t.Run("an_unusable_credential_is_recorded_as_a_failure", func(t *testing.T) {
		h := newHarness(t, Options{})
		expired := h.ca.issue(t, t0.Add(-2*time.Hour), t0.Add(-time.Hour))
		if err := h.r.Record(expired, nil); !errors.Is(err, ErrExpiredOnArrival) {
			t.Fatalf("Record(expired) = %v, want ErrExpiredOnArrival", err)
		}
		if err := h.r.Record(&Credential{}, nil); !errors.Is(err, ErrInvalidCredential) {
			t.Fatalf("Record(empty) = %v, want ErrInvalidCredential", err)
		}
		if st := h.r.State(); st.Failures != 2 || st.Current != nil {
			t.Fatalf("state %+v, want two failures and no credential", st)
		}
	})
	t.Run("a_running_loop_takes_a_recorded_credential", func(t *testing.T) {
		s := &recordingSink{put: make(chan *Credential, 4)}
		h := newHarness(t, Options{Sinks: []Sink{s}})
		h.start()
		h.idle()
		<-s.put
		cred := h.ca.issue(t, t0, t0.Add(2*time.Hour))
		if err := h.r.Record(cred, nil); err != nil {
			t.Fatalf("Record: %v", err)
		}
		select {
		case got := <-s.put:
			if got != cred {
				t.Fatal("the sink got another credential than the recorded one")
			}
		case <-testContext(t).Done():
			t.Fatal("the running loop never delivered the recorded credential")
		}
		if wake := h.idle(); !wake.Equal(t0.Add(time.Hour)) {
			t.Errorf("loop wakes at %v, want the recorded credential's half-life", wake)
		}
	})
}

// TestRotatorRenewBy: a deadline before the renewal point moves the next
// renewal to it, once; a later one changes nothing; a past one renews now.
func TestRotatorRenewBy(t *testing.T) {
	h := newHarness(t, Options{Policy: noJitterPolicy})
	h.start()
	if wake := h.idle(); !wake.Equal(t0.Add(30 * time.Minute)) {
		t.Fatalf("first wake = %v, want half-life", wake)
	}

	h.r.RenewBy(t0.Add(time.Hour)) // after the renewal point: no effect
	h.r.RenewBy(t0.Add(5 * time.Minute))
	h.r.RenewBy(t0.Add(7 * time.Minute)) // a later deadline does not win
	if err := waitFor(t, func() bool { at, _ := h.clock.NextDeadline(); return at.Equal(t0.Add(5 * time.Minute)) }); err != nil {
		t.Fatalf("loop did not move its wake-up to the deadline: state %+v", h.r.State())
	}
	if st := h.r.State(); st.NextReason != ReasonRenewBy {
		t.Fatalf("next reason = %s, want RenewBy", st.NextReason)
	}
	renewed := t0.Add(5 * time.Minute)
	if at := h.advanceToWake(); !at.Equal(renewed) {
		t.Fatalf("renewed at %v, want %v", at, renewed)
	}
	if h.calls.Load() != 2 {
		t.Fatalf("obtain calls = %d, want 2", h.calls.Load())
	}
	if wake := h.idle(); !wake.Equal(renewed.Add(30 * time.Minute)) {
		t.Fatalf("after the forced renewal the loop wakes at %v, want the new credential's half-life %v", wake, renewed.Add(30*time.Minute))
	}

	h.r.RenewBy(t0) // already passed: renew now
	if err := waitFor(t, func() bool { return h.calls.Load() == 3 }); err != nil {
		t.Fatal("a passed deadline did not renew at once")
	}
}

// waitFor polls cond until it holds or the test context ends.
func waitFor(t *testing.T, cond func() bool) error {
	ctx := testContext(t)
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
	return nil
}
