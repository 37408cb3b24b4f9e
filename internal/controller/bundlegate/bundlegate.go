// Package bundlegate tells whether every Kubernetes object that delivers the
// CA's trust bundle to pods holds a given bundle version: the ca.crt of
// every WorkloadCertificate Secret, the mayfly-trust-bundle ConfigMap of
// every selected namespace and the ClusterTrustBundle (what podCertificate
// and CSI pods project). A new root must not sign before all of them hold
// the bundle that contains it, and not before kubelet had the time to copy
// that bundle into the pods' volumes: the Gate adds a propagation delay
// after the last object was updated (docs/rotate-root.md derives its
// default from kubelet's code).
//
// The Gate reads the objects from the informers of the controller manager's
// cache, which the bundle and WorkloadCertificate controllers already hold
// (Secrets limited to those of WorkloadCertificates, ConfigMaps to
// mayfly-trust-bundle). An object's version is the hash of the certificates
// it holds (authority.BundleVersion), not an annotation that could lie.
package bundlegate

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	toolscache "k8s.io/client-go/tools/cache"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mayflyv1alpha1 "github.com/mayfly-pki/mayfly/api/mayfly/v1alpha1"
	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/controller/bundle"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// DefaultPropagationDelay is how long after the last object holds a bundle
// the Gate still waits for kubelet to project it into every pod: kubelet
// refreshes ConfigMap, Secret and projected volumes at each pod resync,
// every syncFrequency (1m) with up to 50% jitter, from caches that follow
// the objects by watch; 3m covers that with margin and also the TTLCache
// strategy at its default TTL of 1m (docs/rotate-root.md).
const DefaultPropagationDelay = 3 * time.Minute

// Kind is a kind of object the Gate tracks, as the metric label names it.
type Kind string

// The kinds of delivery objects.
const (
	KindConfigMap          Kind = "configmap"
	KindSecret             Kind = "secret"
	KindClusterTrustBundle Kind = "clustertrustbundle"
)

// Kinds lists every Kind in the order status and metrics show them.
var Kinds = []Kind{KindConfigMap, KindSecret, KindClusterTrustBundle}

// Source is the authority whose current bundle version the Gate checks.
type Source interface {
	Current() (*authority.Loaded, error)
}

// Gate tracks the delivery objects. Register it with SetupWithManager (it
// then runs on the leader, which rotates); its zero value tracks nothing.
type Gate struct {
	// Source names the bundle version every object must hold (Ready,
	// status and metrics; Adopted takes the version as an argument).
	Source Source
	// NamespaceSelector selects the namespaces whose ConfigMap counts, as
	// the bundle controller's does (default: all).
	NamespaceSelector labels.Selector
	// ClusterTrustBundle counts the ClusterTrustBundle (set it as the
	// bundle controller's ClusterTrustBundle).
	ClusterTrustBundle bool
	// NoSecrets leaves WorkloadCertificate Secrets out (the CA runs no
	// WorkloadCertificate controller and may not list Secrets).
	NoSecrets bool
	// PropagationDelay is how long Ready waits after every object holds
	// the version (0: not at all; the CA configures
	// DefaultPropagationDelay unless told otherwise).
	PropagationDelay time.Duration
	// Clock is the source of time (default the wall clock).
	Clock rotate.Clock
	// Logger receives when the objects converge (default: discarded).
	Logger *slog.Logger
	// Registerer receives mayfly_ca_bundle_pending_objects; nil registers
	// nothing.
	Registerer prometheus.Registerer

	informers cache.Informers

	mu      sync.Mutex
	synced  bool
	objects map[key]string // tracked object -> version it holds ("" missing or unreadable)
	counts  map[string]int // version -> tracked objects holding it
	// uniform is the version every tracked object holds since uniformSince
	// ("" when they differ).
	uniform      string
	uniformSince time.Time
	selected     map[string]bool   // namespace -> selected and not terminating
	configMaps   map[string]string // namespace -> version of its ConfigMap
}

// key names one tracked object.
type key struct {
	kind            Kind
	namespace, name string
}

