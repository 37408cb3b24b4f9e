package kubenodes

import (
	"context"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	apiruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"

	"github.com/mayfly-pki/mayfly/internal/policy"
	"github.com/mayfly-pki/mayfly/internal/test/background"
	"github.com/mayfly-pki/mayfly/internal/test/fleet"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
)

// TestCachedPodKeepsWhatTheCAReads: a pod through the cache's transform
// reads back as policy.PodOf of the full pod, under the full pod's store
// key and resource version, and nothing else of it is kept.
// podVariants are pods that differ in each field the CA's cache keeps or
// reads to decide what to keep; the transform's and the decoder's tests
// share them.
func podVariants() map[string]*corev1.Pod {
	now := metav1.Date(2026, 12, 7, 1, 0, 0, 0, time.UTC)
	pods := map[string]*corev1.Pod{}
	pods["running"] = fleet.Pod(1, "node-a")
	pods["pending"] = fleet.Pod(2, "node-a")
	pods["pending"].Status.Phase = corev1.PodPending
	pods["succeeded"] = fleet.Pod(3, "node-a")
	pods["succeeded"].Status.Phase = corev1.PodSucceeded
	pods["odd_phase"] = fleet.Pod(4, "node-a")
	pods["odd_phase"].Status.Phase = "Hibernating"
	pods["terminating"] = fleet.Pod(5, "node-a")
	pods["terminating"].DeletionTimestamp = &now
	pods["other_node"] = fleet.Pod(6, "node-b")
	pods["unscheduled"] = fleet.Pod(7, "")
	pods["mirror"] = fleet.Pod(8, "node-a")
	pods["mirror"].Annotations[policy.MirrorPodAnnotation] = "abc"
	pods["mirror_empty_value"] = fleet.Pod(9, "node-a")
	pods["mirror_empty_value"].Annotations[policy.MirrorPodAnnotation] = ""
	pods["no_service_account"] = fleet.Pod(10, "node-a")
	pods["no_service_account"].Spec.ServiceAccountName = ""
	pods["deprecated_service_account_only"] = fleet.Pod(11, "node-a")
	pods["deprecated_service_account_only"].Spec.ServiceAccountName, pods["deprecated_service_account_only"].Spec.DeprecatedServiceAccount = "", "old"
	for _, p := range pods {
		p.ResourceVersion = "4711"
	}
	return pods
}

func TestCachedPodKeepsWhatTheCAReads(t *testing.T) {
	pods := podVariants()
	for name, full := range pods {
		t.Run(name, func(t *testing.T) {
			obj, err := compactPodObject(full)
			if err != nil {
				t.Fatal(err)
			}
			c, ok := obj.(*cachedPod)
			if !ok {
				t.Fatalf("transform returned %T", obj)
			}
			if got, want := c.policyPod(), policy.PodOf(full); got != want {
				t.Errorf("cached pod reads %+v, want %+v", got, want)
			}
			key, err := cache.MetaNamespaceKeyFunc(c)
			if want, _ := cache.MetaNamespaceKeyFunc(full); err != nil || key != want {
				t.Errorf("store key %q (%v), want %q", key, err, want)
			}
			m, err := meta.Accessor(c)
			if err != nil || m.GetResourceVersion() != "4711" || m.GetUID() != full.UID {
				t.Errorf("object metadata %v (%v), want resource version 4711 and uid %s", m, err, full.UID)
			}
			cp, ok := c.DeepCopyObject().(*cachedPod)
			if !ok || cp == c || *cp != *c {
				t.Errorf("DeepCopyObject = %+v, want an equal copy of %+v", cp, c)
			}
			again, err := compactPodObject(c) // the transform is idempotent
			if err != nil || again != any(c) {
				t.Errorf("transform of a cached pod: %v, %v", again, err)
			}
		})
	}
	// A deletion tombstone passes the transform unchanged.
	tomb := cache.DeletedFinalStateUnknown{Key: "a/b", Obj: pods["running"]}
	if got, err := compactPodObject(tomb); err != nil || got != any(tomb) {
		t.Errorf("tombstone: %v, %v", got, err)
	}
}

// TestCachedPodSharesRepeatedStrings: pods of one namespace,
// ServiceAccount and node hold those strings once, and a known phase as
// the API's constant, whatever the decoder allocated.
func TestCachedPodSharesRepeatedStrings(t *testing.T) {
	a, b := fleet.Pod(1, "node-a"), fleet.Pod(101, "node-a")
	// Separate copies, as a decoder makes them.
	b.Namespace, b.Spec.NodeName = string([]byte(a.Namespace)), string([]byte(a.Spec.NodeName))
	b.Spec.ServiceAccountName, b.Status.Phase = string([]byte(a.Spec.ServiceAccountName)), corev1.PodPhase([]byte("Running"))
	ca, cb := newCachedPod(a), newCachedPod(b)
	if ca.namespace != cb.namespace || ca.node != cb.node || ca.serviceAccount != cb.serviceAccount {
		t.Error("pods of one namespace, node and ServiceAccount hold separate copies")
	}
	if cb.phase != corev1.PodRunning || unsafeStringData(string(cb.phase)) != unsafeStringData(string(corev1.PodRunning)) {
		t.Error("the phase is not the API's constant")
	}
}

