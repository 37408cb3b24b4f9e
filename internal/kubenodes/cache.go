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

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// uidIndex indexes pods by metadata.uid.
const uidIndex = "uid"

// PodCache is the CA-side cache of all pods and Services of the cluster,
// with pods indexed by UID. Objects it returns are shared with the cache and
// must not be modified.
type PodCache struct {
	pods     cache.SharedIndexInformer
	services cache.SharedIndexInformer
	svcs     corelisters.ServiceLister
	started  atomic.Bool
}

// NewPodCache builds the pod and Service informers (cluster-wide, resync
// period resync; 0 disables resync). Nothing is listed before Start.
// managedFields are dropped from every object, which makes a large
// cluster's pods markedly cheaper to hold.
func NewPodCache(client kubernetes.Interface, resync time.Duration) *PodCache {
	pods := coreinformers.NewPodInformer(client, metav1.NamespaceAll, resync, cache.Indexers{
		cache.NamespaceIndex: cache.MetaNamespaceIndexFunc,
		uidIndex:             podUIDIndex,
	})
	services := coreinformers.NewServiceInformer(client, metav1.NamespaceAll, resync, cache.Indexers{
		cache.NamespaceIndex: cache.MetaNamespaceIndexFunc,
	})
	for _, inf := range []cache.SharedIndexInformer{pods, services} {
		// SetTransform fails only on a started informer; these are new.
		if err := inf.SetTransform(stripManagedFields); err != nil {
			panic("kubeattest: " + err.Error())
		}
	}
	return &PodCache{
		pods:     pods,
		services: services,
		svcs:     corelisters.NewServiceLister(services.GetIndexer()),
	}
}

// Start runs the informers until ctx is done. It may be called once.
func (c *PodCache) Start(ctx context.Context) error {
	if !c.started.CompareAndSwap(false, true) {
		return errors.New("kubeattest: pod cache already started")
	}
	var wg sync.WaitGroup
	for _, inf := range []cache.SharedIndexInformer{c.pods, c.services} {
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
func (c *PodCache) ByUID(uid string) (*corev1.Pod, bool) {
	if uid == "" {
		return nil, false
	}
	objs, err := c.pods.GetIndexer().ByIndex(uidIndex, uid)
	if err != nil || len(objs) == 0 {
		return nil, false
	}
	pod, ok := objs[0].(*corev1.Pod)
	return pod, ok
}

// Services lists the cached Services.
func (c *PodCache) Services() corelisters.ServiceLister { return c.svcs }

func podUIDIndex(obj any) ([]string, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok || pod.UID == "" {
		return nil, nil
	}
	return []string{string(pod.UID)}, nil
}

// stripManagedFields drops metadata.managedFields, which the CA never
// reads and which often outweigh the rest of a pod.
func stripManagedFields(obj any) (any, error) {
	if m, err := meta.Accessor(obj); err == nil {
		m.SetManagedFields(nil)
	}
	return obj, nil
}
