package rotate

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

func validity(notBefore time.Time, life time.Duration) *Validity {
	return &Validity{NotBefore: notBefore, NotAfter: notBefore.Add(life)}
}

func TestPolicyNext(t *testing.T) {
	def := DefaultPolicy()
	noJitter := Policy{RenewFraction: 0.5, Jitter: 0, BackoffFloor: time.Second, BackoffCap: 30 * time.Second}
	hour := validity(t0, time.Hour)

	tests := []struct {
		name    string
		policy  Policy
		v       *Validity
		now     time.Time
		attempt int
		jitter  float64
		want    Decision
	}{
		{"obtains_at_once_without_certificate", def, nil, t0, 0, 0.3,
			Decision{t0, ReasonNoCertificate}},
		{"backs_off_without_certificate_after_failure", def, nil, t0, 1, 1,
			Decision{t0.Add(time.Second), ReasonNoCertificate}},
		{"doubles_backoff_without_certificate", def, nil, t0, 4, 1,
			Decision{t0.Add(8 * time.Second), ReasonNoCertificate}},
		{"backoff_without_certificate_capped_at_backoff_cap", def, nil, t0, 40, 1,
			Decision{t0.Add(30 * time.Second), ReasonNoCertificate}},
		{"backoff_jitter_shortens_by_up_to_jitter_fraction", def, nil, t0, 4, -1,
			Decision{t0.Add(7200 * time.Millisecond), ReasonNoCertificate}},
		{"backoff_jitter_zero_is_middle_of_band", def, nil, t0, 4, 0,
			Decision{t0.Add(7600 * time.Millisecond), ReasonNoCertificate}},
		{"backoff_jitter_never_below_floor", def, nil, t0, 1, -1,
			Decision{t0.Add(time.Second), ReasonNoCertificate}},

		{"renews_at_half_life_without_jitter", def, hour, t0.Add(time.Minute), 0, 0,
			Decision{t0.Add(30 * time.Minute), ReasonScheduled}},
		{"renews_at_half_life_with_jitter", def, hour, t0.Add(time.Minute), 0, 0.5,
			Decision{t0.Add(33 * time.Minute), ReasonScheduled}},
		{"renews_at_latest_with_max_jitter", def, hour, t0, 0, 1,
			Decision{t0.Add(36 * time.Minute), ReasonScheduled}},
		{"renews_at_earliest_with_min_jitter", def, hour, t0, 0, -1,
			Decision{t0.Add(24 * time.Minute), ReasonScheduled}},
		{"clamps_jitter_above_one", def, hour, t0, 0, 7,
			Decision{t0.Add(36 * time.Minute), ReasonScheduled}},
		{"clamps_jitter_below_minus_one", def, hour, t0, 0, -7,
			Decision{t0.Add(24 * time.Minute), ReasonScheduled}},
		{"treats_nan_jitter_as_zero", def, hour, t0, 0, math.NaN(),
			Decision{t0.Add(30 * time.Minute), ReasonScheduled}},
		{"honours_custom_fraction", Policy{RenewFraction: 0.8, Jitter: 0.1, BackoffFloor: time.Second, BackoffCap: time.Minute},
			hour, t0, 0, 0, Decision{t0.Add(48 * time.Minute), ReasonScheduled}},

		{"renews_now_when_renewal_point_reached", def, hour, t0.Add(30 * time.Minute), 0, 0,
			Decision{t0.Add(30 * time.Minute), ReasonRenewalDue}},
		{"renews_now_after_renewal_point", def, hour, t0.Add(40 * time.Minute), 0, 0,
			Decision{t0.Add(40 * time.Minute), ReasonRenewalDue}},
		{"backs_off_after_failed_renewal", noJitter, hour, t0.Add(40 * time.Minute), 1, 0,
			Decision{t0.Add(40*time.Minute + time.Second), ReasonRenewalDue}},
		{"doubles_backoff_after_failed_renewals", noJitter, hour, t0.Add(40 * time.Minute), 5, 0,
			Decision{t0.Add(40*time.Minute + 16*time.Second), ReasonRenewalDue}},
		{"caps_backoff_at_backoff_cap", noJitter, hour, t0.Add(40 * time.Minute), 6, 0,
			Decision{t0.Add(40*time.Minute + 30*time.Second), ReasonRenewalDue}},
		{"caps_backoff_at_tenth_of_remaining_life", noJitter, hour, t0.Add(59 * time.Minute), 10, 0,
			Decision{t0.Add(59*time.Minute + 6*time.Second), ReasonRenewalDue}},
		{"floor_wins_when_tenth_of_remaining_life_is_below_it", noJitter, hour, t0.Add(59*time.Minute + 55*time.Second), 10, 0,
			Decision{t0.Add(59*time.Minute + 56*time.Second), ReasonRenewalDue}},
		{"does_not_overflow_at_attempt_40", noJitter, hour, t0.Add(40 * time.Minute), 40, 0,
			Decision{t0.Add(40*time.Minute + 30*time.Second), ReasonRenewalDue}},
		{"does_not_overflow_with_huge_cap", Policy{RenewFraction: 0.5, BackoffFloor: time.Hour, BackoffCap: time.Duration(math.MaxInt64)},
			nil, t0, 40, 0, Decision{t0.Add(time.Duration(math.MaxInt64)), ReasonNoCertificate}},

		{"retries_failed_early_renewal_after_backoff", noJitter, hour, t0.Add(5 * time.Minute), 2, 0,
			Decision{t0.Add(5*time.Minute + 2*time.Second), ReasonRetry}},
		{"retries_failed_early_renewal_no_later_than_renewal_point", noJitter, hour, t0.Add(30*time.Minute - 500*time.Millisecond), 1, 0,
			Decision{t0.Add(30 * time.Minute), ReasonRetry}},

		{"renews_at_once_when_expired", def, hour, t0.Add(2 * time.Hour), 0, 0,
			Decision{t0.Add(2 * time.Hour), ReasonExpired}},
		{"renews_at_once_at_not_after", def, hour, t0.Add(time.Hour), 0, 0,
			Decision{t0.Add(time.Hour), ReasonExpired}},
		{"renews_at_once_when_clock_jumped_past_expiry", def, hour, t0.Add(365 * 24 * time.Hour), 0, 0.9,
			Decision{t0.Add(365 * 24 * time.Hour), ReasonExpired}},
		{"backs_off_when_expired_with_full_cap", noJitter, hour, t0.Add(2 * time.Hour), 40, 0,
			Decision{t0.Add(2*time.Hour + 30*time.Second), ReasonExpired}},

		{"schedules_from_not_before_in_the_future", def, validity(t0.Add(10*time.Minute), time.Hour), t0, 0, 0,
			Decision{t0.Add(40 * time.Minute), ReasonNotYetValid}},
		{"schedules_from_not_before_in_the_future_with_min_jitter", def, validity(t0.Add(10*time.Minute), time.Hour), t0, 0, -1,
			Decision{t0.Add(34 * time.Minute), ReasonNotYetValid}},
		{"retries_failed_renewal_of_not_yet_valid_certificate_after_backoff", noJitter, validity(t0.Add(10*time.Minute), time.Hour), t0, 1, 0,
			Decision{t0.Add(time.Second), ReasonRetry}},

		{"treats_zero_length_validity_as_expired", def, validity(t0.Add(time.Hour), 0), t0, 0, 0,
			Decision{t0, ReasonExpired}},
		{"treats_inverted_validity_as_expired", def, &Validity{NotBefore: t0.Add(time.Hour), NotAfter: t0}, t0.Add(-time.Hour), 0, 0,
			Decision{t0.Add(-time.Hour), ReasonExpired}},
		{"backs_off_on_zero_length_validity", noJitter, validity(t0, 0), t0, 3, 0,
			Decision{t0.Add(4 * time.Second), ReasonExpired}},
		{"survives_validity_longer_than_duration_range", def,
			&Validity{NotBefore: time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC), NotAfter: time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)},
			t0, 0, 0, Decision{time.Date(5000, 1, 1, 0, 0, 0, 0, time.UTC), ReasonScheduled}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.policy.Next(tt.v, tt.now, tt.attempt, tt.jitter)
			if !got.At.Equal(tt.want.At) || got.Reason != tt.want.Reason {
				t.Errorf("Next() = %v (%s, +%v from now), want %v (%s, +%v from now)",
					got.At, got.Reason, got.At.Sub(tt.now), tt.want.At, tt.want.Reason, tt.want.At.Sub(tt.now))
			}
		})
	}
}

