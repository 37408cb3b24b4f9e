package adoption

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// WaitSource says which bundle version a prepared root waits for and when
// the wait ends (RootWait of the state in force); ok is false when no root
// waits.
type WaitSource func() (version string, deadline time.Time, ok bool)

// Collector exposes the adoption of a waiting root, computed on scrape:
//
//	mayfly_ca_root_adoption_expected_nodes
//	mayfly_ca_root_adoption_pending_nodes
//	mayfly_ca_root_adoption_wait_remaining_seconds (only while a root waits)
type Collector struct {
	View *View
	Wait WaitSource
	Now  func() time.Time
}

// The metrics' names and help, as Opts so that tools listing the
// project's metrics by their Name field find them.
var (
	expectedOpts = prometheus.GaugeOpts{
		Name: "mayfly_ca_root_adoption_expected_nodes",
		Help: "Nodes that must hold the trust bundle before a new root activates (Node objects, or configured nodes standalone).",
	}
	pendingOpts = prometheus.GaugeOpts{
		Name: "mayfly_ca_root_adoption_pending_nodes",
		Help: "Expected nodes whose agent did not acknowledge the bundle with the waiting next root on any CA replica (0 when no root waits).",
	}
	remainingOpts = prometheus.GaugeOpts{
		Name: "mayfly_ca_root_adoption_wait_remaining_seconds",
		Help: "Time until the waiting next root activates without the pending nodes (rotation.rootAckWait); absent when no root waits.",
	}
	expectedDesc  = prometheus.NewDesc(expectedOpts.Name, expectedOpts.Help, nil, nil)
	pendingDesc   = prometheus.NewDesc(pendingOpts.Name, pendingOpts.Help, nil, nil)
	remainingDesc = prometheus.NewDesc(remainingOpts.Name, remainingOpts.Help, nil, nil)
)

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- expectedDesc
	ch <- pendingDesc
	ch <- remainingDesc
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	version, deadline, waiting := c.Wait()
	if !waiting {
		nodes, _ := c.View.Nodes.Nodes()
		ch <- prometheus.MustNewConstMetric(expectedDesc, prometheus.GaugeValue, float64(len(nodes)))
		ch <- prometheus.MustNewConstMetric(pendingDesc, prometheus.GaugeValue, 0)
		return
	}
	p := c.View.Pending(version)
	if p.Known { // else the node list is not synced: no figure rather than a wrong one
		ch <- prometheus.MustNewConstMetric(expectedDesc, prometheus.GaugeValue, float64(p.Expected))
		ch <- prometheus.MustNewConstMetric(pendingDesc, prometheus.GaugeValue, float64(len(p.Nodes)))
	}
	ch <- prometheus.MustNewConstMetric(remainingDesc, prometheus.GaugeValue, max(0, deadline.Sub(c.Now()).Seconds()))
}

// MaxListed is how many pending node names a Status lists.
const MaxListed = 20

// Status is the adoption of a waiting root for `ca status`.
type Status struct {
	BundleVersion string `json:"bundleVersion"`
	// Known is false while the expected nodes are not listed yet.
	Known    bool `json:"known"`
	Expected int  `json:"expected"`
	Pending  int  `json:"pending"`
	// PendingNodes are the first MaxListed pending nodes, sorted.
	PendingNodes []string `json:"pendingNodes,omitempty"`
	// WaitRemaining is how long until the root activates anyway.
	WaitRemaining time.Duration `json:"waitRemaining"`
}

// StatusOf returns the adoption of the waiting root, or nil when none waits.
func (c *Collector) StatusOf() *Status {
	version, deadline, waiting := c.Wait()
	if !waiting {
		return nil
	}
	p := c.View.Pending(version)
	st := &Status{BundleVersion: version, Known: p.Known, Expected: p.Expected, Pending: len(p.Nodes), WaitRemaining: max(0, deadline.Sub(c.Now()))}
	st.PendingNodes = p.Nodes[:min(len(p.Nodes), MaxListed)]
	return st
}
