package adoption

import (
	"slices"
	"time"

	"github.com/mayfly-pki/mayfly/internal/authority"
)

// NodeSource lists the nodes that should hold the trust bundle. ok is false
// while the list is not known yet (informer not synced): nothing is adopted
// then.
type NodeSource interface {
	Nodes() (names []string, ok bool)
}

// StaticNodes is the NodeSource of a standalone CA: the nodes of its
// configuration. A configured node whose agent never connects blocks a root
// activation until the maximum wait.
type StaticNodes []string

// Nodes returns the configured names.
func (s StaticNodes) Nodes() ([]string, bool) { return s, true }

// AckSource tells whether a node acknowledged a bundle version (a Tracker,
// a Gatherer).
type AckSource interface {
	Holds(node, version string) bool
}

// View joins the expected nodes with the acknowledgements of every replica.
type View struct {
	Nodes NodeSource
	// Acks are consulted in order; a node holds a version when any says so.
	Acks []AckSource
}

// Pending is how far a bundle version has been adopted.
type Pending struct {
	Version string `json:"bundleVersion"`
	// Known is false while the expected nodes are not listed yet.
	Known    bool `json:"known"`
	Expected int  `json:"expected"`
	// Nodes are the expected nodes that did not acknowledge Version, sorted.
	Nodes []string `json:"-"`
}

// Pending returns the expected nodes that hold no acknowledgement of
// version on any replica.
func (v *View) Pending(version string) Pending {
	p := Pending{Version: version}
	nodes, ok := v.Nodes.Nodes()
	if !ok {
		return p
	}
	p.Known, p.Expected = true, len(nodes)
	for _, n := range nodes {
		if !v.holds(n, version) {
			p.Nodes = append(p.Nodes, n)
		}
	}
	slices.Sort(p.Nodes)
	return p
}

func (v *View) holds(node, version string) bool {
	for _, a := range v.Acks {
		if a.Holds(node, version) {
			return true
		}
	}
	return false
}

// Adopted reports whether every expected node acknowledged version: the
// authority's BundleAcks. False while the expected nodes are unknown; true
// for an empty set (no node waits for the bundle).
//
// It stops at the first pending node: the authority asks after every
// acknowledgement, and while many nodes are pending the answer is found
// at once, without listing them.
func (v *View) Adopted(version string) bool {
	nodes, ok := v.Nodes.Nodes()
	if !ok {
		return false
	}
	for _, n := range nodes {
		if !v.holds(n, version) {
			return false
		}
	}
	return true
}

// RootWait says what a prepared root waits for: the bundle version that
// carries it, and when the authority activates it anyway. ok is false when
// no next root waits.
func RootWait(l *authority.Loaded, p authority.Policy) (version string, deadline time.Time, ok bool) {
	if l == nil || l.State.Root.Next == nil || l.State.Root.Current == nil {
		return "", time.Time{}, false
	}
	r := l.State.Root
	deadline = r.NextPublishedAt.Add(p.RootAckWait)
	if force := r.Current.NotAfter().Add(-p.IntermediateTTL); force.Before(deadline) {
		deadline = force
	}
	return l.BundleVersion, deadline, true
}

// Nodes returns the nodes that acknowledged any bundle on this replica:
// a Tracker is also a NodeSource.
func (t *Tracker) Nodes() ([]string, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]string, 0, len(t.version))
	for n := range t.version {
		out = append(out, n)
	}
	return out, true
}

// UnionNodes expects the nodes of every source (each once); it is known
// once every source is.
type UnionNodes []NodeSource

// Nodes returns the union of the sources' nodes.
func (u UnionNodes) Nodes() ([]string, bool) {
	seen := map[string]struct{}{}
	var out []string
	for _, s := range u {
		nodes, ok := s.Nodes()
		if !ok {
			return nil, false
		}
		for _, n := range nodes {
			if _, dup := seen[n]; !dup {
				seen[n] = struct{}{}
				out = append(out, n)
			}
		}
	}
	return out, true
}
