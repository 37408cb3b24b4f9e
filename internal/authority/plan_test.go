package authority_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

func TestPlan(t *testing.T) {
	p := testPolicy()
	m := newMinter(p)
	never := func() bool { return false }
	always := func() bool { return true }

	// Shared fixtures; Plan and Apply never modify their input.
	fresh := bootstrap(t, m, t0)
	inter0 := fresh.Intermediate.Current.Cert()
	root0 := fresh.Root.Current.Cert()
	rootPrepare := point(root0, p.PrepareAt)
	rootActivate := point(root0, p.ActivateAt)

	prepared := apply(t, m, fresh, authority.StepPrepareIntermediate, point(inter0, p.PrepareAt))

	// A state whose next root was published at rootPrepare, with an
	// intermediate minted at mintAt (so that its own points are known).
	withNextRoot := func(mintAt time.Time) *authority.State {
		s := apply(t, m, fresh, authority.StepPrepareRoot, rootPrepare)
		return apply(t, m, s, authority.StepReplaceIntermediate, mintAt)
	}
	ackDeadline := rootPrepare.Add(p.RootAckWait)
	if !ackDeadline.After(rootActivate) {
		t.Fatalf("test policy: ack deadline %s must lie after the root's activation point %s", ackDeadline, rootActivate)
	}

	// Root activated at rootActivate with an intermediate that was at half
	// life then: the old root is retired until that intermediate expires.
	preActivation := withNextRoot(rootActivate.Add(-12 * time.Hour))
	activated := apply(t, m, preActivation, authority.StepActivateRoot, rootActivate)

	up := newFakeUpstream(t, func() time.Time { return t0 })
	upMinter := newMinter(p)
	upMinter.Upstream = up
	upstream := bootstrap(t, upMinter, t0)

	longAckWait := p
	longAckWait.RootAckWait = 30 * 24 * time.Hour

	// Preparation capped to 1 day before the root's activation point
	// (later than its half life).
	capped := p
	capped.RootAckWait, capped.MaxPrepareAhead = 12*time.Hour, 24*time.Hour
	cappedPrepare := rootActivate.Add(-capped.MaxPrepareAhead)
	if !cappedPrepare.After(rootPrepare) {
		t.Fatalf("test policy: the capped preparation %s must lie after the root's half life %s", cappedPrepare, rootPrepare)
	}
	// An intermediate minted an hour before cappedPrepare: its own
	// points lie after it.
	beforeCappedPrepare := apply(t, m, fresh, authority.StepReplaceIntermediate, cappedPrepare.Add(-time.Hour))

	tests := []struct {
		name      string
		state     *authority.State
		now       time.Time
		acks      authority.BundleAcks
		policy    *authority.Policy // default p
		wantSteps []authority.Step
		// wantNext is checked when not zero.
		wantNext time.Time
	}{
		{
			name:     "fresh state: nothing due, next look at the intermediate's half life",
			state:    fresh,
			now:      t0,
			wantNext: point(inter0, 0.5),
		},
		{
			name:     "one second before half life: nothing due yet",
			state:    fresh,
			now:      point(inter0, 0.5).Add(-time.Second),
			wantNext: point(inter0, 0.5),
		},
		{
			name:      "intermediate at half life: prepares the next intermediate",
			state:     fresh,
			now:       point(inter0, 0.5),
			wantSteps: []authority.Step{authority.StepPrepareIntermediate},
			wantNext:  point(inter0, 0.5),
		},
		{
			name:     "next intermediate prepared: waits for two thirds",
			state:    prepared,
			now:      point(inter0, 0.6),
			wantNext: point(inter0, 2.0/3.0),
		},
		{
			name:      "intermediate at two thirds with a next: activates it",
			state:     prepared,
			now:       point(inter0, 2.0/3.0),
			wantSteps: []authority.Step{authority.StepActivateIntermediate},
		},
		{
			name:      "intermediate expired but its successor is valid: activates the successor",
			state:     prepared,
			now:       inter0.NotAfter.Add(time.Hour),
			wantSteps: []authority.Step{authority.StepActivateIntermediate},
		},
		{
			name:      "intermediate expired with no next (CA down 3 days): replaces it",
			state:     fresh,
			now:       t0.Add(72 * time.Hour),
			wantSteps: []authority.Step{authority.StepReplaceIntermediate},
		},
		{
			name:      "intermediate and its successor both expired: replaces it",
			state:     prepared,
			now:       prepared.Intermediate.Next.Cert().NotAfter,
			wantSteps: []authority.Step{authority.StepReplaceIntermediate},
		},
		{
			name:      "root at half life: prepares the next root",
			state:     apply(t, m, fresh, authority.StepReplaceIntermediate, rootPrepare),
			now:       rootPrepare,
			wantSteps: []authority.Step{authority.StepPrepareRoot},
		},
		{
			name:     "prepare cap: root past half life, before activation minus the cap: waits for that",
			state:    beforeCappedPrepare,
			now:      cappedPrepare.Add(-time.Second),
			policy:   &capped,
			wantNext: cappedPrepare,
		},
		{
			name:      "prepare cap: root at activation minus the cap: prepares the next root",
			state:     beforeCappedPrepare,
			now:       cappedPrepare,
			policy:    &capped,
			wantSteps: []authority.Step{authority.StepPrepareRoot},
		},
		{
			name:      "prepare cap: a requested root rotation prepares at once",
			state:     requested(t, apply(t, m, fresh, authority.StepReplaceIntermediate, rootPrepare)),
			now:       rootPrepare,
			policy:    &capped,
			wantSteps: []authority.Step{authority.StepPrepareRoot},
		},
		{
			name:     "next root published: waits for the root's two thirds",
			state:    withNextRoot(rootActivate.Add(-time.Hour)),
			now:      rootActivate.Add(-time.Minute),
			acks:     always,
			wantNext: rootActivate,
		},
		{
			name:     "root at two thirds, next root not acked: waits and looks again soon",
			state:    withNextRoot(rootActivate),
			now:      rootActivate,
			acks:     never,
			wantNext: rootActivate.Add(10 * time.Second),
		},
		{
			name:     "root ack wait almost over: still waits",
			state:    withNextRoot(ackDeadline),
			now:      ackDeadline.Add(-time.Second),
			acks:     never,
			wantNext: ackDeadline,
		},
		{
			name:      "root ack wait over since the next root was published: activates without acks",
			state:     withNextRoot(ackDeadline),
			now:       ackDeadline,
			acks:      never,
			wantSteps: []authority.Step{authority.StepActivateRoot},
		},
		{
			name:     "root at two thirds, agents acked but the Kubernetes objects not: waits",
			state:    withNextRoot(rootActivate),
			now:      rootActivate,
			acks:     authority.AllOf(always, never),
			wantNext: rootActivate.Add(10 * time.Second),
		},
		{
			name:      "root ack wait over, Kubernetes objects still lag: activates (the wait bounds every gate)",
			state:     withNextRoot(ackDeadline),
			now:       ackDeadline,
			acks:      authority.AllOf(always, never),
			wantSteps: []authority.Step{authority.StepActivateRoot},
		},
		{
			name:      "root at two thirds, agents and Kubernetes objects hold the next root: activates",
			state:     withNextRoot(rootActivate.Add(-12 * time.Hour)),
			now:       rootActivate,
			acks:      authority.AllOf(always, always),
			wantSteps: []authority.Step{authority.StepActivateRoot},
		},
		{
			name:      "root at two thirds, every agent acked: activates the root and no intermediate step",
			state:     withNextRoot(rootActivate.Add(-12 * time.Hour)), // intermediate past half life
			now:       rootActivate,
			acks:      always,
			wantSteps: []authority.Step{authority.StepActivateRoot},
		},
		{
			name:     "root one second before its forced point, no acks, long ack wait: waits",
			state:    withNextRoot(root0.NotAfter.Add(-p.IntermediateTTL)),
			now:      root0.NotAfter.Add(-p.IntermediateTTL - time.Second),
			acks:     never,
			policy:   &longAckWait,
			wantNext: root0.NotAfter.Add(-p.IntermediateTTL + 9*time.Second),
		},
		{
			name:      "root near its end without acks: activates (an intermediate must still fit)",
			state:     withNextRoot(root0.NotAfter.Add(-p.IntermediateTTL)),
			now:       root0.NotAfter.Add(-p.IntermediateTTL),
			acks:      never,
			policy:    &longAckWait,
			wantSteps: []authority.Step{authority.StepActivateRoot},
		},
		{
			name:     "retired root before its Until: kept",
			state:    activated,
			now:      rootActivate.Add(time.Hour),
			wantNext: minTime(activated.Root.Retired[0].Until, point(activated.Intermediate.Current.Cert(), 0.5)),
		},
		{
			name:      "retired root past its Until: drops it (and the intermediate rotates as usual)",
			state:     activated,
			now:       activated.Root.Retired[0].Until,
			wantSteps: []authority.Step{authority.StepDropRetired, authority.StepPrepareIntermediate},
		},
		{
			name:     "upstream mode at the fresh state: nothing due",
			state:    upstream,
			now:      t0,
			wantNext: point(upstream.Intermediate.Current.Cert(), 0.5),
		},
		{
			name:      "upstream mode at half of the root TTL: only intermediate steps",
			state:     upstream,
			now:       t0.Add(p.RootTTL / 2),
			acks:      always,
			wantSteps: []authority.Step{authority.StepReplaceIntermediate},
		},
		{
			name:      "upstream mode far past the root TTL: never plans root steps",
			state:     upstream,
			now:       t0.Add(3 * p.RootTTL),
			acks:      always,
			wantSteps: []authority.Step{authority.StepReplaceIntermediate},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pol := p
			if tt.policy != nil {
				pol = *tt.policy
			}
			d := authority.Plan(tt.state, tt.now, pol, tt.acks)
			if !slices.Equal(d.Steps, tt.wantSteps) {
				t.Fatalf("steps = %v, want %v (reason %q)", d.Steps, tt.wantSteps, d.Reason)
			}
			if len(d.Steps) > 0 {
				if !d.Next.Equal(tt.now) {
					t.Errorf("Next = %s with steps due, want now (%s)", d.Next, tt.now)
				}
				if d.Reason == "" {
					t.Error("Reason is empty although steps are due")
				}
				return
			}
			if !d.Next.After(tt.now) {
				t.Errorf("Next = %s, want after now (%s) when nothing is due", d.Next, tt.now)
			}
			if !tt.wantNext.IsZero() && !d.Next.Equal(tt.wantNext) {
				t.Errorf("Next = %s, want %s", d.Next, tt.wantNext)
			}
		})
	}
}

