package adoption

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	toolscache "k8s.io/client-go/tools/cache"

	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// The ConfigMaps a Publisher writes: one per replica, labelled so that a
// Gatherer lists only them, stamped by the writer.
const (
	ConfigMapPrefix = "mayfly-adoption-"
	LabelKey        = "mayfly.dev/adoption"
	LabelValue      = "acks"
	UpdatedKey      = "mayfly.dev/adoption-updated"
	DataKey         = "acks.json.gz"
)

// Defaults of the Kubernetes parts.
const (
	DefaultInterval  = 2 * time.Second
	DefaultHeartbeat = time.Minute
	DefaultStale     = 3 * time.Minute
)

// ConfigMapName is the name of replica's ConfigMap, or an error naming
// what is wrong with replica.
func ConfigMapName(replica string) (string, error) {
	name := ConfigMapPrefix + replica
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		return "", fmt.Errorf("adoption: replica name %q does not make a ConfigMap name: %s", replica, errs[0])
	}
	return name, nil
}

// Publisher writes a replica's Tracker as the ConfigMap
// mayfly-adoption-<replica>: at most once per Interval, only when the
// acknowledgements changed, and once per Heartbeat to renew the stamp that
// tells the Gatherers this replica is alive.
type Publisher struct {
	Client    kubernetes.Interface
	Namespace string
	Replica   string
	Tracker   *Tracker
	Clock     rotate.Clock
	Interval  time.Duration
	Heartbeat time.Duration
	Logger    *slog.Logger

	written   uint64 // generation written last (+1; 0 = never)
	lastWrite time.Time
	rv        string // resourceVersion of our last write
}

// Start publishes until ctx is done.
func (p *Publisher) Start(ctx context.Context) error {
	name, err := ConfigMapName(p.Replica)
	if err != nil {
		return err
	}
	p.defaults()
	changes, unsubscribe := p.Tracker.Subscribe()
	defer unsubscribe()
	for {
		if err := p.publish(ctx, name); err != nil && ctx.Err() == nil {
			p.Logger.Warn("publishing bundle acknowledgements failed; retrying", "configmap", name, "error", err)
		} else {
			// Wait for a change or the heartbeat.
			t := p.Clock.NewTimer(p.Heartbeat - p.Clock.Now().Sub(p.lastWrite))
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-changes:
			case <-t.C():
			}
			t.Stop()
		}
		// Coalesce: at most one write per Interval.
		t := p.Clock.NewTimer(p.Interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C():
		}
	}
}

func (p *Publisher) defaults() {
	if p.Clock == nil {
		p.Clock = rotate.RealClock{}
	}
	if p.Interval <= 0 {
		p.Interval = DefaultInterval
	}
	if p.Heartbeat <= 0 {
		p.Heartbeat = DefaultHeartbeat
	}
	if p.Logger == nil {
		p.Logger = slog.New(slog.DiscardHandler)
	}
}

// publish writes the ConfigMap if the acknowledgements changed or the
// heartbeat is due. An update with the resourceVersion of our own last
// write costs one request; a conflict (first write, or someone else
// touched it) reads it first.
func (p *Publisher) publish(ctx context.Context, name string) error {
	now := p.Clock.Now()
	acks, gen := p.Tracker.Snapshot()
	if p.written == gen+1 && now.Sub(p.lastWrite) < p.Heartbeat {
		return nil
	}
	data, err := Encode(acks)
	if err != nil {
		return err
	}
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: p.Namespace, ResourceVersion: p.rv,
			Labels:      map[string]string{LabelKey: LabelValue, "app.kubernetes.io/managed-by": "mayfly-ca"},
			Annotations: map[string]string{UpdatedKey: now.UTC().Format(time.RFC3339Nano)},
		},
		BinaryData: map[string][]byte{DataKey: data},
	}
	cms := p.Client.CoreV1().ConfigMaps(p.Namespace)
	var out *corev1.ConfigMap
	if p.rv != "" {
		out, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
	}
	if p.rv == "" || apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
		out, err = p.createOrUpdate(ctx, cm)
	}
	if err != nil {
		return err
	}
	p.rv, p.written, p.lastWrite = out.ResourceVersion, gen+1, now
	return nil
}