func (k key) String() string {
	if k.namespace == "" {
		return string(k.kind) + " " + k.name
	}
	return string(k.kind) + " " + k.namespace + "/" + k.name
}

// SetupWithManager registers the Gate as a leader-only runnable reading
// the manager's cache, and its metric.
func (g *Gate) SetupWithManager(mgr ctrl.Manager) error {
	if g.Source == nil {
		return errors.New("bundlegate: Source is nil")
	}
	g.defaults()
	g.informers = mgr.GetCache()
	if g.Registerer != nil {
		if err := g.Registerer.Register(newPendingCollector(g)); err != nil {
			return fmt.Errorf("bundlegate: metrics: %w", err)
		}
	}
	return mgr.Add(g)
}

func (g *Gate) defaults() {
	if g.NamespaceSelector == nil {
		g.NamespaceSelector = labels.Everything()
	}
	if g.Clock == nil {
		g.Clock = rotate.RealClock{}
	}
	if g.Logger == nil {
		g.Logger = slog.New(slog.DiscardHandler)
	}
}

// NeedLeaderElection runs the Gate on the leader only: it is the replica
// that rotates, and followers need not hold every Secret in memory.
func (g *Gate) NeedLeaderElection() bool { return true }

// Start tracks the objects until ctx is done.
func (g *Gate) Start(ctx context.Context) error {
	g.defaults()
	g.mu.Lock()
	g.objects, g.counts = map[key]string{}, map[string]int{}
	g.selected, g.configMaps = map[string]bool{}, map[string]string{}
	g.uniform, g.uniformSince = "", time.Time{}
	if g.ClusterTrustBundle {
		g.setLocked(key{kind: KindClusterTrustBundle, name: bundle.ClusterTrustBundleName}, "")
	}
	g.mu.Unlock()

	type watch struct {
		obj    client.Object
		update func(obj any, deleted bool)
	}
	watches := []watch{
		{&corev1.Namespace{}, g.onNamespace},
		{&corev1.ConfigMap{}, g.onConfigMap},
	}
	if !g.NoSecrets {
		watches = append(watches, watch{&corev1.Secret{}, g.onSecret})
	}
	if g.ClusterTrustBundle {
		watches = append(watches, watch{&certificatesv1.ClusterTrustBundle{}, g.onClusterTrustBundle})
	}
	var synced []toolscache.InformerSynced
	for _, w := range watches {
		inf, err := g.informers.GetInformer(ctx, w.obj)
		if err != nil {
			return fmt.Errorf("bundlegate: informer for %T: %w", w.obj, err)
		}
		update := w.update
		reg, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
			AddFunc:    func(o any) { update(o, false) },
			UpdateFunc: func(_, o any) { update(o, false) },
			DeleteFunc: func(o any) {
				if t, ok := o.(toolscache.DeletedFinalStateUnknown); ok {
					o = t.Obj
				}
				update(o, true)
			},
		})
		if err != nil {
			return fmt.Errorf("bundlegate: watching %T: %w", w.obj, err)
		}
		defer func() { _ = inf.RemoveEventHandler(reg) }()
		synced = append(synced, reg.HasSynced)
	}
	if !toolscache.WaitForCacheSync(ctx.Done(), synced...) {
		return nil // ctx done
	}
	g.mu.Lock()
	g.synced = true
	g.mu.Unlock()
	<-ctx.Done()
	g.mu.Lock()
	g.synced = false
	g.mu.Unlock()
	return nil
}

