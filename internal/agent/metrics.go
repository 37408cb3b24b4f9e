package agent

import (
	"crypto/x509"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Delivery paths of an identity, the path label of the SVID metrics.
const (
	// PathSocket is the Workload API socket (the default of Spec.Path).
	PathSocket = "socket"
	// PathCSI is a CSI volume of csi.mayfly.dev.
	PathCSI = "csi"
	// PathWriteDir is the files a registration writes under writeDir.
	PathWriteDir = "writedir"
	// PathAgent is the agent's own SVID (identity "agent").
	PathAgent = "agent"
)

// agentIdentity is the identity label of the agent's own SVID; no Spec.Key
// takes this form ("ns/sa" or a SPIFFE ID).
const agentIdentity = "agent"

// svidMetrics exports notBefore and notAfter of every SVID the agent holds:
// mayfly_agent_svid_{issued,expiry}_timestamp_seconds{path,identity,spiffe_id},
// one series per identity (the Manager's key) and delivery path that asked
// for it, from the first rotation until the identity is removed.
type svidMetrics struct {
	notBefore, notAfter *prometheus.Desc

	mu   sync.Mutex
	held map[string]*heldSVID // by identity
}

type heldSVID struct {
	paths               []string
	spiffeID            string
	notBefore, notAfter time.Time // zero before the first rotation
}

func newSVIDMetrics() *svidMetrics {
	labels := []string{"path", "identity", "spiffe_id"}
	return &svidMetrics{
		notBefore: prometheus.NewDesc("mayfly_agent_svid_issued_timestamp_seconds",
			"notBefore of each SVID this agent holds, by delivery path (socket, csi, writedir, agent) and identity, as a Unix timestamp.", labels, nil),
		notAfter: prometheus.NewDesc("mayfly_agent_svid_expiry_timestamp_seconds",
			"notAfter of each SVID this agent holds, by delivery path (socket, csi, writedir, agent) and identity, as a Unix timestamp.", labels, nil),
		held: map[string]*heldSVID{},
	}
}

// serve records that identity is delivered on path ("" is PathSocket).
func (s *svidMetrics) serve(identity, path string) {
	if path == "" {
		path = PathSocket
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.held[identity]
	if h == nil {
		h = &heldSVID{}
		s.held[identity] = h
	}
	for _, p := range h.paths {
		if p == path {
			return
		}
	}
	h.paths = append(h.paths, path)
}

// rotated records identity's current certificate; an identity that no
// path serves (removed meanwhile) is ignored.
func (s *svidMetrics) rotated(identity string, leaf *x509.Certificate) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if h := s.held[identity]; h != nil {
		h.spiffeID, h.notBefore, h.notAfter = idOf(leaf), leaf.NotBefore, leaf.NotAfter
	}
}

// remove forgets identity and its series.
func (s *svidMetrics) remove(identity string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.held, identity)
}

// Describe implements prometheus.Collector.
func (s *svidMetrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- s.notBefore
	ch <- s.notAfter
}

// Collect implements prometheus.Collector.
func (s *svidMetrics) Collect(ch chan<- prometheus.Metric) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for identity, h := range s.held {
		if h.notAfter.IsZero() {
			continue
		}
		for _, path := range h.paths {
			ch <- prometheus.MustNewConstMetric(s.notBefore, prometheus.GaugeValue, float64(h.notBefore.Unix()), path, identity, h.spiffeID)
			ch <- prometheus.MustNewConstMetric(s.notAfter, prometheus.GaugeValue, float64(h.notAfter.Unix()), path, identity, h.spiffeID)
		}
	}
}
