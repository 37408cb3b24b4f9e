package issuer

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"sync"
	"time"

	"github.com/mayfly-pki/mayfly/internal/authority"
)

// verifiedAgents remembers the agent SVID chains that verified against a
// bundle, so that the calls of a connection (a batch every few seconds
// from every node) do not verify the same chain's signatures again: the
// chain verification was the largest single cost of a SignWorkloads call
// at fleet scale (docs/performance.md).
//
// An entry is keyed by the SHA-256 of the presented chain (leaf and
// intermediates) and serves only while the authority state it was verified
// against is the one in force (a new bundle, a rotation: verified again)
// and the time is within every certificate's validity, the presented
// chain's and the bundle roots' alike. What verification does not cover
// is still checked on every call by the caller: the node's current view
// and evictions (checkAgent). At most verifiedAgentsMax entries.
type verifiedAgents struct {
	mu sync.Mutex
	m  map[[sha256.Size]byte]verifiedAgent
}

type verifiedAgent struct {
	loaded      *authority.Loaded
	from, until time.Time // inclusive: within every certificate's validity
	node        string
	attestedAt  time.Time
}

// verifiedAgentsMax bounds the entries: two SVIDs per agent (one renewed
// at half life) for 30,000 nodes.
const verifiedAgentsMax = 1 << 16

func chainKey(certs []*x509.Certificate) [sha256.Size]byte {
	h := sha256.New()
	for _, c := range certs {
		h.Write(binary.BigEndian.AppendUint64(nil, uint64(len(c.Raw))))
		h.Write(c.Raw)
	}
	var k [sha256.Size]byte
	h.Sum(k[:0])
	return k
}

// get returns the agent of a chain verified against loaded, if now is
// within the validity it was verified for.
func (v *verifiedAgents) get(key [sha256.Size]byte, loaded *authority.Loaded, now time.Time) (verifiedAgent, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	e, ok := v.m[key]
	if !ok || e.loaded != loaded || now.Before(e.from) || now.After(e.until) {
		return verifiedAgent{}, false
	}
	return e, true
}

// put remembers that the chain certs verified against loaded and its
// bundle roots as the agent of node.
func (v *verifiedAgents) put(key [sha256.Size]byte, certs []*x509.Certificate, loaded *authority.Loaded, node string, attestedAt time.Time, now time.Time) {
	e := verifiedAgent{loaded: loaded, node: node, attestedAt: attestedAt, from: certs[0].NotBefore, until: certs[0].NotAfter}
	for _, c := range append(certs[1:len(certs):len(certs)], loaded.Bundle...) {
		if c.NotBefore.After(e.from) {
			e.from = c.NotBefore
		}
		if c.NotAfter.Before(e.until) {
			e.until = c.NotAfter
		}
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.m == nil {
		v.m = map[[sha256.Size]byte]verifiedAgent{}
	}
	if _, ok := v.m[key]; !ok && len(v.m) >= verifiedAgentsMax {
		for k, old := range v.m {
			if now.After(old.until) || old.loaded != loaded {
				delete(v.m, k)
			}
		}
		for k := range v.m {
			if len(v.m) < verifiedAgentsMax {
				break
			}
			delete(v.m, k)
		}
	}
	v.m[key] = e
}
