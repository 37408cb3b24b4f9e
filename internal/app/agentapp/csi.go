package agentapp

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"

	"github.com/mayfly-pki/mayfly/internal/agent"
	"github.com/mayfly-pki/mayfly/internal/csi"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// csiIdentities gives CSI volumes their identities from the agent's
// Manager: volumes of one ServiceAccount with the same options share one
// certificate, like Workload API callers do.
type csiIdentities struct {
	mgr *agent.Manager

	mu     sync.Mutex
	pods   map[string]map[string]string // identity key -> pod UID -> token
	counts map[string]int
}

func newCSIIdentities(mgr *agent.Manager) *csiIdentities {
	return &csiIdentities{mgr: mgr, pods: map[string]map[string]string{}, counts: map[string]int{}}
}

func (c *csiIdentities) Track(id csi.VolumeIdentity, sink rotate.Sink) (func(), error) {
	if id.Namespace == "" || id.ServiceAccount == "" || id.PodUID == "" {
		return nil, fmt.Errorf("volume identity needs namespace, ServiceAccount and pod UID")
	}
	key := id.Namespace + "/" + id.ServiceAccount
	if len(id.DNSNames) > 0 || id.TTL != 0 || id.KeyType != "" {
		h := sha256.Sum256([]byte(strings.Join(id.DNSNames, ",") + "|" + id.TTL.String() + "|" + string(id.KeyType)))
		key += "#" + hex.EncodeToString(h[:6])
	}
	c.mu.Lock()
	if c.pods[key] == nil {
		c.pods[key] = map[string]string{}
	}
	if id.PodToken != "" || c.pods[key][id.PodUID] == "" {
		c.pods[key][id.PodUID] = id.PodToken
	}
	c.counts[key+"\x00"+id.PodUID]++
	c.mu.Unlock()

	spec := agent.Spec{
		Key: key, DNSNames: id.DNSNames, TTL: id.TTL, KeyType: id.KeyType, Path: agent.PathCSI,
		PodUIDs: func() []string {
			c.mu.Lock()
			defer c.mu.Unlock()
			out := make([]string, 0, len(c.pods[key]))
			for uid := range c.pods[key] {
				out = append(out, uid)
			}
			return out
		},
		PodToken: func(uid string) string {
			c.mu.Lock()
			defer c.mu.Unlock()
			return c.pods[key][uid]
		},
	}
	rot := c.mgr.Ensure(spec)
	// A volume counts as a watcher, so idle collection leaves it alone.
	_, unsubscribe := c.mgr.Subscribe(key)
	removeSink := rot.AddSink(sink)
	var once sync.Once
	return func() {
		once.Do(func() {
			removeSink()
			unsubscribe()
			c.mu.Lock()
			ck := key + "\x00" + id.PodUID
			c.counts[ck]--
			if c.counts[ck] <= 0 {
				delete(c.counts, ck)
				delete(c.pods[key], id.PodUID)
			}
			c.mu.Unlock()
		})
	}, nil
}
