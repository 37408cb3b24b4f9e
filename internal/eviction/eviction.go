// Package eviction records the nodes whose agents an operator evicted
// (`ca agent evict NODE`), and decides what an eviction refuses.
//
// An eviction of node N at time E refuses, on every CA replica:
//   - every agent SVID of N attested before E (the attestation time an agent
//     SVID carries, pki.AttestedAt, is copied on renewal, so renewing does not
//     escape an eviction): RenewAgent, SignWorkloads and WatchBundle;
//   - new attestations of N (AttestAgent) until the eviction is lifted: at
//     Until when it was given one (`--until`), or by `ca agent unevict N`.
//
// Lifting an eviction keeps its time: certificates attested before it stay
// refused, and an agent attested afterwards works.
//
// The list is stored in one place shared by every replica and by the CLI: a
// 0600 file in the standalone state directory (FileStore), or a Secret in the
// CA's namespace (SecretStore). A Source polls it and notifies subscribers of
// changes, so an open WatchBundle stream of an evicted agent is closed.
package eviction

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// ErrEvicted is wrapped by every refusal because of an eviction.
var ErrEvicted = errors.New("node evicted")

// Record is the eviction of one node.
type Record struct {
	// Node is the evicted node.
	Node string `json:"node"`
	// At is the time of the eviction: agent SVIDs of Node attested before it
	// are refused.
	At time.Time `json:"evictedAt"`
	// Until lifts the refusal of new attestations; zero means until
	// `ca agent unevict`.
	Until time.Time `json:"until,omitzero"`
}

// blocksAttestation reports whether r refuses a new attestation at now.
func (r Record) blocksAttestation(now time.Time) bool {
	return r.Until.IsZero() || now.Before(r.Until)
}

// List is the evictions of every node, by node name. The zero value is an
// empty list.
type List map[string]Record

// CheckAgent refuses an agent SVID of node attested at attestedAt when the
// node was evicted after that.
func (l List) CheckAgent(node string, attestedAt time.Time) error {
	r, ok := l[node]
	if !ok || attestedAt.After(r.At) {
		return nil
	}
	return fmt.Errorf("%w: the agent SVID of node %s was attested at %s, before the node was evicted at %s; it cannot be used or renewed (attest anew once the eviction is lifted)",
		ErrEvicted, node, attestedAt.UTC().Format(time.RFC3339), r.At.UTC().Format(time.RFC3339))
}

// CheckAttest refuses a new attestation of node at now while its eviction
// is in force.
func (l List) CheckAttest(node string, now time.Time) error {
	r, ok := l[node]
	if !ok || !r.blocksAttestation(now) {
		return nil
	}
	until := "until `ca agent unevict " + node + "`"
	if !r.Until.IsZero() {
		until = "until " + r.Until.UTC().Format(time.RFC3339)
	}
	return fmt.Errorf("%w: node %s was evicted at %s; it may not attest %s", ErrEvicted, node, r.At.UTC().Format(time.RFC3339), until)
}

// Evict returns l with node evicted at now, refusing new attestations until
// until (zero: until unevicted). A second eviction moves the time forward.
func (l List) Evict(node string, now, until time.Time) (List, error) {
	if err := checkNode(node); err != nil {
		return nil, err
	}
	if !until.IsZero() && !until.After(now) {
		return nil, fmt.Errorf("--until: %s is not in the future", until.UTC().Format(time.RFC3339))
	}
	out := maps.Clone(l)
	if out == nil {
		out = List{}
	}
	r := Record{Node: node, At: now.UTC()}
	if !until.IsZero() {
		r.Until = until.UTC()
	}
	out[node] = r
	return out, nil
}

// Unevict returns l with the eviction of node lifted at now: new
// attestations are allowed, the agent SVIDs attested before the eviction
// stay refused.
func (l List) Unevict(node string, now time.Time) (List, error) {
	r, ok := l[node]
	if !ok {
		return nil, fmt.Errorf("node %s is not evicted", node)
	}
	out := maps.Clone(l)
	if r.blocksAttestation(now) {
		r.Until = now.UTC()
	}
	out[node] = r
	return out, nil
}

// Records returns the records sorted by node.
func (l List) Records() []Record {
	out := slices.Collect(maps.Values(l))
	slices.SortFunc(out, func(a, b Record) int {
		switch {
		case a.Node < b.Node:
			return -1
		case a.Node > b.Node:
			return 1
		}
		return 0
	})
	return out
}

// file is the stored form.
type file struct {
	Evictions []Record `json:"evictions"`
}

// maxNodes bounds a stored list, so a corrupt or hostile store cannot make
// every replica allocate without limit.
const maxNodes = 100_000

// Encode returns the stored form of l.
func Encode(l List) ([]byte, error) {
	return json.MarshalIndent(file{Evictions: l.Records()}, "", "  ")
}

// Decode parses and checks the stored form; errors name the entry.
func Decode(raw []byte) (List, error) {
	if len(raw) == 0 {
		return List{}, nil
	}
	var f file
	if err := json.Unmarshal(raw, &f); err != nil {
		return nil, fmt.Errorf("evictions: %w", err)
	}
	if len(f.Evictions) > maxNodes {
		return nil, fmt.Errorf("evictions: %d entries, at most %d", len(f.Evictions), maxNodes)
	}
	l := List{}
	for i, r := range f.Evictions {
		if err := checkNode(r.Node); err != nil {
			return nil, fmt.Errorf("evictions[%d].node: %w", i, err)
		}
		if r.At.IsZero() {
			return nil, fmt.Errorf("evictions[%d].evictedAt: must be set", i)
		}
		if _, dup := l[r.Node]; dup {
			return nil, fmt.Errorf("evictions[%d].node: %s is listed twice", i, r.Node)
		}
		l[r.Node] = r
	}
	return l, nil
}

var nodeCheckTD = spiffeid.RequireTrustDomainFromString("example.org")

// checkNode checks a node name with the agent ID rules.
func checkNode(node string) error {
	if node == "" {
		return errors.New("node name is empty")
	}
	if _, err := pki.AgentID(nodeCheckTD, node); err != nil {
		return fmt.Errorf("node name %q: %w", node, err)
	}
	return nil
}