// TestPlanAppliedStepsConverge applies every decision until nothing is due:
// whatever Plan asks for, Apply can do, and a second Plan at the same instant
// is quiet (no step is planned twice).
func TestPlanAppliedStepsConverge(t *testing.T) {
	capped := testPolicy()
	capped.RootAckWait, capped.MaxPrepareAhead = 12*time.Hour, 24*time.Hour
	for name, p := range map[string]authority.Policy{"test policy": testPolicy(), "preparation capped": capped} {
		t.Run(name, func(t *testing.T) { testPlanConverges(t, p) })
	}
}

func testPlanConverges(t *testing.T, p authority.Policy) {
	m := newMinter(p)
	s := bootstrap(t, m, t0)
	now := t0
	end := t0.Add(p.RootTTL + 48*time.Hour)
	for i := 0; now.Before(end); i++ {
		if i > 10000 {
			t.Fatal("too many plans")
		}
		d := authority.Plan(s, now, p, nil)
		for _, step := range d.Steps {
			if ahead := point(s.Root.Current.Cert(), p.ActivateAt).Sub(now); step == authority.StepPrepareRoot && p.MaxPrepareAhead > 0 && ahead > p.MaxPrepareAhead {
				t.Fatalf("at %s: next root prepared %s before the activation point, more than the cap %s", now, ahead, p.MaxPrepareAhead)
			}
			s = apply(t, m, s, step, now)
		}
		if len(d.Steps) > 0 {
			if again := authority.Plan(s, now, p, nil); len(again.Steps) > 0 {
				t.Fatalf("at %s after %v: Plan wants %v again", now, d.Steps, again.Steps)
			}
			continue
		}
		if !now.Before(s.Intermediate.Current.Cert().NotAfter) {
			t.Fatalf("at %s the signing intermediate has expired (notAfter %s)", now, s.Intermediate.Current.Cert().NotAfter)
		}
		if !now.Before(s.Root.Current.Cert().NotAfter) {
			t.Fatalf("at %s the signing root has expired", now)
		}
		now = d.Next
	}
	if s.Generation == 0 {
		t.Fatal("no rotation happened across a whole root lifetime")
	}
}

