package agent

import (
	"context"
	"sync"
	"testing"

	"github.com/mayfly-pki/mayfly/internal/csi"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// changingToken is a csi.PodTokenSource whose token the test changes, as the
// driver's does at every republish.
type changingToken struct {
	mu    sync.Mutex
	token string
}

func (s *changingToken) PodToken() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.token
}

func (s *changingToken) set(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.token = token
}

// TestVolumeRequestsAskTheTokenSourceEachTime: the token a request to the CA
// carries is the source's current one, not the one of the first publish.
func TestVolumeRequestsAskTheTokenSourceEachTime(t *testing.T) {
	pods := &PodIndex{}
	v := &VolumeIdentities{Manager: NewManager(ManagerConfig{}), Pods: pods}
	src := &changingToken{token: "first"}
	untrack, err := v.Track(csi.VolumeIdentity{Namespace: "app", ServiceAccount: "web", PodName: "web-0", PodUID: "uid-1", PodToken: src}, rotate.SinkFunc(func(context.Context, *rotate.Credential) error { return nil }))
	if err != nil {
		t.Fatal(err)
	}
	defer untrack()
	if got := pods.Token("app/web", "uid-1"); got != "first" {
		t.Fatalf("request token %q, want first", got)
	}
	src.set("second")
	if got := pods.Token("app/web", "uid-1"); got != "second" {
		t.Fatalf("request token after a republish %q, want second", got)
	}
	src.set("") // expired, no republish since
	if got := pods.Token("app/web", "uid-1"); got != "" {
		t.Fatalf("request token %q after the source's token expired, want none", got)
	}
	if got := pods.Token("app/web", "uid-2"); got != "" {
		t.Fatalf("token %q for a pod that mounted nothing", got)
	}
}
