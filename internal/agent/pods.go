package agent

import (
	"cmp"
	"slices"
	"sync"
	"time"
)

// PodForgetGrace is how long a pod stays in the index, whatever the CA
// says, after it was added: a pod created a moment ago may not be in the
// CA's pod cache yet.
const PodForgetGrace = 2 * time.Minute

// PodIndex records, per identity, the pods on this node that carry it and
// the ServiceAccount token the kubelet gave for each (CSI volumes), so that
// the CA can authorize a request by one of them (Kubernetes mode). Every
// user of a pod (a Workload API stream, a CSI volume) adds it and releases
// it when done; a pod leaves the index with its last user, so the index
// holds only pods in use on this node. The zero value is ready to use.
//
// A pod whose volume was never unpublished (the agent was down when it
// went) would stay forever; the CA's answers remove it instead: Forget
// drops a pod the CA does not know (PodForgetGrace after it was added), and
// Worked moves the pod that obtained a certificate first, so a renewal
// asks for the pod that worked last, once.
type PodIndex struct {
	// Now is the clock of PodForgetGrace (default time.Now).
	Now func() time.Time

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
	seq   uint64 // when it was added or last worked, for the order of UIDs
	added time.Time
}

func (x *PodIndex) now() time.Time {
	if x.Now != nil {
		return x.Now()
	}
	return time.Now()
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
		p = &podEntry{seq: x.seq, added: x.now()}
		pods[uid] = p
	}
	if token != nil {
		p.token = token
	}
	p.users++
	var once sync.Once
	return func() { once.Do(func() { x.release(key, uid, p) }) }
}

// release ends one use of entry p of pod uid; a use of an entry that was
// forgotten (and perhaps added anew since) ends with nothing to do.
func (x *PodIndex) release(key, uid string, p *podEntry) {
	x.mu.Lock()
	defer x.mu.Unlock()
	pods := x.keys[key]
	if pods[uid] != p {
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

// UIDs returns the pods that carry identity key, the one that worked last
// or was added last first (the likeliest to still run).
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

// Forget drops pod uid from identity key, whoever still uses it, when the
// CA said it does not know the pod and the pod was added PodForgetGrace ago
// or earlier. It reports whether the pod was dropped.
func (x *PodIndex) Forget(key, uid string) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	pods := x.keys[key]
	p := pods[uid]
	if p == nil || x.now().Sub(p.added) < PodForgetGrace {
		return false
	}
	delete(pods, uid)
	if len(pods) == 0 {
		delete(x.keys, key)
	}
	return true
}

// Worked records that pod uid obtained identity key's certificate: UIDs
// lists it first from now on.
func (x *PodIndex) Worked(key, uid string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if p := x.keys[key][uid]; p != nil && p.seq != x.seq {
		x.seq++
		p.seq = x.seq
	}
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
	spec.PodGone = func(uid string) { x.Forget(key, uid) }
	spec.PodWorked = func(uid string) { x.Worked(key, uid) }
	return spec
}
