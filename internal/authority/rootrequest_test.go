package authority_test

import (
	"context"
	"strings"
	"testing"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/test/authoritytest"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// TestRequestRootRotation: an operator's request (ca rotate-root) makes the
// running manager publish a new root at once and activate it once every
// agent acknowledged it, long before the root's own rotation point.
func TestRequestRootRotation(t *testing.T) {
	ctx := context.Background()
	store, m, acked := gatedManager(t)
	before := mustLoad(t, m)
	oldRoot := before.State.Root.Current.Cert()

	if err := authority.RequestRootRotation(ctx, store); err != nil {
		t.Fatal(err)
	}
	if err := m.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	m.RotateOnce(ctx)
	l := mustCurrent(t, m)
	if l.State.Root.Next == nil || len(l.Bundle) != 2 {
		t.Fatalf("next root not published: bundle has %d roots", len(l.Bundle))
	}
	if !l.State.Root.Current.Cert().Equal(oldRoot) {
		t.Fatal("root activated before the agents acknowledged it")
	}

	*acked = true
	m.RotateOnce(ctx)
	l = mustCurrent(t, m)
	if l.State.Root.Current.Cert().Equal(oldRoot) {
		t.Fatal("root not activated after the acknowledgements")
	}
	if l.State.Root.Requested {
		t.Fatal("request flag still set after the rotation")
	}
	if !containsCert(l.Bundle, oldRoot) {
		t.Fatal("old root dropped from the bundle while leaves under it may live")
	}
	if err := l.Authority.Cert.CheckSignatureFrom(l.State.Root.Current.Cert()); err != nil {
		t.Fatalf("intermediate not under the new root: %v", err)
	}
}

func TestRequestRootRotationRefusedForUpstream(t *testing.T) {
	store, err := authority.NewDirStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	clock := rotate.NewFakeClock(t0)
	up := newFakeUpstream(t, clock.Now)
	m := newManager(store, clock, &memMarker{}, func(o *authority.ManagerOptions) { o.Minter.Upstream = up })
	mustLoad(t, m)
	err = authority.RequestRootRotation(context.Background(), store)
	if err == nil || !strings.Contains(err.Error(), "upstream") {
		t.Fatalf("err = %v, want a refusal naming the upstream", err)
	}
}

// TestRequestRootActivation: the operator's override (ca rotate-root
// --activate-now) activates the next root although the agents never
// acknowledged it, and is cleared by the activation. It survives the
// state's round trip through the store.
func TestRequestRootActivation(t *testing.T) {
	ctx := context.Background()
	for _, prepared := range []bool{true, false} {
		name := "with no next root yet: prepared and activated at once"
		if prepared {
			name = "with a next root waiting for the agents"
		}
		t.Run(name, func(t *testing.T) {
			store, err := authority.NewDirStore(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			clock := rotate.NewFakeClock(t0)
			m := newManager(store, clock, &memMarker{}, func(o *authority.ManagerOptions) {
				o.Acks = func() bool { return false } // never
			})
			oldRoot := mustLoad(t, m).State.Root.Current.Cert()
			if prepared {
				if err := authority.RequestRootRotation(ctx, store); err != nil {
					t.Fatal(err)
				}
				_ = m.Reload(ctx)
				m.RotateOnce(ctx)
				m.RotateOnce(ctx)
				if l := mustCurrent(t, m); l.State.Root.Next == nil || !l.State.Root.Current.Cert().Equal(oldRoot) {
					t.Fatal("want a next root waiting for the agents")
				}
			}
			if err := authority.RequestRootActivation(ctx, store); err != nil {
				t.Fatal(err)
			}
			if st, _ := authoritytest.Stored(t, store); !st.Root.ActivateNow || !st.Root.Requested {
				t.Fatal("the override is not stored")
			}
			if err := authority.RequestRootActivation(ctx, store); err != nil {
				t.Fatalf("a repeated override: %v", err)
			}
			_ = m.Reload(ctx)
			for range 3 {
				m.RotateOnce(ctx)
			}
			l := mustCurrent(t, m)
			if l.State.Root.Current.Cert().Equal(oldRoot) {
				t.Fatal("the override did not activate a new root")
			}
			if l.State.Root.ActivateNow || l.State.Root.Requested || l.State.Root.Next != nil {
				t.Fatal("the override stayed set after the activation")
			}
			if len(l.State.Root.Retired) != 1 || !l.State.Root.Retired[0].Cert.Equal(oldRoot) {
				t.Fatal("the old root is not retired")
			}
		})
	}
}

// gatedManager is a manager, with a fake clock at t0, on a new directory
// store, whose agents acknowledge a bundle once *acked is set.
func gatedManager(t *testing.T) (*authority.DirStore, *authority.Manager, *bool) {
	t.Helper()
	store, err := authority.NewDirStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	acked := new(bool)
	m := newManager(store, rotate.NewFakeClock(t0), &memMarker{}, func(o *authority.ManagerOptions) {
		o.Acks = func() bool { return *acked }
	})
	return store, m, acked
}
