package authority_test

import (
	"context"
	"strings"
	"testing"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// TestRequestRootRotation: an operator's request (ca rotate-root) makes the
// running manager publish a new root at once and activate it once every
// agent acknowledged it, long before the root's own rotation point.
func TestRequestRootRotation(t *testing.T) {
	ctx := context.Background()
	store, err := authority.NewDirStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	clock := rotate.NewFakeClock(t0)
	acked := false
	m := newManager(store, clock, &memMarker{}, func(o *authority.ManagerOptions) {
		o.Acks = func() bool { return acked }
	})
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

	acked = true
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
