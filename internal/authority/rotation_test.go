package authority_test

import (
	"crypto/x509"
	"testing"
	"time"

	"github.com/mayfly-pki/mayfly/internal/authority"
)

const day = 24 * time.Hour

// slotLiving is a slot whose certificate lives from notBefore for life; the
// decisions read nothing else.
func slotLiving(notBefore time.Time, life time.Duration) *authority.Slot {
	return &authority.Slot{Chain: []*x509.Certificate{{NotBefore: notBefore, NotAfter: notBefore.Add(life)}}}
}

func TestRotationPreparePoint(t *testing.T) {
	half, twoThirds := 0.5, 2.0/3.0
	tests := []struct {
		name  string
		life  time.Duration
		cap   time.Duration
		want  time.Duration // after the current key's notBefore
		fixed bool          // want is activate - cap
	}{
		{name: "1-year root, no cap: half life (6 months early)", life: 365 * day, want: 365 * day / 2},
		{name: "1-year root, 30-day cap: 30 days before its activation point", life: 365 * day, cap: 30 * day, fixed: true},
		{name: "1-year root, 1-day cap: 1 day before its activation point", life: 365 * day, cap: day, fixed: true},
		{name: "10-day root, 30-day cap: the cap does not bind, half life", life: 10 * day, cap: 30 * day, want: 5 * day},
		{name: "48h intermediate, default cap: half life", life: 48 * time.Hour, cap: authority.DefaultPolicy().MaxPrepareAhead, want: 24 * time.Hour},
		{name: "30-day intermediate (the longest), default cap: half life", life: 30 * day, cap: authority.DefaultPolicy().MaxPrepareAhead, want: 15 * day},
		{name: "cap equal to the gap between the points: half life", life: 60 * day, cap: 10 * day, want: 30 * day},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := authority.Rotation{Current: slotLiving(t0, tt.life)}
			s := authority.Schedule{PrepareAt: half, ActivateAt: twoThirds, MaxPrepareAhead: tt.cap}
			activate := r.ActivatePoint(s)
			if want := t0.Add(time.Duration(float64(tt.life) * twoThirds)); !activate.Equal(want) {
				t.Fatalf("ActivatePoint = %s, want %s (the cap never moves it)", activate, want)
			}
			want := t0.Add(tt.want)
			if tt.fixed {
				want = activate.Add(-tt.cap)
			}
			got := r.PreparePoint(s)
			if !got.Equal(want) {
				t.Fatalf("PreparePoint = %s (%s before activation), want %s (%s before)", got, activate.Sub(got), want, activate.Sub(want))
			}
			if r.ShouldPrepare(got.Add(-time.Second), s) || !r.ShouldPrepare(got, s) {
				t.Errorf("ShouldPrepare must turn true exactly at %s", got)
			}
			if tt.cap > 0 && activate.Sub(got) > tt.cap {
				t.Errorf("prepared %s before activation, more than the cap %s", activate.Sub(got), tt.cap)
			}
			r.Requested = true
			if now := t0.Add(time.Hour); !r.ShouldPrepare(now, s) {
				t.Error("a requested rotation must prepare at once, cap or not")
			}
		})
	}
}

func TestRotationShouldActivate(t *testing.T) {
	const life = 30 * day
	cur := slotLiving(t0, life)
	activate := t0.Add(20 * day)
	published := t0.Add(15 * day)
	pub := authority.Schedule{PrepareAt: 0.5, ActivateAt: 2.0 / 3.0, Published: true, AdoptionWait: 7 * day, ForceBefore: day}
	unpub := authority.Schedule{PrepareAt: 0.5, ActivateAt: 2.0 / 3.0}
	yes := func() bool { return true }
	no := func() bool { return false }
	tests := []struct {
		name    string
		next    *authority.Slot
		s       authority.Schedule
		now     time.Time
		adopted func() bool
		want    bool
	}{
		{name: "published, adopted, at the activation point", next: slotLiving(published, life), s: pub, now: activate, adopted: yes, want: true},
		{name: "published, adopted, before the activation point", next: slotLiving(published, life), s: pub, now: activate.Add(-time.Second), adopted: yes},
		{name: "published, not adopted, waiting", next: slotLiving(published, life), s: pub, now: activate, adopted: no},
		{name: "published, not adopted, adoption wait over", next: slotLiving(published, life), s: pub, now: published.Add(7 * day), adopted: no, want: true},
		{name: "published, not adopted, current key about to expire", next: slotLiving(published, life), s: pub, now: cur.NotAfter().Add(-day), adopted: no, want: true},
		{name: "published, no adoption report (nil): activates", next: slotLiving(published, life), s: pub, now: activate, want: true},
		{name: "unpublished: activates at the point without asking", next: slotLiving(published, life), s: unpub, now: activate, adopted: no, want: true},
		{name: "no next key", s: unpub, now: activate, adopted: yes},
		{name: "next key expired", next: slotLiving(t0, day), s: unpub, now: activate, adopted: yes},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := authority.Rotation{Current: cur, Next: tt.next}
			if tt.next != nil && tt.s.Published {
				r.NextPublishedAt = published
			}
			if got := r.ShouldActivate(tt.now, tt.s, tt.adopted); got != tt.want {
				t.Fatalf("ShouldActivate = %v, want %v", got, tt.want)
			}
		})
	}
}
