// Package wait polls a condition with a deadline, for tests that wait on a
// real API server or a real network: never a fixed sleep for a rotation.
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
	deadline := time.Now().Add(Timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", Timeout, what)
		}
		<-tick.C
	}
}
