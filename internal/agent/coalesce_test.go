package agent

import (
	"slices"
	"testing"
	"time"

	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// issuedAt is when the tests below obtain their certificates: late enough
// after the test CA's start for the minute of backdate (pki.Backdate).
var issuedAt = epoch.Add(10 * time.Minute)

// TestManagerCoalescesRenewals renews an identity on its schedule (TTL 59m:
// with the CA's minute of backdate a lifetime of 60m, renewed at half of
// it, issuedAt+29m, jitter drawn as 0) beside a second identity, and checks
// whether the second renews with it.
func TestManagerCoalescesRenewals(t *testing.T) {
	tests := []struct {
		name   string
		jitter float64       // the policy's jitter range, of the lifetime
		window time.Duration // CoalesceWindow
		life   time.Duration // the second identity's lifetime (TTL + 1m backdate)
		want   bool          // renewed with the first
	}{
		{
			// renewal point issuedAt+29m30s, earliest issuedAt+26m27s
			name:   "due within the window and allowed by the policy: renewed with the one due",
			jitter: 0.05, window: time.Minute, life: 61 * time.Minute, want: true,
		},
		{
			// renewal point issuedAt+30m30s, earliest issuedAt+27m21s
			name:   "due after the window: renewed on its own schedule",
			jitter: 0.05, window: time.Minute, life: 63 * time.Minute,
		},
		{
			// renewal point issuedAt+29m48s, earliest issuedAt+29m11.04s
			name:   "due within the window, but before the policy's earliest point: not renewed early",
			jitter: 0.01, window: time.Minute, life: 61*time.Minute + 36*time.Second,
		},
		{
			name:   "coalescing off (negative window): renewed on its own schedule",
			jitter: 0.05, window: -1, life: 61 * time.Minute,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newManager(t, true, func(c *ManagerConfig) {
				c.Policy = rotate.Policy{RenewFraction: 0.5, Jitter: tt.jitter}
				c.CoalesceWindow = tt.window
				c.Rand = func() float64 { return 0.5 } // jitter 0: the renewal point at half life
			})
			h.ca.grant(idWeb, idDB)
			h.clk.Set(issuedAt)
			h.get(Spec{Key: idWeb, SpiffeID: idWeb, TTL: 59 * time.Minute, Pinned: true})
			h.get(Spec{Key: idDB, SpiffeID: idDB, TTL: tt.life - time.Minute, Pinned: true})
			h.settle(2)
			web, db := h.rotator(idWeb), h.rotator(idDB)
			if got, want := web.State().NextAt, issuedAt.Add(29*time.Minute); !got.Equal(want) {
				t.Fatalf("%s renews at %s, want %s", idWeb, got, want)
			}
			dbAt := issuedAt.Add(-time.Minute + tt.life/2)
			if got := db.State().NextAt; !got.Equal(dbAt) {
				t.Fatalf("%s renews at %s, want %s", idDB, got, dbAt)
			}

			h.clk.Set(issuedAt.Add(29 * time.Minute))
			h.ca.waitItems(t, 3)
			if tt.want {
				h.ca.waitItems(t, 4)
			}
			h.settle(2)
			if got := web.State().Rotations; got != 2 {
				t.Fatalf("%s: %d certificates, want 2", idWeb, got)
			}
			rotations := db.State().Rotations
			if renewed := rotations == 2; renewed != tt.want {
				t.Fatalf("%s renewed with %s: %v, want %v (%d certificates)", idDB, idWeb, renewed, tt.want, rotations)
			}
			if !tt.want {
				if got := db.State().NextAt; !got.Equal(dbAt) {
					t.Fatalf("%s now renews at %s, want still %s", idDB, got, dbAt)
				}
				return
			}
			if got := db.State().Current.NotBefore; !got.Equal(issuedAt.Add(28 * time.Minute)) {
				t.Errorf("%s's new certificate starts at %s, want the renewal at issuedAt+29m less the backdate", idDB, got)
			}
			calls, items := h.ca.counts()
			t.Logf("%d items in %d calls (the two renewals share one call unless they missed the Batcher's window)", items, calls)
		})
	}
}

// TestManagerTriggeredRenewalCoalescesNothing: a renewal triggered ahead of
// its schedule (by coalescing, or by anyone) does not trigger others, so
// renewals do not pull each other ever earlier.
func TestManagerTriggeredRenewalCoalescesNothing(t *testing.T) {
	h := newManager(t, true, func(c *ManagerConfig) {
		c.Policy = rotate.Policy{RenewFraction: 0.5, Jitter: 0.05}
		c.CoalesceWindow = time.Minute
		c.Rand = func() float64 { return 0.5 }
	})
	h.ca.grant(idWeb, idDB)
	h.clk.Set(issuedAt)
	h.get(Spec{Key: idWeb, SpiffeID: idWeb, TTL: 59 * time.Minute, Pinned: true}) // renewal point issuedAt+29m
	h.get(Spec{Key: idDB, SpiffeID: idDB, TTL: 60 * time.Minute, Pinned: true})   // issuedAt+29m30s
	h.settle(2)
	h.clk.Set(issuedAt.Add(28*time.Minute + 45*time.Second)) // web's earliest point passed, db's too
	h.rotator(idWeb).Trigger()
	h.ca.waitItems(t, 3)
	h.settle(2)
	if got := h.rotator(idDB).State().Rotations; got != 1 {
		t.Fatalf("%s: %d certificates after %s's triggered renewal, want 1", idDB, got, idWeb)
	}
}

func (h *managerHarness) rotator(key string) *rotate.Rotator {
	h.t.Helper()
	rots := h.m.Rotators()
	i := slices.IndexFunc(rots, func(r *rotate.Rotator) bool { return r.State().Name == key })
	if i < 0 {
		h.t.Fatalf("no rotator for %s", key)
	}
	return rots[i]
}
