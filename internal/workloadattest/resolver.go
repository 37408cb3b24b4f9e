package workloadattest

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
)

// Errors of [PodResolver.Resolve]. Only ErrNotYetKnown is worth a retry.
var (
	// ErrPodNotFound: no pod with this UID is on this node.
	ErrPodNotFound = errors.New("pod not found on this node")
	// ErrPodTerminating: the pod is being deleted.
	ErrPodTerminating = errors.New("pod is terminating")
	// ErrPodNotRunning: the pod's phase is neither Running nor Pending.
	ErrPodNotRunning = errors.New("pod is not running")
	// ErrContainerTerminated: the container's status says it terminated.
	ErrContainerTerminated = errors.New("container has terminated")
	// ErrNotYetKnown: the pod exists but its status does not list the
	// container (yet): a container that just started. Retry after the next
	// pod update ([PodResolver.ResolveWait] does).
	ErrNotYetKnown = errors.New("container not yet in the pod's status")
)

const uidIndex = "uid"

// PodResolver finds the pod and container of a process on this node in a pod
// informer restricted to the node (field selector spec.nodeName), indexed by
// pod UID. managedFields are dropped from the cache.
type PodResolver struct {
	nodeName string
	informer cache.SharedIndexInformer

	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every pod event
}

// NodePods returns a ListerWatcher of the pods scheduled on nodeName. It
// talks to the API server with a REST client that knows core/v1 only: the
// generated clientset and informer factory register every API group, which
// costs the agent tens of megabytes of binary and memory.
func NodePods(cfg *rest.Config, nodeName string) (cache.ListerWatcher, error) {
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	c := rest.CopyConfig(cfg)
	c.APIPath = "/api"
	c.GroupVersion = &corev1.SchemeGroupVersion
	c.NegotiatedSerializer = serializer.NewCodecFactory(scheme).WithoutConversion()
	c.UserAgent = cmp.Or(c.UserAgent, "mayfly-agent")
	rc, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("pod resolver: API client: %w", err)
	}
	return cache.NewListWatchFromClient(rc, "pods", metav1.NamespaceAll, fields.OneTermEqualSelector("spec.nodeName", nodeName)), nil
}

// NewPodResolver builds the resolver of node nodeName from lw (NodePods).
// resync is the informer's resync period (0 for none). Call Start, then
// WaitSynced.
func NewPodResolver(lw cache.ListerWatcher, nodeName string, resync time.Duration) (*PodResolver, error) {
	if nodeName == "" {
		return nil, errors.New("pod resolver: empty node name")
	}
	inf := cache.NewSharedIndexInformer(lw, &corev1.Pod{}, resync, cache.Indexers{})
	if err := inf.SetTransform(stripManagedFields); err != nil {
		return nil, fmt.Errorf("pod resolver: %w", err)
	}
	if err := inf.AddIndexers(cache.Indexers{uidIndex: func(obj any) ([]string, error) {
		pod, ok := obj.(*corev1.Pod)
		if !ok {
			return nil, nil
		}
		return []string{string(pod.UID)}, nil
	}}); err != nil {
		return nil, fmt.Errorf("pod resolver: %w", err)
	}
	r := &PodResolver{nodeName: nodeName, informer: inf, changed: make(chan struct{})}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { r.notify() },
		UpdateFunc: func(any, any) { r.notify() },
		DeleteFunc: func(any) { r.notify() },
	}); err != nil {
		return nil, fmt.Errorf("pod resolver: %w", err)
	}
	return r, nil
}

func stripManagedFields(obj any) (any, error) {
	if m, ok := obj.(metav1.ObjectMetaAccessor); ok {
		m.GetObjectMeta().SetManagedFields(nil)
	}
	return obj, nil
}

func (r *PodResolver) notify() {
	r.mu.Lock()
	defer r.mu.Unlock()
	close(r.changed)
	r.changed = make(chan struct{})
}

func (r *PodResolver) changedChan() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.changed
}

// Start runs the informer until ctx is done.
func (r *PodResolver) Start(ctx context.Context) error {
	r.informer.Run(ctx.Done())
	return nil
}

// WaitSynced blocks until the informer has listed the node's pods, or ctx is
// done.
func (r *PodResolver) WaitSynced(ctx context.Context) error {
	if !cache.WaitForCacheSync(ctx.Done(), r.informer.HasSynced) {
		return fmt.Errorf("pod resolver: waiting for the pod cache of node %s: %w", r.nodeName, context.Cause(ctx))
	}
	return nil
}

// Resolve returns (a copy of) the pod with UID podUID when it is on this
// node, not terminating, Running or Pending, and lists containerID (64 hex
// digits, no runtime prefix) among the current IDs of its containers, init
// containers or ephemeral containers.
func (r *PodResolver) Resolve(podUID, containerID string) (*corev1.Pod, error) {
	pod, _, err := r.resolve(podUID, containerID)
	return pod, err
}

// ResolveWait is Resolve, retried after each pod event while the result is
// [ErrNotYetKnown], until ctx is done.
func (r *PodResolver) ResolveWait(ctx context.Context, podUID, containerID string) (*corev1.Pod, string, error) {
	for {
		changed := r.changedChan() // before resolving, so no event is missed
		pod, name, err := r.resolve(podUID, containerID)
		if !errors.Is(err, ErrNotYetKnown) {
			return pod, name, err
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, "", fmt.Errorf("%w (gave up waiting: %w)", err, context.Cause(ctx))
		}
	}
}

// resolve also returns the container's name.
func (r *PodResolver) resolve(podUID, containerID string) (*corev1.Pod, string, error) {
	objs, err := r.informer.GetIndexer().ByIndex(uidIndex, podUID)
	if err != nil {
		return nil, "", fmt.Errorf("pod resolver: %w", err)
	}
	var pod *corev1.Pod
	for _, o := range objs {
		if p, ok := o.(*corev1.Pod); ok && p.Spec.NodeName == r.nodeName {
			pod = p
		}
	}
	if pod == nil || len(objs) != 1 {
		return nil, "", fmt.Errorf("%w: pod UID %s, node %s", ErrPodNotFound, podUID, r.nodeName)
	}
	ref := pod.Namespace + "/" + pod.Name
	if pod.DeletionTimestamp != nil {
		return nil, "", fmt.Errorf("%w: pod %s", ErrPodTerminating, ref)
	}
	if pod.Status.Phase != corev1.PodRunning && pod.Status.Phase != corev1.PodPending {
		return nil, "", fmt.Errorf("%w: pod %s is %q", ErrPodNotRunning, ref, pod.Status.Phase)
	}
	for _, list := range [][]corev1.ContainerStatus{
		pod.Status.ContainerStatuses, pod.Status.InitContainerStatuses, pod.Status.EphemeralContainerStatuses,
	} {
		for _, cs := range list {
			if !sameContainerID(cs.ContainerID, containerID) {
				continue
			}
			if cs.State.Terminated != nil {
				return nil, "", fmt.Errorf("%w: container %q of pod %s", ErrContainerTerminated, cs.Name, ref)
			}
			return pod.DeepCopy(), cs.Name, nil
		}
	}
	return nil, "", fmt.Errorf("%w: container %s in pod %s", ErrNotYetKnown, containerID, ref)
}

// sameContainerID compares a status containerID "<runtime>://<id>" with a
// bare ID.
func sameContainerID(status, id string) bool {
	_, got, ok := strings.Cut(status, "://")
	return ok && id != "" && got == id
}
