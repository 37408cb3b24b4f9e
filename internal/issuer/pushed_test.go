package issuer

import (
	"testing"

	"github.com/mayfly-pki/mayfly/internal/authority"
)

// TestPushedOfBuildsOncePerAuthorityState: every stream of a push sends
// the one message built for the authority state in force, and a new state
// gets its own.
func TestPushedOfBuildsOncePerAuthorityState(t *testing.T) {
	s := &Server{}
	v1 := &authority.Loaded{BundleVersion: "v1"}
	first := s.pushedOf(v1).msg
	if again := s.pushedOf(v1).msg; again != first {
		t.Error("the same authority state built its bundle message twice")
	}
	v2 := &authority.Loaded{BundleVersion: "v2"}
	if got := s.pushedOf(v2).msg.GetVersion(); got != "v2" {
		t.Errorf("new authority state: message of version %q, want v2", got)
	}
	if got := s.pushedOf(v1).msg.GetVersion(); got != "v1" {
		t.Errorf("a stream still on the older state got version %q, want v1", got)
	}
}
