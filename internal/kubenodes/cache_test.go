package kubenodes

import (
	"runtime"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/mayfly-pki/mayfly/internal/policy"
	"github.com/mayfly-pki/mayfly/internal/test/fleet"
)

// TestStripPodKeepsWhatTheCAReads: every rule the CA applies to a pod
// decides the same on the stripped pod as on the full one.
func TestStripPodKeepsWhatTheCAReads(t *testing.T) {
	now := metav1.Now()
	pods := map[string]*corev1.Pod{}
	pods["running"] = fleet.Pod(1, "node-a")
	pods["pending"] = fleet.Pod(2, "node-a")
	pods["pending"].Status.Phase = corev1.PodPending
	pods["succeeded"] = fleet.Pod(3, "node-a")
	pods["succeeded"].Status.Phase = corev1.PodSucceeded
	pods["terminating"] = fleet.Pod(4, "node-a")
	pods["terminating"].DeletionTimestamp = &now
	pods["other_node"] = fleet.Pod(5, "node-b")
	pods["mirror"] = fleet.Pod(6, "node-a")
	pods["mirror"].Annotations[MirrorPodAnnotation] = "abc"
	for name, full := range pods {
		t.Run(name, func(t *testing.T) {
			s := StripPod(full)
			if (policy.PodActive(full) == nil) != (policy.PodActive(s) == nil) {
				t.Errorf("PodActive: full %v, stripped %v", policy.PodActive(full), policy.PodActive(s))
			}
			if (policy.PodOnNode(full, "node-a") == nil) != (policy.PodOnNode(s, "node-a") == nil) {
				t.Errorf("PodOnNode: full %v, stripped %v", policy.PodOnNode(full, "node-a"), policy.PodOnNode(s, "node-a"))
			}
			_, fm := full.Annotations[MirrorPodAnnotation]
			_, sm := s.Annotations[MirrorPodAnnotation]
			if fm != sm || len(s.Annotations) > 1 {
				t.Errorf("annotations %v, want only the mirror annotation of %v", s.Annotations, full.Annotations)
			}
			if s.Name != full.Name || s.Namespace != full.Namespace || s.UID != full.UID || s.ResourceVersion != full.ResourceVersion ||
				s.Spec.ServiceAccountName != full.Spec.ServiceAccountName || s.Spec.NodeName != full.Spec.NodeName || s.Status.Phase != full.Status.Phase {
				t.Errorf("stripped %+v lost an identity field of %+v", s.ObjectMeta, full.ObjectMeta)
			}
			if len(s.Spec.Containers) != 0 || len(s.Status.Conditions) != 0 || len(s.Labels) != 0 {
				t.Error("stripped pod still holds containers, conditions or labels")
			}
		})
	}
	// A deletion tombstone passes the transform unchanged.
	tomb := cache.DeletedFinalStateUnknown{Key: "a/b", Obj: pods["running"]}
	if got, err := stripPodObject(tomb); err != nil || got != any(tomb) {
		t.Errorf("tombstone: %v, %v", got, err)
	}
}

// BenchmarkPodCacheHeap is the heap one cached pod costs in the CA's pod
// store (its indexes included): the full pod as the API server sends it
// (managedFields dropped, as before) against the stripped one, in the same
// run. Read bytes/pod side by side.
func BenchmarkPodCacheHeap(b *testing.B) {
	const n = 20_000
	for _, tc := range []struct {
		name      string
		transform func(*corev1.Pod) any
	}{
		{"full", func(p *corev1.Pod) any { return p }},
		{"stripped", func(p *corev1.Pod) any { return StripPod(p) }},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var perPod float64
			for range b.N {
				store := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc, uidIndex: podUIDIndex})
				before := heapInUse()
				for i := range n {
					if err := store.Add(tc.transform(fleet.Pod(i, fleet.NodeName(i%10_000)))); err != nil {
						b.Fatal(err)
					}
				}
				perPod = float64(heapInUse()-before) / n
				runtime.KeepAlive(store)
			}
			b.ReportMetric(perPod, "bytes/pod")
		})
	}
}

func heapInUse() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}
