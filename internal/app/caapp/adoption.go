package caapp

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"

	"github.com/mayfly-pki/mayfly/internal/adoption"
	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// adoptionWiring counts which nodes hold the bundle with a waiting root:
// the authority's BundleAcks, the adoption metrics and `ca status`.
type adoptionWiring struct {
	tracker   *adoption.Tracker
	view      *adoption.View
	collector *adoption.Collector
	// runnables run on every replica (Kubernetes mode): the Node watch, the
	// reader of every replica's acknowledgements and the writer of ours.
	runnables []func(context.Context) error
}

// newStandaloneAdoption expects the configured nodes and every node whose
// agent acknowledged a bundle since the CA started: a standalone CA is one
// process, so its own Tracker sees every agent. A configured node whose
// agent never connects blocks a root until rotation.rootAckWait.
func newStandaloneAdoption(cfg *Config) *adoptionWiring {
	names := make(adoption.StaticNodes, 0, len(cfg.Nodes))
	for _, n := range cfg.Nodes {
		names = append(names, n.Name)
	}
	t := adoption.NewTracker()
	return &adoptionWiring{tracker: t, view: &adoption.View{Nodes: adoption.UnionNodes{names, t}, Acks: []adoption.AckSource{t}}}
}

// newKubeAdoption expects the cluster's Nodes (those matching
// rotation.adoption.nodeSelector) and counts the acknowledgements that
// every replica publishes in its ConfigMap.
func newKubeAdoption(cfg *Config, restCfg *rest.Config, kube kubernetes.Interface, replica string, clock rotate.Clock, kick func()) (*adoptionWiring, error) {
	sel := labels.Everything()
	if s := cfg.AdoptionNodeSelector; s != "" {
		var err error
		if sel, err = labels.Parse(s); err != nil {
			return nil, fmt.Errorf("rotation.adoption.nodeSelector: %w", err)
		}
	}
	if replica == "" {
		replica = os.Getenv("POD_NAME")
	}
	if replica == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("adoption: replica name (POD_NAME or hostname): %w", err)
		}
		replica = strings.ToLower(h) // a pod's hostname is its name; a host's may have capitals
	}
	if _, err := adoption.ConfigMapName(replica); err != nil {
		return nil, err
	}
	meta, err := metadata.NewForConfig(restCfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes metadata client: %w", err)
	}
	ns := cfg.Kubernetes.Namespace
	t := adoption.NewTracker()
	nodes := &adoption.KubeNodes{Client: meta, Selector: sel}
	g := &adoption.Gatherer{Client: kube, Namespace: ns, Clock: clock, OnChange: kick}
	p := &adoption.Publisher{Client: kube, Namespace: ns, Replica: replica, Tracker: t, Clock: clock}
	return &adoptionWiring{
		tracker:   t,
		view:      &adoption.View{Nodes: nodes, Acks: []adoption.AckSource{t, g}},
		runnables: []func(context.Context) error{nodes.Start, g.Start, p.Start},
	}, nil
}

// bind connects the counts to the authority in force and registers the
// metrics; call it once the Manager exists.
func (a *adoptionWiring) bind(mgr *authority.Manager, p authority.Policy, clock rotate.Clock, reg prometheus.Registerer) {
	a.collector = &adoption.Collector{View: a.view, Now: clock.Now, Wait: func() (string, time.Time, bool) {
		l, err := mgr.Current()
		if err != nil {
			return "", time.Time{}, false
		}
		return adoption.RootWait(l, p)
	}}
	reg.MustRegister(a.collector)
}

// acks is the authority's BundleAcks: every expected node acknowledged the
// bundle in force (which carries the waiting root).
func (a *adoptionWiring) acks(mgr **authority.Manager) authority.BundleAcks {
	return func() bool {
		if *mgr == nil {
			return false
		}
		l, err := (*mgr).Current()
		return err == nil && a.view.Adopted(l.BundleVersion)
	}
}