// TestPodCacheFollowsEvents drives the cache's informer through a fake
// list and watch: adds, updates (a pod re-created under its name with a
// new UID), deletes, a deletion whose final state is unknown (the watch
// broke and the relist lacks the pod: the informer deletes it through a
// tombstone) and Services, and checks what ByUID and HasService answer.
func TestPodCacheFollowsEvents(t *testing.T) {
	pods, svcs := newFakeLW(), newFakeLW()
	pod := func(name, uid string, phase corev1.PodPhase) *corev1.Pod {
		p := fleet.Pod(0, "node-a")
		p.Namespace, p.Name, p.UID, p.Status.Phase = "apps", name, types.UID("uid-"+uid), phase
		return p
	}
	pods.set(pod("web-0", "a", corev1.PodPending), pod("web-1", "b", corev1.PodRunning), pod("web-2", "c", corev1.PodRunning))
	svcs.set(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "web"}})
	c := newPodCache(pods, &corev1.Pod{}, svcs, 0)
	if c.HasSynced() {
		t.Fatal("synced before start")
	}
	ctx := background.Run(t, "pod cache", c.Start)
	syncCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if !c.WaitSynced(syncCtx) {
		t.Fatal("not synced within 30s")
	}
	phase := func(uid string) corev1.PodPhase {
		p, ok := c.ByUID("uid-" + uid)
		if !ok {
			return "<none>"
		}
		return p.Phase
	}
	eventually := func(what string, cond func() bool) {
		t.Helper()
		wait.Within(t, what, 20*time.Second, 5*time.Millisecond, cond)
	}
	if phase("a") != corev1.PodPending || phase("b") != corev1.PodRunning || !c.HasService("apps", "web") || c.HasService("apps", "db") || c.HasService("other", "web") {
		t.Fatalf("after the list: a %s, b %s, Service apps/web %v", phase("a"), phase("b"), c.HasService("apps", "web"))
	}
	if p, ok := c.ByUID(""); ok {
		t.Errorf("ByUID(\"\") = %+v", p)
	}

	pods.event(t, watch.Modified, pod("web-0", "a", corev1.PodRunning))
	eventually("web-0 running", func() bool { return phase("a") == corev1.PodRunning })

	// web-1 re-created under its name: the old UID goes, the new one comes.
	pods.event(t, watch.Modified, pod("web-1", "b2", corev1.PodPending))
	eventually("web-1 under its new UID", func() bool { return phase("b2") == corev1.PodPending && phase("b") == "<none>" })

	pods.event(t, watch.Deleted, pod("web-0", "a", corev1.PodRunning))
	eventually("web-0 gone", func() bool { return phase("a") == "<none>" })

	svcs.event(t, watch.Added, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "db"}})
	svcs.event(t, watch.Deleted, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "web"}})
	eventually("Service apps/db in, apps/web out", func() bool { return c.HasService("apps", "db") && !c.HasService("apps", "web") })

	// The watch breaks; the relist no longer has web-2 (deleted meanwhile,
	// its final state unknown) but a new web-3.
	pods.set(pod("web-1", "b2", corev1.PodRunning), pod("web-3", "d", corev1.PodRunning))
	pods.breakWatch(t)
	eventually("the relist applied", func() bool {
		return phase("c") == "<none>" && phase("d") == corev1.PodRunning && phase("b2") == corev1.PodRunning
	})

	// The cache keeps answering what it knows while the API server is
	// unreachable: lists and watches fail from now on.
	pods.fail()
	pods.breakWatch(t)
	wait.Within(t, "a failed relist", 20*time.Second, 5*time.Millisecond, func() bool { return pods.listsFailed.Load() > 0 })
	if phase("d") != corev1.PodRunning || !c.HasSynced() {
		t.Errorf("while the API is unreachable: web-3 %s, synced %v", phase("d"), c.HasSynced())
	}
}

// fakeLW is a ListerWatcher of a fixed list and one watch at a time,
// which the test feeds and breaks.
type fakeLW struct {
	mu          sync.Mutex
	items       []apiruntime.Object
	rv          int
	watcher     *watch.FakeWatcher
	failing     bool
	listsFailed atomic.Int64
}

func newFakeLW() *fakeLW { return &fakeLW{} }

// IsWatchListSemanticsUnSupported makes the reflector list, then watch.
func (*fakeLW) IsWatchListSemanticsUnSupported() bool { return true }

func (l *fakeLW) set(objs ...apiruntime.Object) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.items = objs
}

func (l *fakeLW) fail() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.failing = true
}

