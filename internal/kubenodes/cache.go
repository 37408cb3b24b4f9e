// Package kubenodes is the CA side of Kubernetes nodes: it attests mayfly node agents and authorizes workload
// requests in Kubernetes mode: agents prove themselves with a projected
// ServiceAccount token bound to their pod (TokenReview), and an agent may
// only obtain the identity of a pod that is scheduled on its own node. Pods
// and Services are looked up in the CA's own informer cache, which keeps
// serving already-known pods while the API server is unreachable.
package kubenodes

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"
	"unique"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/mayfly-pki/mayfly/internal/policy"
)

// PodCache is the CA-side cache of all pods and Services of the cluster,
// pods found by UID. It holds each pod as a cachedPod (the fields of
// policy.Pod, a few hundred bytes with the store's key and the UID map)
// and each Service as its namespace and name: what the CA reads, nothing
// else.
type PodCache struct {
	pods, services cache.Controller
	serviceStore   cache.Store
	byUID          podsByUID
	started        atomic.Bool
}

// NewPodCache builds the pod and Service informers (cluster-wide, resync
// period resync; 0 disables resync). Nothing is listed before Start.
// Pods are decoded straight into what the CA reads (podDecoder, on
// client's connection); Services, and pods of a client without a REST
// connection (a fake clientset), are reduced to it before they are
// stored (the informers' transform).
func NewPodCache(client kubernetes.Interface, resync time.Duration) *PodCache {
	services := func() corev1client.ServiceInterface { return client.CoreV1().Services(metav1.NamespaceAll) }
	podsLW, podType := podsListWatch(client)
	if podsLW == nil { // a fake clientset: the typed client, its pods reduced by the transform
		pods := func() corev1client.PodInterface { return client.CoreV1().Pods(metav1.NamespaceAll) }
		podsLW, podType = &cache.ListWatch{
			ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				return pods().List(ctx, o)
			},
			WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				return pods().Watch(ctx, o)
			},
		}, &corev1.Pod{}
	}
	return newPodCache(
		cache.ToListWatcherWithWatchListSemantics(podsLW, client), podType,
		cache.ToListWatcherWithWatchListSemantics(&cache.ListWatch{
			ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				return services().List(ctx, o)
			},
			WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				return services().Watch(ctx, o)
			},
		}, client),
		resync)
}

// newPodCache is NewPodCache on the list and watch of pods (of podType:
// cachedPod from podsListWatch, corev1.Pod from others) and Services.
// The pods' informer keeps byUID beside its store: its handler runs in the
// informer's own loop right after each store update (no queue between), so
// byUID is as fresh as the store. A UID index of the store (cache.Indexers)
// would cost a set per pod, about 300 bytes more a pod.
func newPodCache(pods cache.ListerWatcher, podType runtime.Object, services cache.ListerWatcher, resync time.Duration) *PodCache {
	c := &PodCache{byUID: podsByUID{m: map[types.UID]*cachedPod{}}}
	_, c.pods = cache.NewInformerWithOptions(cache.InformerOptions{
		ListerWatcher: pods, ObjectType: podType, ResyncPeriod: resync,
		Handler: &c.byUID, Transform: compactPodObject,
	})
	c.serviceStore, c.services = cache.NewInformerWithOptions(cache.InformerOptions{
		ListerWatcher: services, ObjectType: &corev1.Service{}, ResyncPeriod: resync,
		Handler: cache.ResourceEventHandlerFuncs{}, Transform: compactServiceObject,
	})
	return c
}

// Start runs the informers until ctx is done. It may be called once.
func (c *PodCache) Start(ctx context.Context) error {
	if !c.started.CompareAndSwap(false, true) {
		return errors.New("kubeattest: pod cache already started")
	}
	var wg sync.WaitGroup
	for _, inf := range []cache.Controller{c.pods, c.services} {
		wg.Go(func() { inf.RunWithContext(ctx) })
	}
	wg.Wait()
	return nil
}

// WaitSynced blocks until the first list of pods and Services is in the
// cache or ctx is done, and reports whether the cache synced.
func (c *PodCache) WaitSynced(ctx context.Context) bool {
	return cache.WaitForCacheSync(ctx.Done(), c.pods.HasSynced, c.services.HasSynced)
}

// HasSynced reports whether the first list of pods and Services is in the
// cache. Before that, a missing pod says nothing.
func (c *PodCache) HasSynced() bool {
	return c.pods.HasSynced() && c.services.HasSynced()
}

// ByUID returns the pod with metadata.uid uid.
func (c *PodCache) ByUID(uid string) (policy.Pod, bool) {
	if uid == "" {
		return policy.Pod{}, false
	}
	return c.byUID.get(types.UID(uid))
}

// HasService reports whether the cache holds the Service namespace/name.
func (c *PodCache) HasService(namespace, name string) bool {
	_, ok, err := c.serviceStore.GetByKey(namespace + "/" + name)
	return ok && err == nil
}

// podsByUID maps the UIDs of the pods in the informer's store to them; it
// is the pod informer's event handler. A UID belongs to one pod for good,
// so a pod leaves by its UID whichever copy of it the event carries.
type podsByUID struct {
	mu sync.RWMutex
	m  map[types.UID]*cachedPod
}

