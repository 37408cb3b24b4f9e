package agent

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

// TestRenewalAfterRolloutsAsksOnce: the pods of ten rollouts whose volumes
// were never unpublished (the agent was down when they went) are still in
// the index, newer than the live pod. The first renewal after
// PodForgetGrace asks for each once and drops those the CA does not know;
// every renewal after that asks once, for the pod that worked.
func TestRenewalAfterRolloutsAsksOnce(t *testing.T) {
	h := newManager(t, false)
	h.ca.pod("uid-live", idWeb)
	x := &PodIndex{Now: h.clk.Now}
	x.Add("default/web", "uid-live", nil)
	for i := range 10 {
		x.Add("default/web", fmt.Sprintf("uid-gone-%d", i), nil)
	}
	e := &entry{spec: x.spec(Spec{Key: "default/web"})}
	asked := func() int {
		t.Helper()
		before := len(h.ca.podUIDsAsked())
		if _, err := h.m.obtain(t.Context(), e); err != nil {
			t.Fatalf("obtain: %v", err)
		}
		return len(h.ca.podUIDsAsked()) - before
	}

	if n := asked(); n != 11 {
		t.Errorf("the first renewal asked %d times, want 11 (ten gone pods, then the live one)", n)
	}
	if got := x.UIDs("default/web"); len(got) != 11 || got[0] != "uid-live" {
		t.Fatalf("pods within PodForgetGrace = %v, want all 11 kept, the live one first", got)
	}
	if n := asked(); n != 1 {
		t.Errorf("the next renewal asked %d times, want 1 (the pod that worked first)", n)
	}

	h.clk.Advance(PodForgetGrace)
	// Put a gone pod first again: the CA's NOT_FOUND now drops it.
	x.Worked("default/web", "uid-gone-3")
	if n := asked(); n != 2 {
		t.Errorf("renewal with a gone pod first asked %d times, want 2", n)
	}
	if slices.Contains(x.UIDs("default/web"), "uid-gone-3") {
		t.Error("the pod the CA does not know is still in the index past PodForgetGrace")
	}
	for range 3 {
		if n := asked(); n != 1 {
			t.Errorf("a steady renewal asked %d times, want 1", n)
		}
	}
}

func TestPodIndexForget(t *testing.T) {
	now := epoch
	x := &PodIndex{Now: func() time.Time { return now }}
	release := x.Add("ns/sa", "uid-1", StaticToken("tok"))
	if x.Forget("ns/sa", "uid-1") {
		t.Fatal("a pod added a moment ago was forgotten (the CA's cache may lag)")
	}
	now = now.Add(PodForgetGrace)
	if !x.Forget("ns/sa", "uid-1") || x.Len() != 0 {
		t.Fatal("a pod past PodForgetGrace was not forgotten")
	}
	if x.Forget("ns/sa", "uid-1") || x.Forget("other", "uid-9") {
		t.Error("forgetting an unknown pod reported a change")
	}
	// The pod comes back (a new volume): the old use's release leaves
	// the new entry alone.
	releaseNew := x.Add("ns/sa", "uid-1", nil)
	release()
	if got := x.UIDs("ns/sa"); !slices.Equal(got, []string{"uid-1"}) {
		t.Fatalf("pods after the forgotten use's release = %v, want [uid-1]", got)
	}
	if x.Token("ns/sa", "uid-1") != "" {
		t.Error("the new entry kept the forgotten entry's token")
	}
	releaseNew()
	if x.Len() != 0 {
		t.Errorf("index holds %d identities after every use ended", x.Len())
	}
}
