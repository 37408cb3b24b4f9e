package issuer

import (
	"bytes"
	"container/heap"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mayfly-pki/mayfly/internal/authority"
)

// AuthorityLeaves is how many leaves this replica issued, since it started,
// that are still valid and chain to one authority key.
type AuthorityLeaves struct {
	Role   string `json:"role"`
	Serial string `json:"serial"`
	Live   int    `json:"liveLeaves"`
}

// liveLeaves counts, per authority key, the leaves this replica issued that
// have not expired: a min-heap of notAfter per key, pruned on every read
// and write. It is per replica and since its start (it is not persisted):
// an operator sums it over the replicas and waits one leaf lifetime after a
// restart before trusting a zero.
type liveLeaves struct {
	mu   sync.Mutex
	now  func() time.Time
	keys map[authKey]*keyLeaves
	desc *prometheus.Desc
	// keysOf and keyList cache the authority keys of the last authority
	// recorded: they change only with it.
	keysOf  *authority.Loaded
	keyList []authKey
}

// keyLeaves are the live leaves of one key and the last notAfter seen: a
// key shows 0 for a day after its last leaf expired, then is forgotten.
type keyLeaves struct {
	expiries expiryHeap
	last     time.Time
}

// zeroKept is how long a key with no live leaf is still reported (as 0).
const zeroKept = 24 * time.Hour

type authKey struct{ role, serial string }

func newLiveLeaves(now func() time.Time) *liveLeaves {
	return &liveLeaves{
		now:  now,
		keys: map[authKey]*keyLeaves{},
		desc: prometheus.NewDesc("mayfly_ca_authority_live_leaves",
			"Leaves issued by this replica since it started that are still valid, by the authority key they chain to (role/serial of an intermediate or root). Per replica: sum over the replicas.",
			[]string{"authority"}, nil),
	}
}

// record counts one leaf signed under a: its intermediate and the root
// above (found in bundle by its key ID).
func (l *liveLeaves) record(a *authority.Loaded, notAfter time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.keysOf != a {
		l.keysOf, l.keyList = a, authorityKeys(a)
	}
	for _, k := range l.keyList {
		kl := l.keys[k]
		if kl == nil {
			kl = &keyLeaves{}
			l.keys[k] = kl
		}
		heap.Push(&kl.expiries, notAfter)
		if notAfter.After(kl.last) {
			kl.last = notAfter
		}
	}
}

// authorityKeys names the keys a leaf signed under a chains to: its
// intermediate and the root above (found in the bundle by its key ID).
func authorityKeys(a *authority.Loaded) []authKey {
	keys := []authKey{{authority.RoleIntermediate, a.Authority.Cert.SerialNumber.Text(16)}}
	top := a.Authority.Cert
	if n := len(a.Authority.Chain); n > 0 {
		top = a.Authority.Chain[n-1]
	}
	for _, r := range a.Bundle {
		if len(r.SubjectKeyId) > 0 && bytes.Equal(r.SubjectKeyId, top.AuthorityKeyId) {
			keys = append(keys, authKey{authority.RoleRoot, r.SerialNumber.Text(16)})
			break
		}
	}
	return keys
}

// Counts returns the live leaves per authority key, pruning expired ones;
// a key with none is reported as 0 for zeroKept, then forgotten.
func (l *liveLeaves) Counts() []AuthorityLeaves {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]AuthorityLeaves, 0, len(l.keys))
	for k, kl := range l.keys {
		h := &kl.expiries
		for h.Len() > 0 && !now.Before((*h)[0]) {
			heap.Pop(h)
		}
		if h.Len() == 0 && now.After(kl.last.Add(zeroKept)) {
			delete(l.keys, k)
			continue
		}
		out = append(out, AuthorityLeaves{Role: k.role, Serial: k.serial, Live: h.Len()})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Role != out[j].Role {
			return out[i].Role < out[j].Role
		}
		return out[i].Serial < out[j].Serial
	})
	return out
}

func (l *liveLeaves) Describe(ch chan<- *prometheus.Desc) { ch <- l.desc }

func (l *liveLeaves) Collect(ch chan<- prometheus.Metric) {
	for _, c := range l.Counts() {
		ch <- prometheus.MustNewConstMetric(l.desc, prometheus.GaugeValue, float64(c.Live), c.Role+"/"+c.Serial)
	}
}

type expiryHeap []time.Time

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].Before(h[j]) }
func (h expiryHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *expiryHeap) Push(x any)        { *h = append(*h, x.(time.Time)) }
func (h *expiryHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}
