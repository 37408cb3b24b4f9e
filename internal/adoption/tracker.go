// Package adoption counts which nodes hold a trust bundle, across every CA
// replica, so that a new root activates only once every node that should
// hold it does (or the configured maximum wait passed).
//
// Three parts:
//   - a Tracker per replica records the bundle version each node's agent
//     last acknowledged on that replica's WatchBundle streams (O(1) per ack);
//   - in Kubernetes mode a Publisher writes the Tracker as one ConfigMap per
//     replica (mayfly-adoption-<replica>), coalesced and only when changed,
//     and a Gatherer reads the ConfigMaps of all replicas back, ignoring
//     those whose writer stopped stamping them (the replica is gone);
//   - a View joins the expected nodes (the cluster's Node objects, or the
//     configured nodes of a standalone CA) with the acknowledgements and
//     says which nodes are still pending for a bundle version.
//
// A node counts as holding a version when any live replica saw its agent
// acknowledge it. Its last acknowledgement stays recorded after its stream
// closes: the agent keeps the bundle it acknowledged.
package adoption

import (
	"slices"
	"sync"

	"github.com/mayfly-pki/mayfly/pkg/notify"
)

// Tracker records the bundle version each node's agent acknowledged last on
// this replica. The zero value is not usable; call NewTracker.
type Tracker struct {
	mu      sync.Mutex
	version map[string]string // node -> version
	count   map[string]int    // version -> nodes
	gen     uint64
	changed notify.Notifier
}

// NewTracker returns an empty Tracker.
func NewTracker() *Tracker {
	return &Tracker{version: map[string]string{}, count: map[string]int{}}
}

// Ack records that node's agent holds version. It costs O(1): a map update
// and two counters, never a walk over the nodes.
func (t *Tracker) Ack(node, version string) {
	if node == "" || version == "" {
		return
	}
	t.mu.Lock()
	old, ok := t.version[node]
	if ok && old == version {
		t.mu.Unlock()
		return
	}
	if ok {
		if t.count[old]--; t.count[old] <= 0 {
			delete(t.count, old)
		}
	}
	t.version[node] = version
	t.count[version]++
	t.gen++
	t.mu.Unlock()
	t.changed.Notify()
}

// Count returns how many nodes acknowledged version last on this replica.
func (t *Tracker) Count(version string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.count[version]
}

// Holds reports whether node's last acknowledgement on this replica was
// version.
func (t *Tracker) Holds(node, version string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.version[node] == version
}

// Generation changes after every change of the recorded acknowledgements.
func (t *Tracker) Generation() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.gen
}

// Subscribe returns a channel that receives a value after changes
// (coalesced), and a function to unsubscribe.
func (t *Tracker) Subscribe() (<-chan struct{}, func()) { return t.changed.Subscribe() }

// Snapshot returns the acknowledgements by version, nodes sorted, and the
// generation they were taken at.
func (t *Tracker) Snapshot() (Acks, uint64) {
	t.mu.Lock()
	out := make(Acks, len(t.count))
	for node, v := range t.version {
		out[v] = append(out[v], node)
	}
	gen := t.gen
	t.mu.Unlock()
	for _, nodes := range out {
		slices.Sort(nodes)
	}
	return out, gen
}

// Acks maps a bundle version to the nodes that acknowledged it.
type Acks map[string][]string