func (p *Publisher) createOrUpdate(ctx context.Context, cm *corev1.ConfigMap) (*corev1.ConfigMap, error) {
	cms := p.Client.CoreV1().ConfigMaps(p.Namespace)
	cur, err := cms.Get(ctx, cm.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		cm.ResourceVersion = ""
		return cms.Create(ctx, cm, metav1.CreateOptions{})
	}
	if err != nil {
		return nil, err
	}
	cm.ResourceVersion = cur.ResourceVersion
	return cms.Update(ctx, cm, metav1.UpdateOptions{})
}

// Gatherer reads the ConfigMaps of every replica (a watch on the label) and
// answers whether any live replica saw a node acknowledge a version. A
// replica whose stamp is older than Stale is ignored: it is gone, and its
// agents reconnect to (and acknowledge at) another replica.
type Gatherer struct {
	Client    kubernetes.Interface
	Namespace string
	Clock     rotate.Clock
	Stale     time.Duration
	Logger    *slog.Logger
	// OnChange is called after a replica's record changed (Manager.Kick).
	OnChange func()

	mu       sync.RWMutex
	replicas map[string]replicaAcks
	synced   func() bool
}

type replicaAcks struct {
	updated time.Time
	acks    map[string]map[string]struct{}
}

// Start watches the ConfigMaps until ctx is done.
func (g *Gatherer) Start(ctx context.Context) error {
	if g.Clock == nil {
		g.Clock = rotate.RealClock{}
	}
	if g.Stale <= 0 {
		g.Stale = DefaultStale
	}
	if g.Logger == nil {
		g.Logger = slog.New(slog.DiscardHandler)
	}
	f := informers.NewSharedInformerFactoryWithOptions(g.Client, 10*time.Minute,
		informers.WithNamespace(g.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.LabelSelector = labels.Set{LabelKey: LabelValue}.String()
		}))
	inf := f.Core().V1().ConfigMaps().Informer()
	if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { g.set(o) },
		UpdateFunc: func(_, o any) { g.set(o) },
		DeleteFunc: g.remove,
	}); err != nil {
		return err
	}
	g.mu.Lock()
	g.synced = inf.HasSynced
	g.mu.Unlock()
	f.Start(ctx.Done())
	<-ctx.Done()
	f.Shutdown()
	return nil
}

// HasSynced reports whether the first list of the ConfigMaps arrived.
func (g *Gatherer) HasSynced() bool {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.synced != nil && g.synced()
}

func (g *Gatherer) set(o any) {
	cm, ok := o.(*corev1.ConfigMap)
	if !ok {
		return
	}
	updated, err := time.Parse(time.RFC3339Nano, cm.Annotations[UpdatedKey])
	if err != nil {
		g.Logger.Warn("ignoring adoption record with a bad stamp", "configmap", cm.Name, "annotation", UpdatedKey, "error", err)
		g.drop(cm.Name)
		return
	}
	acks, err := Decode(cm.BinaryData[DataKey])
	if err != nil {
		g.Logger.Warn("ignoring adoption record that cannot be decoded", "configmap", cm.Name, "error", err)
		g.drop(cm.Name)
		return
	}
	g.mu.Lock()
	if g.replicas == nil {
		g.replicas = map[string]replicaAcks{}
	}
	g.replicas[cm.Name] = replicaAcks{updated: updated, acks: acks}
	g.mu.Unlock()
	if g.OnChange != nil {
		g.OnChange()
	}
}