func (g *Gate) onNamespace(obj any, deleted bool) {
	ns, ok := obj.(*corev1.Namespace)
	if !ok {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	sel := !deleted && ns.DeletionTimestamp == nil && g.NamespaceSelector.Matches(labels.Set(ns.Labels))
	if sel {
		g.selected[ns.Name] = true
	} else {
		delete(g.selected, ns.Name)
	}
	g.syncConfigMapLocked(ns.Name)
}

func (g *Gate) onConfigMap(obj any, deleted bool) {
	cm, ok := obj.(*corev1.ConfigMap)
	if !ok || cm.Name != bundle.ConfigMapName {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if deleted {
		delete(g.configMaps, cm.Namespace)
	} else {
		g.configMaps[cm.Namespace] = versionOfPEM([]byte(cm.Data[bundle.ConfigMapKey]))
	}
	g.syncConfigMapLocked(cm.Namespace)
}

// syncConfigMapLocked tracks the ConfigMap of ns when ns is selected (a
// missing ConfigMap is pending: the bundle controller creates it).
func (g *Gate) syncConfigMapLocked(ns string) {
	k := key{kind: KindConfigMap, namespace: ns, name: bundle.ConfigMapName}
	if !g.selected[ns] {
		g.deleteLocked(k)
		return
	}
	g.setLocked(k, g.configMaps[ns])
}

func (g *Gate) onSecret(obj any, deleted bool) {
	s, ok := obj.(*corev1.Secret)
	if !ok {
		return
	}
	k := key{kind: KindSecret, namespace: s.Namespace, name: s.Name}
	g.mu.Lock()
	defer g.mu.Unlock()
	if deleted || s.DeletionTimestamp != nil || !ofWorkloadCertificate(s) {
		g.deleteLocked(k)
		return
	}
	g.setLocked(k, versionOfPEM(s.Data["ca.crt"]))
}

// ofWorkloadCertificate reports whether s is written by the
// WorkloadCertificate controller: labelled and controlled by one.
func ofWorkloadCertificate(s *corev1.Secret) bool {
	if _, ok := s.Labels[mayflyv1alpha1.LabelWorkloadCertificate]; !ok {
		return false
	}
	ref := metav1.GetControllerOf(s)
	return ref != nil && ref.Kind == "WorkloadCertificate" && ref.APIVersion == mayflyv1alpha1.GroupVersion.String()
}

func (g *Gate) onClusterTrustBundle(obj any, deleted bool) {
	ctb, ok := obj.(*certificatesv1.ClusterTrustBundle)
	if !ok || ctb.Name != bundle.ClusterTrustBundleName {
		return
	}
	v := ""
	if !deleted {
		v = versionOfPEM([]byte(ctb.Spec.TrustBundle))
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.setLocked(key{kind: KindClusterTrustBundle, name: ctb.Name}, v)
}

func (g *Gate) setLocked(k key, version string) {
	if old, ok := g.objects[k]; ok {
		if old == version {
			return
		}
		g.uncountLocked(old)
	}
	g.objects[k] = version
	g.counts[version]++
	g.convergeLocked()
}

func (g *Gate) deleteLocked(k key) {
	old, ok := g.objects[k]
	if !ok {
		return
	}
	delete(g.objects, k)
	g.uncountLocked(old)
	g.convergeLocked()
}

func (g *Gate) uncountLocked(version string) {
	if g.counts[version]--; g.counts[version] <= 0 {
		delete(g.counts, version)
	}
}

// convergeLocked notes when every tracked object came to hold one version.
func (g *Gate) convergeLocked() {
	u := ""
	if len(g.counts) == 1 {
		for v := range g.counts {
			u = v
		}
	}
	if u == g.uniform {
		return
	}
	g.uniform = u
	g.uniformSince = g.Clock.Now()
	if u != "" && g.synced {
		g.Logger.Info("every Kubernetes trust bundle object holds one bundle", "bundle_version", u, "objects", len(g.objects))
	}
}

// versionOfPEM is the bundle version of the certificates in PEM data, ""
// when it holds none.
func versionOfPEM(data []byte) string {
	var ders [][]byte
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type == "CERTIFICATE" {
			ders = append(ders, b.Bytes)
		}
	}
	if len(ders) == 0 {
		return ""
	}
	return authority.BundleVersionDER(slices.Values(ders))
}

// Adopted reports whether every delivery object holds version, the objects
// that do not (sorted), and since when all of them do (zero when there is
// no object to wait for). Before the informers synced it reports false and
// no pending object.
func (g *Gate) Adopted(version string) (ok bool, pending []string, readySince time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.synced {
		return false, nil, time.Time{}
	}
	for k, v := range g.objects {
		if v != version {
			pending = append(pending, k.String())
		}
	}
	if len(pending) > 0 {
		slices.Sort(pending)
		return false, pending, time.Time{}
	}
	if len(g.objects) == 0 {
		return true, nil, time.Time{}
	}
	return true, nil, g.uniformSince
}

// Ready reports whether every delivery object holds the current bundle
// version and the propagation delay passed since they all do: the
// authority.BundleAcks of the Kubernetes delivery paths.
func (g *Gate) Ready() bool {
	l, err := g.Source.Current()
	if err != nil {
		return false
	}
	ok, _, since := g.Adopted(authority.BundleVersion(l.Bundle))
	return ok && !g.Clock.Now().Before(since.Add(g.delay()))
}

func (g *Gate) delay() time.Duration { return max(g.PropagationDelay, 0) }

// maxListed bounds the pending objects Status lists by name.
const maxListed = 5

// Status is what `ca status` shows of the delivery objects.
type Status struct {
	// Tracking is false on a replica that does not lead (or before the
	// informers synced): only the leader tracks the objects.
	Tracking      bool   `json:"tracking"`
	BundleVersion string `json:"bundleVersion,omitempty"`
	Objects       int    `json:"objects"`
	Pending       int    `json:"pending"`
	// PendingObjects are the first few pending objects, "kind ns/name".
	PendingObjects   []string   `json:"pendingObjects,omitempty"`
	AllSince         *time.Time `json:"allSince,omitempty"`
	PropagationDelay string     `json:"propagationDelay"`
	// PropagationLeft is how much of the delay is still to wait once every
	// object holds the bundle ("0s" when it passed).
	PropagationLeft string `json:"propagationLeft,omitempty"`
}

// Status reports the objects against the current bundle version.
func (g *Gate) Status() Status {
	g.defaults()
	st := Status{PropagationDelay: g.delay().String()}
	l, err := g.Source.Current()
	if err != nil {
		return st
	}
	ok, pending, since := g.Adopted(authority.BundleVersion(l.Bundle))
	g.mu.Lock()
	st.Tracking, st.Objects = g.synced, len(g.objects)
	g.mu.Unlock()
	if !st.Tracking {
		return st
	}
	st.BundleVersion = authority.BundleVersion(l.Bundle)
	st.Pending = len(pending)
	st.PendingObjects = pending[:min(len(pending), maxListed)]
	if ok {
		left := max(since.Add(g.delay()).Sub(g.Clock.Now()), 0)
		st.PropagationLeft = left.Truncate(time.Second).String()
		if !since.IsZero() {
			st.AllSince = &since
		}
	}
	return st
}

// pending counts, by kind, the tracked objects that do not hold version.
func (g *Gate) pending(version string) (map[Kind]int, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.synced {
		return nil, false
	}
	out := map[Kind]int{}
	for k, v := range g.objects {
		if v != version {
			out[k.kind]++
		}
	}
	return out, true
}

// pendingCollector reports mayfly_ca_bundle_pending_objects, computed at
// scrape time from the tracked objects and the current bundle.
type pendingCollector struct {
	g   *Gate
	mu  sync.Mutex // one scrape at a time refills gauge
	vec *prometheus.GaugeVec
}

func newPendingCollector(g *Gate) *pendingCollector {
	return &pendingCollector{g: g, vec: prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "mayfly_ca_bundle_pending_objects",
		Help: "Kubernetes objects that deliver the trust bundle (WorkloadCertificate Secrets, mayfly-trust-bundle ConfigMaps, the ClusterTrustBundle) and do not hold the current bundle yet, by kind; reported by the leader only.",
	}, []string{"kind"})}
}

func (c *pendingCollector) Describe(ch chan<- *prometheus.Desc) { c.vec.Describe(ch) }

func (c *pendingCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.vec.Reset()
	if l, err := c.g.Source.Current(); err == nil {
		if counts, ok := c.g.pending(authority.BundleVersion(l.Bundle)); ok {
			for _, k := range Kinds {
				if k != KindClusterTrustBundle || c.g.ClusterTrustBundle {
					c.vec.WithLabelValues(string(k)).Set(float64(counts[k]))
				}
			}
		}
	}
	c.vec.Collect(ch)
}
