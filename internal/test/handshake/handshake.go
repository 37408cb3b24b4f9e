// Package handshake makes mutual TLS handshakes at a steady pace while
// something happens (a rotation, a taint, an outage) and counts the ones
// that fail: the verdict of the end-to-end tests that no handshake may
// fail on the way.
package handshake

import (
	"context"
	"testing"
	"time"

	"github.com/mayfly-pki/mayfly/internal/test/wait"
)

// Pair is one client and server: Handshake makes one full handshake
// between them.
type Pair struct {
	Name      string
	Handshake func() error
}

// Count is what Until saw: how many rounds it made (one handshake on each
// pair a round) and how many handshakes failed.
type Count struct {
	Rounds, Failed int
}

// Until makes one handshake on every pair every interval, through event,
// until done holds (done sees the round's number, from 1, and returns what
// it saw for the timeout message). Every failed handshake is a test error
// naming the pair, the event and the round; the test fails when timeout
// passes before done holds.
func Until(t testing.TB, event string, timeout, interval time.Duration, pairs []Pair, done func(round int) (bool, string)) Count {
	t.Helper()
	var c Count
	wait.Until(t, event+" completes", timeout, interval, func(context.Context) (bool, string) {
		c.Rounds++
		for _, p := range pairs {
			if err := p.Handshake(); err != nil {
				c.Failed++
				t.Errorf("%s: handshake %d failed during %s: %v", p.Name, c.Rounds, event, err)
			}
		}
		return done(c.Rounds)
	})
	return c
}
