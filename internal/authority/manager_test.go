package authority_test

import (
	"context"
	"crypto/x509"
	"errors"
	"io/fs"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/test/authoritytest"
	"github.com/mayfly-pki/mayfly/internal/test/promtest"
	"github.com/mayfly-pki/mayfly/pkg/pki"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

func newManager(store authority.Store, clock rotate.Clock, marker authority.Marker, opts ...func(*authority.ManagerOptions)) *authority.Manager {
	o := authority.ManagerOptions{Store: store, Minter: newMinter(testPolicy()), Marker: marker, Clock: clock}
	for _, f := range opts {
		f(&o)
	}
	return authority.NewManager(o)
}

func mustLoad(t *testing.T, m *authority.Manager) *authority.Loaded {
	t.Helper()
	if err := m.Load(context.Background()); err != nil {
		t.Fatalf("Load: %v", err)
	}
	return mustCurrent(t, m)
}

func mustCurrent(t *testing.T, m *authority.Manager) *authority.Loaded {
	t.Helper()
	l, err := m.Current()
	if err != nil {
		t.Fatalf("Current: %v", err)
	}
	return l
}

// drive runs m as its Rotate loop would, the fake clock jumping to each
// time the plan asks for, until the next planned time lies after end.
// observe runs after every RotateOnce.
func drive(t *testing.T, m *authority.Manager, clock *rotate.FakeClock, end time.Time, observe func(now time.Time, l *authority.Loaded)) {
	t.Helper()
	ctx := context.Background()
	for i := 0; ; i++ {
		if i > 200000 {
			t.Fatalf("rotation loop did not reach %s", end)
		}
		wait := m.RotateOnce(ctx)
		l := mustCurrent(t, m)
		observe(clock.Now(), l)
		if wait == 0 {
			continue
		}
		if clock.Now().Add(wait).After(end) {
			return
		}
		clock.Advance(wait)
	}
}

func TestManagerFirstLoadBootstraps(t *testing.T) {
	clock := rotate.NewFakeClock(t0)
	store := newDirStore(t)
	marker := &memMarker{}
	m := newManager(store, clock, marker)
	if err := m.Ready(); !errors.Is(err, authority.ErrNotReady) {
		t.Fatalf("Ready before Load = %v, want ErrNotReady", err)
	}

	l := mustLoad(t, m)
	if err := m.Ready(); err != nil {
		t.Fatalf("Ready after Load: %v", err)
	}
	if len(l.Bundle) != 1 || !l.Bundle[0].Equal(l.State.Root.Current.Cert()) {
		t.Fatalf("bundle has %d roots, want the one new root", len(l.Bundle))
	}
	leaf := signLeaf(t, l.Authority, t0)
	if err := verifyLeaf(leaf, l.Authority, l.Bundle, t0); err != nil {
		t.Fatalf("leaf signed by the authority does not verify against the bundle: %v", err)
	}
	if got, want := string(marker.last()), string(pki.EncodeCertificates(l.Bundle...)); got != want {
		t.Error("the marker was not given the bundle")
	}
	stored, v := authoritytest.Stored(t, store)
	if v != l.Version || !stored.Root.Current.Cert().Equal(l.State.Root.Current.Cert()) {
		t.Error("the bootstrapped state was not written to the store")
	}
}

func TestManagerSecondManagerLoadsSameState(t *testing.T) {
	clock := rotate.NewFakeClock(t0)
	store := newDirStore(t)
	marker := &memMarker{}
	first := mustLoad(t, newManager(store, clock, marker))

	clock.Advance(time.Hour)
	second := mustLoad(t, newManager(store, clock, marker))
	if second.Version != first.Version {
		t.Errorf("second manager at version %s, want %s", second.Version, first.Version)
	}
	if !second.State.Root.Current.Cert().Equal(first.State.Root.Current.Cert()) || !second.Authority.Cert.Equal(first.Authority.Cert) {
		t.Error("second manager minted a new root or intermediate instead of loading the state")
	}
}

// A replica that finds no state while another one bootstraps must load the
// other's state, not report it deleted (the other saves before it marks).
func TestManagerLoadRacingAnotherBootstrapLoadsItsState(t *testing.T) {
	clock := rotate.NewFakeClock(t0)
	store := newDirStore(t)
	marker := &memMarker{}
	other := newManager(store, clock, marker)
	var otherErr error
	marker.onMarked = func() { otherErr = other.Load(context.Background()) }

	m := newManager(store, clock, marker)
	if err := m.Load(context.Background()); err != nil {
		t.Fatalf("Load racing another bootstrap: %v", err)
	}
	if otherErr != nil {
		t.Fatalf("the other replica's Load: %v", otherErr)
	}
	if got, want := mustCurrent(t, m).Version, mustCurrent(t, other).Version; got != want {
		t.Fatalf("version %s, want the other replica's %s", got, want)
	}
}

func TestManagerLoadBrokenState(t *testing.T) {
	truncateKey := func(t *testing.T, s *authority.DirStore) {
		snap, err := s.Load(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		k := snap.Data[authority.KeyIntermediateKey]
		snap.Data[authority.KeyIntermediateKey] = k[:len(k)/2]
		if _, err := s.Save(context.Background(), snap.Data, snap.Version); err != nil {
			t.Fatal(err)
		}
	}
	deleteState := func(t *testing.T, s *authority.DirStore) {
		if err := os.Remove(s.Describe()); err != nil {
			t.Fatal(err)
		}
	}
	worldReadable := func(t *testing.T, s *authority.DirStore) {
		if err := os.Chmod(s.Describe(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name        string
		breakState  func(t *testing.T, s *authority.DirStore)
		allow       bool
		wantErr     []string // substrings of Ready's error; nil: ready with a new root
		wantNewRoot bool
	}{
		{
			name:       "state deleted after a bundle was published: refuses to re-bootstrap",
			breakState: deleteState,
			wantErr:    []string{"--allow-rebootstrap", authority.StateFileName},
		},
		{
			name:        "state deleted, re-bootstrap allowed: new root",
			breakState:  deleteState,
			allow:       true,
			wantNewRoot: true,
		},
		{
			name:       "intermediate key truncated: not ready, names the key",
			breakState: truncateKey,
			wantErr:    []string{authority.KeyIntermediateKey, "--allow-rebootstrap", authority.StateFileName},
		},
		{
			name:        "intermediate key truncated, re-bootstrap allowed: new root",
			breakState:  truncateKey,
			allow:       true,
			wantNewRoot: true,
		},
		{
			name:       "state file readable by others: not ready, even with re-bootstrap allowed",
			breakState: worldReadable,
			allow:      true,
			wantErr:    []string{"chmod 600"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := rotate.NewFakeClock(t0)
			store := newDirStore(t)
			marker := &memMarker{}
			old := mustLoad(t, newManager(store, clock, marker))
			tt.breakState(t, store)
			before, beforeErr := os.ReadFile(store.Describe())

			m := newManager(store, clock, marker, func(o *authority.ManagerOptions) { o.AllowRebootstrap = tt.allow })
			err := m.Load(context.Background())
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("Load: %v", err)
				}
				l := mustCurrent(t, m)
				if tt.wantNewRoot && l.State.Root.Current.Cert().Equal(old.State.Root.Current.Cert()) {
					t.Fatal("kept the old root, want a new one")
				}
				stored, _ := authoritytest.Stored(t, store)
				if !stored.Root.Current.Cert().Equal(l.State.Root.Current.Cert()) {
					t.Fatal("the new root was not written to the store")
				}
				return
			}
			if err == nil {
				t.Fatal("Load succeeded, want an error")
			}
			ready := m.Ready()
			if !errors.Is(ready, authority.ErrNotReady) {
				t.Fatalf("Ready() = %v, want ErrNotReady", ready)
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(ready.Error(), want) {
					t.Errorf("Ready() = %q, want it to contain %q", ready, want)
				}
			}
			assertNoKeyMaterial(t, ready.Error())
			after, afterErr := os.ReadFile(store.Describe())
			if string(after) != string(before) || (beforeErr == nil) != (afterErr == nil) {
				t.Error("a manager that is not ready changed the stored state")
			}
			if _, err := m.Current(); err == nil {
				t.Error("Current() returned an authority although the CA is not ready")
			}
		})
	}
}

func TestManagerRotatesIntermediates(t *testing.T) {
	p := testPolicy()
	clock := rotate.NewFakeClock(t0)
	store := newDirStore(t)
	m := newManager(store, clock, &memMarker{})
	l := mustLoad(t, m)

	cur := l.State.Intermediate.Current.Cert()
	curAuth := l.Authority
	var next *x509.Certificate
	serials := map[string]bool{cur.SerialNumber.String(): true}
	gen := l.State.Generation
	activations := 0

	drive(t, m, clock, t0.Add(4*p.IntermediateTTL), func(now time.Time, l *authority.Loaded) {
		s := l.State
		if s.Generation < gen {
			t.Fatalf("generation went back from %d to %d", gen, s.Generation)
		}
		gen = s.Generation
		if len(l.Bundle) != 1 {
			t.Fatalf("at %s the bundle has %d roots, want 1", now, len(l.Bundle))
		}
		if next == nil && s.Intermediate.Next != nil {
			next = s.Intermediate.Next.Cert()
			if want := point(cur, p.PrepareAt); !now.Equal(want) {
				t.Errorf("next intermediate prepared at %s, want %s (half life)", now, want)
			}
		}
		if got := s.Intermediate.Current.Cert(); !got.Equal(cur) {
			activations++
			if want := point(cur, p.ActivateAt); !now.Equal(want) {
				t.Errorf("intermediate changed at %s, want only at the activation point %s", now, want)
			}
			if next == nil || !got.Equal(next) {
				t.Error("the new intermediate is not the one prepared at half life")
			}
			if serials[got.SerialNumber.String()] {
				t.Errorf("intermediate serial %s reused", got.SerialNumber)
			}
			serials[got.SerialNumber.String()] = true
			leaf := signLeaf(t, l.Authority, now)
			if err := verifyLeaf(leaf, l.Authority, l.Bundle, now); err != nil {
				t.Errorf("leaf of the new intermediate does not verify against the bundle: %v", err)
			}
			// A replica that has not reloaded yet still signs with the
			// previous intermediate: its leaves must verify too.
			if err := verifyLeaf(signLeaf(t, curAuth, now), curAuth, l.Bundle, now); err != nil {
				t.Errorf("leaf of the previous intermediate does not verify: %v", err)
			}
			cur, curAuth, next = got, l.Authority, nil
		}
		if !now.Before(cur.NotAfter) {
			t.Fatalf("at %s the signing intermediate has expired", now)
		}
	})
	if activations < 5 {
		t.Fatalf("%d intermediate activations in 4 intermediate lifetimes, want at least 5", activations)
	}
	if stored, v := authoritytest.Stored(t, store); v != mustCurrent(t, m).Version || stored.Generation != gen {
		t.Error("the store does not hold the state in force")
	}
}

func TestManagerRotatesRoot(t *testing.T) {
	p := testPolicy()
	never := t0.Add(100 * 365 * 24 * time.Hour)
	tests := []struct {
		name  string
		ackAt func(root *x509.Certificate) time.Time // when every agent holds the new bundle; zero: Acks is nil
		// wantActivate returns when the next root must take over.
		wantActivate func(root *x509.Certificate, published time.Time) time.Time
	}{
		{
			name:         "agents acked before two thirds: activates at two thirds",
			ackAt:        func(*x509.Certificate) time.Time { return t0 },
			wantActivate: func(root *x509.Certificate, _ time.Time) time.Time { return point(root, p.ActivateAt) },
		},
		{
			name:  "agents ack after two thirds: activates as the acks arrive",
			ackAt: func(root *x509.Certificate) time.Time { return point(root, p.ActivateAt).Add(5 * time.Hour) },
			wantActivate: func(root *x509.Certificate, _ time.Time) time.Time {
				return point(root, p.ActivateAt).Add(5 * time.Hour)
			},
		},
		{
			name:         "agents never ack: activates when RootAckWait has passed since publication",
			ackAt:        func(*x509.Certificate) time.Time { return never },
			wantActivate: func(_ *x509.Certificate, published time.Time) time.Time { return published.Add(p.RootAckWait) },
		},
		{
			name:         "no ack source: activates at two thirds",
			wantActivate: func(root *x509.Certificate, _ time.Time) time.Time { return point(root, p.ActivateAt) },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := rotate.NewFakeClock(t0)
			store := newDirStore(t)
			marker := &memMarker{}
			var ackAt time.Time
			m := newManager(store, clock, marker, func(o *authority.ManagerOptions) {
				if tt.ackAt != nil {
					o.Acks = func() bool { return !clock.Now().Before(ackAt) }
				}
			})
			l := mustLoad(t, m)
			oldRoot := l.State.Root.Current.Cert()
			if tt.ackAt != nil {
				ackAt = tt.ackAt(oldRoot)
			}

			var (
				published, activated, dropped time.Time
				newRoot                       *x509.Certificate
				lastInter                     pki.Authority
				lastNext                      *x509.Certificate
				lastLeaf                      *x509.Certificate
				retiredUntil                  time.Time
			)
			drive(t, m, clock, t0.Add(p.RootTTL-12*time.Hour), func(now time.Time, l *authority.Loaded) {
				s := l.State
				switch {
				case published.IsZero() && s.Root.Next != nil:
					published = now
					newRoot = s.Root.Next.Cert()
					if want := point(oldRoot, p.PrepareAt); !now.Equal(want) {
						t.Errorf("next root published at %s, want %s (half of the root's life)", now, want)
					}
					if len(l.Bundle) != 2 || !containsCert(l.Bundle, oldRoot) || !containsCert(l.Bundle, newRoot) {
						t.Errorf("bundle after publication has %d roots, want the old and the next one", len(l.Bundle))
					}
					if !s.Root.NextPublishedAt.Equal(now) {
						t.Errorf("Root.NextPublishedAt = %s, want %s", s.Root.NextPublishedAt, now)
					}
				case published.IsZero():
					if len(l.Bundle) != 1 {
						t.Fatalf("at %s, before publication, the bundle has %d roots", now, len(l.Bundle))
					}
				case activated.IsZero() && !s.Root.Current.Cert().Equal(oldRoot):
					activated = now
					if want := tt.wantActivate(oldRoot, published); !now.Equal(want) {
						t.Errorf("root activated at %s, want %s", now, want)
					}
					if !s.Root.Current.Cert().Equal(newRoot) {
						t.Fatal("the activated root is not the published one")
					}
					if len(s.Root.Retired) != 1 || !s.Root.Retired[0].Cert.Equal(oldRoot) {
						t.Fatalf("old root not retired: %+v", s.Root.Retired)
					}
					retiredUntil = s.Root.Retired[0].Until
					// Until covers every leaf the old intermediates may have
					// signed: the current one's, and the prepared one's.
					wantUntil := lastInter.Cert.NotAfter
					if lastNext != nil && lastNext.NotAfter.After(wantUntil) {
						wantUntil = lastNext.NotAfter
					}
					if !retiredUntil.Equal(wantUntil) {
						t.Errorf("old root retired until %s, want the old intermediates' last notAfter %s", retiredUntil, wantUntil)
					}
					// A replica that has not reloaded yet still signs with
					// the old intermediate.
					lastLeaf = signLeaf(t, lastInter, now)
					if err := verifyLeaf(lastLeaf, lastInter, l.Bundle, now); err != nil {
						t.Errorf("leaf of the old intermediate does not verify against the bundle after root activation: %v", err)
					}
					leaf := signLeaf(t, l.Authority, now)
					if err := verifyLeaf(leaf, l.Authority, l.Bundle, now); err != nil {
						t.Errorf("leaf of the new root's intermediate does not verify: %v", err)
					}
					if err := verifyLeaf(leaf, l.Authority, []*x509.Certificate{oldRoot}, now); err == nil {
						t.Error("leaf of the new root's intermediate verifies against the old root alone")
					}
				case activated.IsZero():
					if len(l.Bundle) != 2 {
						t.Fatalf("at %s, waiting for activation, the bundle has %d roots, want 2", now, len(l.Bundle))
					}
					lastInter = l.Authority
					lastNext = nil
					if s.Intermediate.Next != nil {
						lastNext = s.Intermediate.Next.Cert()
					}
				case dropped.IsZero() && !containsCert(l.Bundle, oldRoot):
					dropped = now
					if !now.Equal(retiredUntil) {
						t.Errorf("old root dropped from the bundle at %s, want %s (old intermediate's notAfter)", now, retiredUntil)
					}
					if len(s.Root.Retired) != 0 {
						t.Errorf("retired roots not removed from the state: %d left", len(s.Root.Retired))
					}
				case dropped.IsZero():
					if len(l.Bundle) != 2 || !containsCert(l.Bundle, newRoot) {
						t.Fatalf("at %s the bundle has %d roots, want the new and the retired one", now, len(l.Bundle))
					}
					if now.Before(lastLeaf.NotAfter) {
						if err := verifyLeaf(lastLeaf, lastInter, l.Bundle, now); err != nil {
							t.Errorf("at %s a leaf of the old intermediate stopped verifying: %v", now, err)
						}
					}
				default:
					if len(l.Bundle) != 1 || !l.Bundle[0].Equal(newRoot) {
						t.Fatalf("at %s, after the drop, the bundle has %d roots", now, len(l.Bundle))
					}
				}
			})
			if published.IsZero() || activated.IsZero() || dropped.IsZero() {
				t.Fatalf("root rotation incomplete: published %s, activated %s, dropped %s", published, activated, dropped)
			}
			if got := string(marker.last()); got != string(pki.EncodeCertificates(newRoot)) {
				t.Error("the last published bundle is not the new root alone")
			}
		})
	}
}

func TestManagersOnOneStoreRotateOnce(t *testing.T) {
	p := testPolicy()
	for _, step := range []string{"prepare", "activate"} {
		t.Run(step, func(t *testing.T) {
			ctx := context.Background()
			clock := rotate.NewFakeClock(t0)
			store := newDirStore(t)
			marker := &memMarker{}
			a := newManager(store, clock, marker)
			b := newManager(store, clock, marker)
			la, lb := mustLoad(t, a), mustLoad(t, b)
			if la.Version != lb.Version {
				t.Fatal("the two managers loaded different states")
			}
			inter := la.State.Intermediate.Current.Cert()
			if step == "activate" {
				clock.Set(point(inter, p.PrepareAt))
				if a.RotateOnce(ctx) != 0 {
					t.Fatal("no rotation at half life")
				}
				if err := b.Reload(ctx); err != nil {
					t.Fatal(err)
				}
				clock.Set(point(inter, p.ActivateAt))
			} else {
				clock.Set(point(inter, p.PrepareAt))
			}
			_, v0 := authoritytest.Stored(t, store)
			gen0 := mustCurrent(t, a).State.Generation

			var wg sync.WaitGroup
			waits := make([]time.Duration, 2)
			for i, m := range []*authority.Manager{a, b} {
				wg.Go(func() { waits[i] = m.RotateOnce(ctx) })
			}
			wg.Wait()

			stored, v := authoritytest.Stored(t, store)
			if v == v0 {
				t.Fatal("neither manager wrote a rotation")
			}
			if stored.Generation != gen0+1 {
				t.Fatalf("stored generation %d, want %d: exactly one rotation must be written", stored.Generation, gen0+1)
			}
			if (waits[0] == 0) == (waits[1] == 0) {
				t.Errorf("RotateOnce waits %v: want exactly one writer (wait 0)", waits)
			}
			// The loser reloaded; both converge on the stored version.
			for i, m := range []*authority.Manager{a, b} {
				l := mustCurrent(t, m)
				if l.Version != v {
					t.Errorf("manager %d at version %s, want %s", i, l.Version, v)
				}
				if !l.Authority.Cert.Equal(stored.Intermediate.Current.Cert()) {
					t.Errorf("manager %d signs with another intermediate than the stored one", i)
				}
			}
			// Nothing is due any more: another round writes nothing.
			for _, m := range []*authority.Manager{a, b} {
				if w := m.RotateOnce(ctx); w == 0 {
					t.Error("a rotation was applied twice")
				}
			}
			if _, again := authoritytest.Stored(t, store); again != v {
				t.Error("a second round wrote the store again")
			}
		})
	}
}

// TestManagerRotateLoop runs the Rotate loop itself: the test only moves
// the fake clock to the timers the loop sets and never sleeps.
func TestManagerRotateLoop(t *testing.T) {
	p := testPolicy()
	clock := rotate.NewFakeClock(t0)
	m := newManager(newDirStore(t), clock, &memMarker{})
	l := mustLoad(t, m)
	inter := l.State.Intermediate.Current.Cert()
	changes, unsubscribe := m.Subscribe()
	defer unsubscribe()

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Rotate(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Rotate: %v", err)
		}
	}()

	// advanceTo fires the loop's timers one by one up to target, which must
	// be a time the loop plans for, and returns once the loop waits again.
	advanceTo := func(target time.Time) {
		t.Helper()
		for {
			clock.BlockUntil(1)
			d, _ := clock.NextDeadline()
			if d.After(target) {
				t.Fatalf("the loop sleeps until %s, past the rotation point %s", d, target)
			}
			clock.Set(d)
			if d.Equal(target) {
				clock.BlockUntil(1)
				return
			}
		}
	}

	advanceTo(point(inter, p.PrepareAt))
	l = mustCurrent(t, m)
	if l.State.Intermediate.Next == nil || !l.State.Intermediate.Current.Cert().Equal(inter) {
		t.Fatal("at half life the loop did not prepare the next intermediate (or activated it early)")
	}
	select {
	case <-changes:
	default:
		t.Error("no change notification after the prepare step")
	}

	advanceTo(point(inter, p.ActivateAt))
	l = mustCurrent(t, m)
	if l.State.Intermediate.Current.Cert().Equal(inter) {
		t.Fatal("at two thirds the loop did not activate the next intermediate")
	}
	select {
	case <-changes:
	default:
		t.Error("no change notification after the activate step")
	}
}

