package agentapp

import (
	"context"
	"sync"
	"testing"

	"github.com/mayfly-pki/mayfly/internal/agent"
	"github.com/mayfly-pki/mayfly/internal/csi"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// tokenSource is a csi.PodTokenSource whose token the test changes, as the
// driver's does at every republish.
type tokenSource struct {
	mu    sync.Mutex
	token string
}

func (s *tokenSource) PodToken() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.token
}

func (s *tokenSource) set(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.token = token
}

// TestCSIRequestsAskTheTokenSourceEachTime: the token a request to the CA
// carries is the source's current one, not the one of the first publish.
func TestCSIRequestsAskTheTokenSourceEachTime(t *testing.T) {
	c := newCSIIdentities(agent.NewManager(agent.ManagerConfig{}))
	src := &tokenSource{token: "first"}
	untrack, err := c.Track(csi.VolumeIdentity{Namespace: "app", ServiceAccount: "web", PodName: "web-0", PodUID: "uid-1", PodToken: src}, rotate.SinkFunc(func(context.Context, *rotate.Credential) error { return nil }))
	if err != nil {
		t.Fatal(err)
	}
	defer untrack()
	if got := c.podToken("app/web", "uid-1"); got != "first" {
		t.Fatalf("request token %q, want first", got)
	}
	src.set("second")
	if got := c.podToken("app/web", "uid-1"); got != "second" {
		t.Fatalf("request token after a republish %q, want second", got)
	}
	src.set("") // expired, no republish since
	if got := c.podToken("app/web", "uid-1"); got != "" {
		t.Fatalf("request token %q after the source's token expired, want none", got)
	}
	if got := c.podToken("app/web", "uid-2"); got != "" {
		t.Fatalf("token %q for a pod that mounted nothing", got)
	}
}