// requested returns a copy of s with a root rotation requested.
func requested(t *testing.T, s *authority.State) *authority.State {
	t.Helper()
	n := *s
	n.Root.Requested = true
	return &n
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func TestPolicyValidate(t *testing.T) {
	tests := []struct {
		name    string
		modify  func(p *authority.Policy)
		wantErr string // prefix naming the field; "" means valid
	}{
		{name: "default policy is valid", modify: func(*authority.Policy) {}},
		{name: "test policy is valid", modify: func(p *authority.Policy) { *p = testPolicy() }},
		{name: "zero ack wait is valid", modify: func(p *authority.Policy) { p.RootAckWait = 0 }},
		{name: "root TTL below 1h", modify: func(p *authority.Policy) { p.RootTTL = 59 * time.Minute }, wantErr: "rotation.rootTTL:"},
		{name: "intermediate TTL at the signing minimum (1h) is valid", modify: func(p *authority.Policy) { p.IntermediateTTL = pki.MinIntermediateTTL }},
		{name: "intermediate TTL below the signing minimum", modify: func(p *authority.Policy) { p.IntermediateTTL = 30 * time.Minute }, wantErr: "rotation.intermediateTTL:"},
		{name: "intermediate TTL above the signing maximum", modify: func(p *authority.Policy) { p.IntermediateTTL = pki.MaxIntermediateTTL + time.Hour }, wantErr: "rotation.intermediateTTL:"},
		{name: "intermediate TTL above half the root TTL", modify: func(p *authority.Policy) { p.IntermediateTTL = p.RootTTL/2 + time.Second }, wantErr: "rotation.intermediateTTL:"},
		{name: "prepareAt zero", modify: func(p *authority.Policy) { p.PrepareAt = 0 }, wantErr: "rotation.prepareAt:"},
		{name: "prepareAt one", modify: func(p *authority.Policy) { p.PrepareAt = 1 }, wantErr: "rotation.prepareAt:"},
		{name: "activateAt before prepareAt", modify: func(p *authority.Policy) { p.ActivateAt = 0.4 }, wantErr: "rotation.activateAt:"},
		{name: "activateAt equal to prepareAt", modify: func(p *authority.Policy) { p.ActivateAt = p.PrepareAt }, wantErr: "rotation.activateAt:"},
		{name: "activateAt one", modify: func(p *authority.Policy) { p.ActivateAt = 1 }, wantErr: "rotation.activateAt:"},
		{name: "negative ack wait", modify: func(p *authority.Policy) { p.RootAckWait = -time.Second }, wantErr: "rotation.rootAckWait:"},
		{name: "no prepare cap (0) is valid", modify: func(p *authority.Policy) { p.MaxPrepareAhead = 0 }},
		{name: "prepare cap equal to the ack wait is valid", modify: func(p *authority.Policy) { p.MaxPrepareAhead = p.RootAckWait }},
		{name: "prepare cap longer than the root's life is valid (never binds)", modify: func(p *authority.Policy) { p.MaxPrepareAhead = 2 * p.RootTTL }},
		{name: "prepare cap below the ack wait", modify: func(p *authority.Policy) { p.MaxPrepareAhead = p.RootAckWait - time.Second }, wantErr: "rotation.maxPrepareAhead:"},
		{name: "negative prepare cap", modify: func(p *authority.Policy) { p.MaxPrepareAhead = -time.Hour }, wantErr: "rotation.maxPrepareAhead: must not be negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := authority.DefaultPolicy()
			tt.modify(&p)
			err := p.Validate()
			if err == nil {
				// A valid policy must be one the Minter can mint with.
				bootstrap(t, newMinter(p), t0)
			}
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Validate() = %v, want nil", err)
			case tt.wantErr != "" && err == nil:
				t.Fatalf("Validate() = nil, want an error starting with %q", tt.wantErr)
			case tt.wantErr != "" && !strings.HasPrefix(err.Error(), tt.wantErr):
				t.Fatalf("Validate() = %q, want it to start with %q", err, tt.wantErr)
			}
		})
	}
}