func (g *Gatherer) remove(o any) {
	if d, ok := o.(toolscache.DeletedFinalStateUnknown); ok {
		o = d.Obj
	}
	if cm, ok := o.(*corev1.ConfigMap); ok {
		g.drop(cm.Name)
	}
}

func (g *Gatherer) drop(name string) {
	g.mu.Lock()
	delete(g.replicas, name)
	g.mu.Unlock()
}

// Holds reports whether a live replica recorded node's acknowledgement of
// version.
func (g *Gatherer) Holds(node, version string) bool {
	g.mu.RLock()
	defer g.mu.RUnlock()
	now := g.Clock.Now()
	for _, r := range g.replicas {
		if now.Sub(r.updated) > g.Stale {
			continue
		}
		if _, ok := r.acks[version][node]; ok {
			return true
		}
	}
	return false
}

// Replicas returns the ConfigMaps counted (live) and ignored (stale).
func (g *Gatherer) Replicas() (live, stale []string) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	now := g.Clock.Now()
	for name, r := range g.replicas {
		if now.Sub(r.updated) > g.Stale {
			stale = append(stale, name)
		} else {
			live = append(live, name)
		}
	}
	return live, stale
}

// KubeNodes is the NodeSource of Kubernetes mode: the cluster's Node
// objects (metadata only), optionally those matching Selector (the agent
// DaemonSet's nodeSelector). A deleted Node no longer counts.
type KubeNodes struct {
	Client   metadata.Interface
	Selector labels.Selector

	mu     sync.RWMutex
	lister toolscache.GenericLister
	synced func() bool
	// names caches the list Nodes returns, as of events namesGen, until
	// a Node is added or deleted (events counts them): the authority asks
	// after every acknowledgement.
	names    []string
	namesGen uint64
	events   atomic.Uint64
}

var nodesGVR = schema.GroupVersionResource{Version: "v1", Resource: "nodes"}

// Start watches the Nodes until ctx is done.
func (k *KubeNodes) Start(ctx context.Context) error {
	sel := k.Selector
	if sel == nil {
		sel = labels.Everything()
	}
	f := metadatainformer.NewFilteredSharedInformerFactory(k.Client, 10*time.Minute, "", func(o *metav1.ListOptions) {
		o.LabelSelector = sel.String()
	})
	gi := f.ForResource(nodesGVR)
	if _, err := gi.Informer().AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { k.events.Add(1) },
		DeleteFunc: func(any) { k.events.Add(1) },
	}); err != nil {
		return fmt.Errorf("adoption: watching Nodes: %w", err)
	}
	k.mu.Lock()
	k.lister, k.synced = gi.Lister(), gi.Informer().HasSynced
	k.mu.Unlock()
	f.Start(ctx.Done())
	<-ctx.Done()
	f.Shutdown()
	return nil
}

// Nodes returns the names of the Nodes, shared with later calls (the
// caller must not change it); ok is false until the first list.
func (k *KubeNodes) Nodes() ([]string, bool) {
	k.mu.RLock()
	lister, synced := k.lister, k.synced
	k.mu.RUnlock()
	if lister == nil || !synced() {
		return nil, false
	}
	gen := k.events.Load()
	k.mu.RLock()
	names, cached := k.names, k.namesGen
	k.mu.RUnlock()
	if names != nil && cached == gen {
		return names, true
	}
	objs, err := lister.List(labels.Everything())
	if err != nil {
		return nil, false
	}
	out := make([]string, 0, len(objs))
	for _, o := range objs {
		if m, err := metaName(o); err == nil {
			out = append(out, m)
		}
	}
	k.mu.Lock()
	if k.names == nil || gen >= k.namesGen {
		k.names, k.namesGen = out, gen
	}
	k.mu.Unlock()
	return out, true
}

func metaName(o any) (string, error) {
	m, ok := o.(metav1.Object)
	if !ok {
		return "", fmt.Errorf("unexpected %T", o)
	}
	return m.GetName(), nil
}