func (l *fakeLW) List(metav1.ListOptions) (apiruntime.Object, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.failing {
		l.listsFailed.Add(1)
		return nil, context.DeadlineExceeded
	}
	l.rv++
	rv := strconv.Itoa(l.rv)
	if len(l.items) > 0 {
		if _, ok := l.items[0].(*corev1.Service); ok {
			list := &corev1.ServiceList{ListMeta: metav1.ListMeta{ResourceVersion: rv}}
			for _, o := range l.items {
				list.Items = append(list.Items, *o.(*corev1.Service).DeepCopy())
			}
			return list, nil
		}
	}
	list := &corev1.PodList{ListMeta: metav1.ListMeta{ResourceVersion: rv}}
	for _, o := range l.items {
		list.Items = append(list.Items, *o.(*corev1.Pod).DeepCopy())
	}
	return list, nil
}

func (l *fakeLW) Watch(metav1.ListOptions) (watch.Interface, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.failing {
		return nil, context.DeadlineExceeded
	}
	l.watcher = watch.NewFakeWithChanSize(16, false)
	return l.watcher, nil
}

// current waits for the reflector's watch.
func (l *fakeLW) current(t *testing.T) *watch.FakeWatcher {
	t.Helper()
	var w *watch.FakeWatcher
	wait.Within(t, "a watch", 20*time.Second, 5*time.Millisecond, func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		w = l.watcher
		return w != nil
	})
	return w
}

// event sends an event on the current watch, once there is one.
func (l *fakeLW) event(t *testing.T, typ watch.EventType, obj apiruntime.Object) {
	t.Helper()
	l.current(t).Action(typ, obj)
}

// breakWatch ends the current watch as the API server does when its
// resource version is too old (410 Expired): the reflector lists again.
func (l *fakeLW) breakWatch(t *testing.T) {
	t.Helper()
	w := l.current(t)
	l.mu.Lock()
	l.watcher = nil
	l.mu.Unlock()
	w.Error(&metav1.Status{Status: metav1.StatusFailure, Code: 410, Reason: metav1.StatusReasonExpired, Message: "too old resource version"})
}

func unsafeStringData(s string) *byte { return unsafe.StringData(s) }

// BenchmarkPodCacheHeap is the heap one cached pod costs in the CA's pod
// store, its keys and indexes included, side by side in one run: the full
// pod as the API server sends it (managedFields dropped), the pod stripped
// to the fields the CA reads but still a corev1.Pod in a store with
// namespace and UID indexes (the cache before cachedPod), and the
// cachedPod in a store without indexes beside the UID map, as NewPodCache
// holds it. Read bytes/pod side by side.
func BenchmarkPodCacheHeap(b *testing.B) {
	const n = 20_000
	indexed := func() func(any) {
		store := cache.NewIndexer(cache.DeletionHandlingMetaNamespaceKeyFunc,
			cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc, "uid": corev1UIDIndex})
		return func(obj any) {
			if err := store.Add(obj); err != nil {
				b.Fatal(err)
			}
		}
	}
	for _, tc := range []struct {
		name      string
		store     func() func(any)
		transform func(*corev1.Pod) any
	}{
		{"full", indexed, func(p *corev1.Pod) any { return p }},
		{"stripped_corev1", indexed, func(p *corev1.Pod) any { return stripPod(p) }},
		{"cached", func() func(any) {
			store := cache.NewStore(cache.DeletionHandlingMetaNamespaceKeyFunc)
			byUID := &podsByUID{m: map[types.UID]*cachedPod{}}
			return func(obj any) {
				if err := store.Add(obj); err != nil {
					b.Fatal(err)
				}
				byUID.OnAdd(obj, true)
			}
		}, func(p *corev1.Pod) any { return newCachedPod(p) }},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var perPod float64
			for range b.N {
				before := heapInUse()
				add := tc.store()
				for i := range n {
					// A decoded pod: each its own strings, a fresh resource version.
					p := fleet.Pod(i, fleet.NodeName(i%10_000))
					p.ResourceVersion = strconv.Itoa(1_000_000 + i)
					add(tc.transform(p))
				}
				perPod = float64(heapInUse()-before) / n
				runtime.KeepAlive(add)
			}
			b.ReportMetric(perPod, "bytes/pod")
		})
	}
}

// stripPod is the pod cache's transform before cachedPod: a corev1.Pod
// with only the fields the CA reads.
func stripPod(pod *corev1.Pod) *corev1.Pod {
	out := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: pod.Name, Namespace: pod.Namespace, UID: pod.UID,
			ResourceVersion: pod.ResourceVersion, DeletionTimestamp: pod.DeletionTimestamp,
		},
		Spec:   corev1.PodSpec{ServiceAccountName: pod.Spec.ServiceAccountName, NodeName: pod.Spec.NodeName},
		Status: corev1.PodStatus{Phase: pod.Status.Phase},
	}
	if v, ok := pod.Annotations[policy.MirrorPodAnnotation]; ok {
		out.Annotations = map[string]string{policy.MirrorPodAnnotation: v}
	}
	return out
}

func corev1UIDIndex(obj any) ([]string, error) {
	if pod, ok := obj.(*corev1.Pod); ok && pod.UID != "" {
		return []string{string(pod.UID)}, nil
	}
	return nil, nil
}

func heapInUse() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}