func TestManagerMetrics(t *testing.T) {
	clock := rotate.NewFakeClock(t0)
	store := newDirStore(t)
	reg := prometheus.NewRegistry()
	m := newManager(store, clock, &memMarker{}, func(o *authority.ManagerOptions) { o.Registerer = reg })

	gauge := func(name string, labels map[string]string) (float64, bool) {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != name {
				continue
			}
		next:
			for _, mt := range mf.GetMetric() {
				for _, lp := range mt.GetLabel() {
					if labels[lp.GetName()] != lp.GetValue() {
						continue next
					}
				}
				return mt.GetGauge().GetValue(), true
			}
		}
		return 0, false
	}
	// testutil.GatherAndCompare would need github.com/kylelemons/godebug,
	// which go.mod does not require; the registry's own Gather suffices.
	ready := func(want float64) {
		t.Helper()
		if got, ok := gauge("mayfly_ca_ready", nil); !ok || got != want {
			t.Errorf("mayfly_ca_ready = %v (present %v), want %v", got, ok, want)
		}
	}
	ready(0)
	l := mustLoad(t, m)
	ready(1)
	inter := l.State.Intermediate.Current.Cert()
	got, ok := gauge("mayfly_ca_authority_expiry_timestamp_seconds", map[string]string{"role": "intermediate", "slot": "current"})
	if !ok || got != float64(inter.NotAfter.Unix()) {
		t.Errorf("intermediate/current expiry = %v (present %v), want %d", got, ok, inter.NotAfter.Unix())
	}
	got, ok = gauge("mayfly_ca_authority_expiry_timestamp_seconds", map[string]string{"role": "root", "slot": "current"})
	if !ok || got != float64(l.State.Root.Current.Cert().NotAfter.Unix()) {
		t.Errorf("root/current expiry = %v (present %v), want the root's notAfter", got, ok)
	}
	if _, ok := gauge("mayfly_ca_authority_expiry_timestamp_seconds", map[string]string{"role": "intermediate", "slot": "next"}); ok {
		t.Error("intermediate/next expiry present before a next intermediate exists")
	}

	clock.Set(point(inter, testPolicy().PrepareAt))
	if m.RotateOnce(context.Background()) != 0 {
		t.Fatal("no rotation at half life")
	}
	next := mustCurrent(t, m).State.Intermediate.Next.Cert()
	if got, ok := gauge("mayfly_ca_authority_expiry_timestamp_seconds", map[string]string{"role": "intermediate", "slot": "next"}); !ok || got != float64(next.NotAfter.Unix()) {
		t.Errorf("intermediate/next expiry = %v (present %v), want %d", got, ok, next.NotAfter.Unix())
	}
	if got := counterValue(t, reg, "PrepareIntermediate", "ok"); got != 1 {
		t.Errorf("rotations_total{step=PrepareIntermediate,result=ok} = %v, want 1", got)
	}

	// The state is deleted under the running CA: Reload makes it not ready.
	if err := os.Remove(store.Describe()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	err := m.Reload(context.Background())
	if err == nil || !strings.Contains(err.Error(), store.Describe()) {
		t.Fatalf("Reload after deletion = %v, want an error naming %s", err, store.Describe())
	}
	ready(0)

	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if problems, err := promlint.NewWithMetricFamilies(mfs).Lint(); err != nil || len(problems) > 0 {
		t.Errorf("promlint: %v %v", problems, err)
	}
}

// counterValue returns one series of the rotations counter.
func counterValue(t *testing.T, reg *prometheus.Registry, step, result string) float64 {
	t.Helper()
	v, ok := promtest.Value(t, reg, "mayfly_ca_authority_rotations_total", "step="+step, "result="+result)
	if !ok {
		t.Fatalf("no rotations_total{step=%q,result=%q}", step, result)
	}
	return v
}
