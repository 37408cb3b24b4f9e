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
	keys map[authKey]*expiryHeap
	desc *prometheus.Desc
}

type authKey struct{ role, serial string }

func newLiveLeaves(now func() time.Time) *liveLeaves {
	return &liveLeaves{
		now:  now,
		keys: map[authKey]*expiryHeap{},
		desc: prometheus.NewDesc("mayfly_ca_authority_live_leaves",
			"Leaves issued by this replica since it started that are still valid, by the authority key they chain to (role/serial of an intermediate or root). Per replica: sum over the replicas.",
			[]string{"authority"}, nil),
	}
}

// record counts one leaf signed under a: its intermediate and the root
// above (found in bundle by its key ID).
func (l *liveLeaves) record(a *authority.Loaded, notAfter time.Time) {
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
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, k := range keys {
		h := l.keys[k]
		if h == nil {
			h = &expiryHeap{}
			l.keys[k] = h
		}
		heap.Push(h, notAfter)
	}
}

// Counts returns the live leaves per authority key, pruning expired ones
// and forgetting keys with none.
func (l *liveLeaves) Counts() []AuthorityLeaves {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]AuthorityLeaves, 0, len(l.keys))
	for k, h := range l.keys {
		for h.Len() > 0 && !now.Before((*h)[0]) {
			heap.Pop(h)
		}
		out = append(out, AuthorityLeaves{Role: k.role, Serial: k.serial, Live: h.Len()})
		if h.Len() == 0 {
			delete(l.keys, k)
		}
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