func (p *podsByUID) get(uid types.UID) (policy.Pod, bool) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	pod, ok := p.m[uid]
	if !ok {
		return policy.Pod{}, false
	}
	return pod.policyPod(), true
}

func (p *podsByUID) OnAdd(obj any, _ bool) {
	if pod, ok := obj.(*cachedPod); ok {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.m[pod.uid] = pod
	}
}

// OnUpdate replaces old by pod; a pod re-created under the same name
// between two lists comes as an update with a new UID.
func (p *podsByUID) OnUpdate(old, obj any) {
	pod, ok := obj.(*cachedPod)
	if !ok {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if o, ok := old.(*cachedPod); ok && o.uid != pod.uid {
		delete(p.m, o.uid)
	}
	p.m[pod.uid] = pod
}

// OnDelete removes the pod, also when it comes as a tombstone (deleted
// while the watch was down: the relist no longer had it).
func (p *podsByUID) OnDelete(obj any) {
	if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tomb.Obj
	}
	var uid types.UID
	switch pod := obj.(type) {
	case *cachedPod:
		uid = pod.uid
	case *corev1.Pod: // not transformed; not from this cache's informer
		uid = pod.UID
	default:
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.m, uid)
}

// cachedPod is a pod as the cache stores it: policy.Pod's fields and the
// resource version (the store reads it). Namespaces, ServiceAccounts and
// node names repeat across many pods and are held once each (unique
// handles); the phase is one of the API's constants when it is one. It is
// a runtime.Object with object metadata, as the informer's store needs.
type cachedPod struct {
	name, resourceVersion string
	uid                   types.UID
	namespace             unique.Handle[string]
	serviceAccount        unique.Handle[string]
	node                  unique.Handle[string]
	phase                 corev1.PodPhase
	terminating, mirror   bool
	// initialEventsEnd marks the bookmark that ends a watch-list's
	// initial events (the reflector reads it from the annotations).
	initialEventsEnd bool
}

// newCachedPod returns the part of pod that the CA reads (policy.PodOf).
func newCachedPod(pod *corev1.Pod) *cachedPod {
	p := policy.PodOf(pod)
	return &cachedPod{
		name: p.Name, resourceVersion: pod.ResourceVersion, uid: p.UID,
		namespace:      unique.Make(p.Namespace),
		serviceAccount: unique.Make(p.ServiceAccount),
		node:           unique.Make(p.NodeName),
		phase:          internPhase(p.Phase),
		terminating:    p.Terminating, mirror: p.Mirror,
		initialEventsEnd: pod.Annotations[metav1.InitialEventsAnnotationKey] == "true",
	}
}

func (p *cachedPod) policyPod() policy.Pod {
	return policy.Pod{
		Namespace: p.namespace.Value(), Name: p.name, UID: p.uid,
		ServiceAccount: p.serviceAccount.Value(), NodeName: p.node.Value(),
		Phase: p.phase, Terminating: p.terminating, Mirror: p.mirror,
	}
}

// internPhase returns the API's constant for phase, so that the decoded
// string of each pod is not kept.
func internPhase(phase corev1.PodPhase) corev1.PodPhase {
	for _, known := range knownPhases {
		if phase == known {
			return known
		}
	}
	return phase
}

var knownPhases = []corev1.PodPhase{corev1.PodRunning, corev1.PodPending, corev1.PodSucceeded, corev1.PodFailed, corev1.PodUnknown}

// GetObjectMeta gives the store the pod's key and resource version, and
// the reflector the mark of the watch-list's end.
func (p *cachedPod) GetObjectMeta() metav1.Object {
	m := &metav1.ObjectMeta{Namespace: p.namespace.Value(), Name: p.name, UID: p.uid, ResourceVersion: p.resourceVersion}
	if p.initialEventsEnd {
		m.Annotations = map[string]string{metav1.InitialEventsAnnotationKey: "true"}
	}
	return m
}

func (*cachedPod) GetObjectKind() schema.ObjectKind { return schema.EmptyObjectKind }

func (p *cachedPod) DeepCopyObject() runtime.Object {
	out := *p
	return &out
}

// cachedService is a Service as the cache stores it: that it exists, by
// namespace and name.
type cachedService struct {
	name, resourceVersion string
	namespace             unique.Handle[string]
}

func (s *cachedService) GetObjectMeta() metav1.Object {
	return &metav1.ObjectMeta{Namespace: s.namespace.Value(), Name: s.name, ResourceVersion: s.resourceVersion}
}

func (*cachedService) GetObjectKind() schema.ObjectKind { return schema.EmptyObjectKind }

func (s *cachedService) DeepCopyObject() runtime.Object {
	out := *s
	return &out
}

// compactPodObject is newCachedPod as an informer transform. Deletion
// tombstones and pods already compact pass unchanged: the informer reads
// only a tombstone's key.
func compactPodObject(obj any) (any, error) {
	if pod, ok := obj.(*corev1.Pod); ok {
		return newCachedPod(pod), nil
	}
	return obj, nil
}

// compactServiceObject is the Services' transform.
func compactServiceObject(obj any) (any, error) {
	if svc, ok := obj.(*corev1.Service); ok {
		return &cachedService{name: svc.Name, resourceVersion: svc.ResourceVersion, namespace: unique.Make(svc.Namespace)}, nil
	}
	return obj, nil
}