func TestAllOf(t *testing.T) {
	yes := func() bool { return true }
	no := func() bool { return false }
	tests := []struct {
		name  string
		gates []func() bool
		want  bool
	}{
		{"no gates hold", nil, true},
		{"every gate holds", []func() bool{yes, yes}, true},
		{"one gate does not hold", []func() bool{yes, no}, false},
		{"nil gates are skipped", []func() bool{nil, yes}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := authority.AllOf(tt.gates...)(); got != tt.want {
				t.Errorf("AllOf() = %v, want %v", got, tt.want)
			}
		})
	}
	t.Run("stops_at_the_first_gate_that_does_not_hold", func(t *testing.T) {
		asked := false
		authority.AllOf(no, func() bool { asked = true; return true })()
		if asked {
			t.Error("a gate after one that did not hold was asked")
		}
	})
}

func TestPlanOverrideActivatesWithoutAcks(t *testing.T) {
	p := testPolicy()
	m := newMinter(p)
	s := bootstrap(t, m, t0)
	s.Root.Requested = true
	s = apply(t, m, s, authority.StepPrepareRoot, t0)
	never := func() bool { return false }
	if d := authority.Plan(s, t0, p, never); len(d.Steps) != 0 {
		t.Fatalf("without acks or override: steps %v", d.Steps)
	}
	s.Root.ActivateNow = true
	d := authority.Plan(s, t0, p, never)
	if len(d.Steps) != 1 || d.Steps[0] != authority.StepActivateRoot || !strings.Contains(d.Reason, "operator override") {
		t.Fatalf("with the override: steps %v, reason %q", d.Steps, d.Reason)
	}
}