func TestPolicyNextLifetimes(t *testing.T) {
	lifetimes := []time.Duration{time.Minute, 5 * time.Minute, time.Hour, 24 * time.Hour, 48 * time.Hour, 365 * 24 * time.Hour}
	for _, life := range lifetimes {
		for _, j := range []float64{-1, -0.5, 0, 0.5, 1} {
			t.Run(fmt.Sprintf("renews_%v_lifetime_at_%.0f%%", life, 100*(0.5+0.1*j)), func(t *testing.T) {
				v := validity(t0, life)
				got := DefaultPolicy().Next(v, t0, 0, j)
				want := t0.Add(time.Duration((0.5 + 0.1*j) * float64(life)))
				if d := got.At.Sub(want).Abs(); d > time.Microsecond || got.Reason != ReasonScheduled {
					t.Errorf("Next() = %v (%s), want %v (Scheduled)", got.At, got.Reason, want)
				}
				// Past the renewal point, retries stay within 10% of the remaining life.
				now := got.At.Add(time.Nanosecond)
				for attempt := 1; attempt <= 40; attempt++ {
					d := DefaultPolicy().Next(v, now, attempt, j)
					wait := d.At.Sub(now)
					capD := max(min(30*time.Second, v.NotAfter.Sub(now)/10), time.Second)
					if d.Reason != ReasonRenewalDue || wait < time.Second || wait > capD {
						t.Fatalf("attempt %d: Next() = +%v (%s), want RenewalDue within [1s, %v]", attempt, wait, d.Reason, capD)
					}
				}
			})
		}
	}
}

