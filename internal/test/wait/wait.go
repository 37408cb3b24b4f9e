// Package wait polls a condition with a deadline, for tests that wait on a
// real API server, a real network or another goroutine's side effect:
// never a fixed sleep for a rotation (the fake clock drives those).
package wait

import (
	"context"
	"testing"
	"time"
)

// Timeout is how long For waits before failing the test.
const Timeout = 30 * time.Second

// For polls cond every 20ms until it returns true, and fails the test
// with what it waited for when Timeout passes first.
func For(t testing.TB, what string, cond func() bool) {
	t.Helper()
	Within(t, what, Timeout, 20*time.Millisecond, cond)
}

// Within polls cond every interval until it returns true, and fails the
// test with what it waited for when timeout passes first.
func Within(t testing.TB, what string, timeout, interval time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		<-tick.C
	}
}

// Until polls cond every interval until it holds, and fails the test when
// timeout passes first, with what it waited for and what cond last said it
// saw. cond's context ends at the deadline; what cond saw in a call the
// deadline cut short does not replace what it saw before.
func Until(t testing.TB, what string, timeout, interval time.Duration, cond func(ctx context.Context) (ok bool, saw string)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var last string
	for {
		ok, saw := cond(ctx)
		if ok {
			return
		}
		if ctx.Err() == nil || last == "" {
			last = saw
		}
		select {
		case <-ctx.Done():
			t.Fatalf("after %s, still not true that %s: %s", timeout, what, last)
		case <-tick.C:
		}
	}
}
