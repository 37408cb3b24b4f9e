package authority_test

import (
	"context"
	"testing"
	"time"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/test/authoritytest"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// TestManagerReloadEveryPicksUpAnotherWriter: a replica re-reads the store
// when its clock passes the interval, not before, and stops with ctx.
func TestManagerReloadEveryPicksUpAnotherWriter(t *testing.T) {
	clock := rotate.NewFakeClock(t0)
	store := newDirStore(t)
	m := newManager(store, clock, &memMarker{})
	before := mustLoad(t, m)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.ReloadEvery(ctx, time.Minute) }()
	clock.BlockUntil(1)

	// Another process writes the store.
	if err := authority.RequestRootRotation(context.Background(), store); err != nil {
		t.Fatalf("RequestRootRotation: %v", err)
	}
	_, written := authoritytest.Stored(t, store)
	if mustCurrent(t, m).Version != before.Version {
		t.Fatal("reloaded before the interval passed")
	}
	clock.Advance(time.Minute)
	wait.For(t, "the manager to load the version another process wrote", func() bool {
		return mustCurrent(t, m).Version == written
	})

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("ReloadEvery = %v, want nil after ctx is done", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ReloadEvery did not return after ctx was done")
	}
}
