// Package wait polls a condition with a deadline, for tests that wait on a
// real API server, a real network or another goroutine's side effect:
// never a fixed sleep for a rotation (the fake clock drives those).
package wait

import (
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
