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
// Every object is stripped to what the CA reads (StripPod, StripService)
// before it is stored: a large cluster's pods cost a tenth of their full
// size to hold.
func NewPodCache(client kubernetes.Interface, resync time.Duration) *PodCache {
	pods := coreinformers.NewPodInformer(client, metav1.NamespaceAll, resync, cache.Indexers{
		cache.NamespaceIndex: cache.MetaNamespaceIndexFunc,
		uidIndex:             podUIDIndex,
	})
	services := coreinformers.NewServiceInformer(client, metav1.NamespaceAll, resync, cache.Indexers{
		cache.NamespaceIndex: cache.MetaNamespaceIndexFunc,
	})
	// SetTransform fails only on a started informer; these are new.
	if err := pods.SetTransform(stripPodObject); err != nil {
		panic("kubeattest: " + err.Error())
	}
	if err := services.SetTransform(stripServiceObject); err != nil {
		panic("kubeattest: " + err.Error())
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

// MirrorPodAnnotation marks a static pod's mirror; it is the one
// annotation the pod cache keeps (the PodCertificateRequest signer refuses
// mirror pods).
const MirrorPodAnnotation = "kubernetes.io/config.mirror"

// StripPod returns the part of pod that the CA reads: its name, namespace,
// UID, resource version (the informer compares it), deletion timestamp,
// mirror-pod annotation, ServiceAccount, node and phase. Everything else,
// containers, volumes, conditions, labels and managedFields, is dropped:
// a stripped pod is about a tenth of a full one on the heap.
func StripPod(pod *corev1.Pod) *corev1.Pod {
	out := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:              pod.Name,
			Namespace:         pod.Namespace,
			UID:               pod.UID,
			ResourceVersion:   pod.ResourceVersion,
			DeletionTimestamp: pod.DeletionTimestamp,
		},
		Spec: corev1.PodSpec{
			ServiceAccountName: pod.Spec.ServiceAccountName,
			NodeName:           pod.Spec.NodeName,
		},
		Status: corev1.PodStatus{Phase: pod.Status.Phase},
	}
	if v, ok := pod.Annotations[MirrorPodAnnotation]; ok {
		out.Annotations = map[string]string{MirrorPodAnnotation: v}
	}
	return out
}

// StripService returns the part of svc that the CA reads: that it exists,
// by name and namespace (and its resource version, for the informer).
func StripService(svc *corev1.Service) *corev1.Service {
	return &corev1.Service{ObjectMeta: metav1.ObjectMeta{
		Name: svc.Name, Namespace: svc.Namespace, UID: svc.UID, ResourceVersion: svc.ResourceVersion,
	}}
}

// stripPodObject is StripPod as an informer transform. Deletion
// tombstones pass unchanged: the informer reads only their key.
func stripPodObject(obj any) (any, error) {
	if pod, ok := obj.(*corev1.Pod); ok {
		return StripPod(pod), nil
	}
	return obj, nil
}

// stripServiceObject is StripService as an informer transform.
func stripServiceObject(obj any) (any, error) {
	if svc, ok := obj.(*corev1.Service); ok {
		return StripService(svc), nil
	}
	return obj, nil
}
