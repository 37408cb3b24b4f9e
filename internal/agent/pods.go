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

// TokenSource gives a pod's current ServiceAccount token: the CSI driver's
// source follows the kubelet's republishes and never hands out an expired
// one, so it is asked anew for every request to the CA.
type TokenSource interface {
	PodToken() string
}

// StaticToken is a TokenSource of one fixed token.
type StaticToken string

// PodToken implements TokenSource.
func (t StaticToken) PodToken() string { return string(t) }

type podEntry struct {
	token TokenSource
	users int
	seq   uint64 // when it was added, for the order of UIDs
}

// Add records that pod uid carries identity key, with the pod's token if
// the caller has one (a token source already known is kept when token is nil),
// and returns the function that releases this use; calling it twice is
// safe.
func (x *PodIndex) Add(key, uid string, token TokenSource) (release func()) {
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
	if token != nil {
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

// Token returns the current token of pod uid for identity key, or "".
func (x *PodIndex) Token(key, uid string) string {
	x.mu.Lock()
	var src TokenSource
	if p := x.keys[key][uid]; p != nil {
		src = p.token
	}
	x.mu.Unlock()
	if src == nil {
		return ""
	}
	return src.PodToken()
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
