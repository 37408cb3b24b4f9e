package handshake_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/mayfly-pki/mayfly/internal/test/handshake"
)

func TestUntilCountsRoundsAndFailures(t *testing.T) {
	calls := 0
	pairs := []handshake.Pair{
		{Name: "ok", Handshake: func() error { return nil }},
		{Name: "flaky", Handshake: func() error {
			calls++
			if calls == 2 {
				return errors.New("bad certificate")
			}
			return nil
		}},
	}
	var rec recorder
	c := handshake.Until(&rec, "a test event", time.Minute, time.Millisecond, pairs, func(round int) (bool, string) { return round == 3, "" })
	if c != (handshake.Count{Rounds: 3, Failed: 1}) {
		t.Fatalf("Count = %+v, want 3 rounds, 1 failed", c)
	}
	if len(rec.errors) != 1 || rec.errors[0] != "flaky: handshake 2 failed during a test event: bad certificate" {
		t.Fatalf("errors reported: %q", rec.errors)
	}
}

// recorder is a testing.TB that keeps the errors reported.
type recorder struct {
	testing.TB
	errors []string
}

func (*recorder) Helper() {}

func (r *recorder) Errorf(format string, args ...any) {
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}