// TestPolicyNextProperties checks invariants over random inputs: the result
// is never before now, the backoff is bounded and grows with the attempts.
func TestPolicyNextProperties(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	p := DefaultPolicy()
	for i := range 20000 {
		life := time.Duration(rng.Int64N(int64(400 * 24 * time.Hour)))
		v := validity(t0, life)
		if rng.IntN(10) == 0 {
			v = nil
		}
		now := t0.Add(time.Duration(rng.Int64N(int64(2*life+time.Hour))) - time.Hour)
		jitter := rng.Float64()*2.2 - 1.1
		var prev time.Duration
		for attempt := 0; attempt <= 40; attempt++ {
			d := p.Next(v, now, attempt, jitter)
			if d.At.Before(now) {
				t.Fatalf("case %d attempt %d: Next() = %v before now %v", i, attempt, d.At, now)
			}
			if v != nil && d.Reason == ReasonScheduled && !d.At.Before(v.NotAfter) {
				t.Fatalf("case %d: scheduled at %v, not before notAfter %v", i, d.At, v.NotAfter)
			}
			wait := d.At.Sub(now)
			if attempt > 0 && d.Reason != ReasonRetry && d.Reason != ReasonScheduled && d.Reason != ReasonNotYetValid {
				if wait < p.BackoffFloor || wait > p.BackoffCap {
					t.Fatalf("case %d attempt %d: backoff %v outside [%v, %v]", i, attempt, wait, p.BackoffFloor, p.BackoffCap)
				}
				if wait < prev {
					t.Fatalf("case %d attempt %d: backoff %v shrank from %v", i, attempt, wait, prev)
				}
				prev = wait
			}
		}
	}
}

func TestPolicyValidate(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(*Policy)
		wantErr []string // substrings; nil means valid
	}{
		{"accepts_default", func(*Policy) {}, nil},
		{"accepts_zero_jitter", func(p *Policy) { p.Jitter = 0 }, nil},
		{"accepts_cap_equal_to_floor", func(p *Policy) { p.BackoffCap = p.BackoffFloor }, nil},
		{"rejects_fraction_of_one_and_more", func(p *Policy) { p.RenewFraction = 1.2 },
			[]string{"renewFraction: must be in (0,1), got 1.2"}},
		{"rejects_zero_fraction", func(p *Policy) { p.RenewFraction = 0 }, []string{"renewFraction: must be in (0,1), got 0"}},
		{"rejects_nan_fraction", func(p *Policy) { p.RenewFraction = math.NaN() }, []string{"renewFraction:"}},
		{"rejects_negative_jitter", func(p *Policy) { p.Jitter = -0.1 }, []string{"jitter: must be in [0,1), got -0.1"}},
		{"rejects_nan_jitter", func(p *Policy) { p.Jitter = math.NaN() }, []string{"jitter: must be in [0,1)"}},
		{"rejects_jitter_leaving_the_lifetime", func(p *Policy) { p.RenewFraction, p.Jitter = 0.9, 0.2 },
			[]string{"jitter: renewFraction±jitter must stay inside (0,1), got 0.9±0.2"}},
		{"rejects_zero_floor", func(p *Policy) { p.BackoffFloor = 0 }, []string{"backoffFloor: must be > 0, got 0s"}},
		{"rejects_cap_below_floor", func(p *Policy) { p.BackoffCap = 500 * time.Millisecond },
			[]string{"backoffCap: must be >= backoffFloor (1s), got 500ms"}},
		{"reports_every_invalid_field", func(p *Policy) { *p = Policy{RenewFraction: 2, Jitter: 1, BackoffFloor: -1, BackoffCap: -2} },
			[]string{"renewFraction:", "jitter:", "backoffFloor:", "backoffCap:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := DefaultPolicy()
			tt.mutate(&p)
			err := p.Validate()
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil, want an error with %q", tt.wantErr)
			}
			if !errors.Is(err, ErrInvalidPolicy) {
				t.Errorf("Validate() = %v, does not wrap ErrInvalidPolicy", err)
			}
			if !strings.HasPrefix(err.Error(), strings.SplitN(tt.wantErr[0], ":", 2)[0]+":") {
				t.Errorf("Validate() = %q, want it to start with the field name", err)
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("Validate() = %q, want it to contain %q", err, want)
				}
			}
		})
	}
}
