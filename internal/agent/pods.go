package agent

import (
	"cmp"
	"slices"
	"sync"
)

// PodIndex records, per identity, the pods on this node that carry it and
// the ServiceAccount token the kubelet gave for each (CSI volumes), so that
// the CA can authorize a request by one of them (Kubernetes mode). Every
// user of a pod (a Workload API stream, a CSI volume) adds it and releases
// it when done; a pod leaves the index with its last user, so the index
// holds only pods in use on this node. The zero value is ready to use.
type PodIndex struct {
	mu   sync.Mutex
	keys map[string]map[string]*podEntry // identity key -> pod UID
	seq  uint64
}

type podEntry struct {
	token string
	users int
	seq   uint64 // when it was added, for the order of UIDs
}

// Add records that pod uid carries identity key, with the pod's token if
// the caller has one (a token already known is kept when token is empty),
// and returns the function that releases this use; calling it twice is
// safe.
func (x *PodIndex) Add(key, uid, token string) (release func()) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.keys == nil {
		x.keys = map[string]map[string]*podEntry{}
	}
	pods := x.keys[key]
	if pods == nil {
		pods = map[string]*podEntry{}
		x.keys[key] = pods
	}
	p := pods[uid]
	if p == nil {
		x.seq++
		p = &podEntry{seq: x.seq}
		pods[uid] = p
	}
	if token != "" {
		p.token = token
	}
	p.users++
	var once sync.Once
	return func() { once.Do(func() { x.release(key, uid) }) }
}

func (x *PodIndex) release(key, uid string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	pods := x.keys[key]
	p := pods[uid]
	if p == nil {
		return
	}
	if p.users--; p.users > 0 {
		return
	}
	delete(pods, uid)
	if len(pods) == 0 {
		delete(x.keys, key)
	}
}

// UIDs returns the pods that carry identity key, the most recently added
// first (the likeliest to still run).
func (x *PodIndex) UIDs(key string) []string {
	x.mu.Lock()
	defer x.mu.Unlock()
	pods := x.keys[key]
	out := make([]string, 0, len(pods))
	for uid := range pods {
		out = append(out, uid)
	}
	slices.SortFunc(out, func(a, b string) int {
		return cmp.Compare(pods[b].seq, pods[a].seq)
	})
	return out
}

// Token returns the token of pod uid for identity key, or "".
func (x *PodIndex) Token(key, uid string) string {
	x.mu.Lock()
	defer x.mu.Unlock()
	if p := x.keys[key][uid]; p != nil {
		return p.token
	}
	return ""
}

// Len returns the number of identities that have pods, for tests and
// metrics.
func (x *PodIndex) Len() int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return len(x.keys)
}

// spec returns spec with its pods and tokens read from x.
func (x *PodIndex) spec(spec Spec) Spec {
	key := spec.Key
	spec.PodUIDs = func() []string { return x.UIDs(key) }
	spec.PodToken = func(uid string) string { return x.Token(key, uid) }
	return spec
}
