package workloadattest

import (
	"context"
	"errors"
	"os"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/mayfly-pki/mayfly/internal/test/background"
	"github.com/mayfly-pki/mayfly/internal/test/cluster"
)

const (
	testNode = "node-a"
	cidApp   = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	cidInit  = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
	cidDebug = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"
	cidNew   = "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd"
)

type resolverEnv struct {
	t      *testing.T
	ctx    context.Context
	client kubernetes.Interface
	r      *PodResolver
}

// One API server for all resolver subtests: starting one takes seconds.
func TestPodResolver(t *testing.T) {
	c := cluster.Start(t)
	lw, err := NodePods(c.Config, testNode)
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewPodResolver(lw, testNode, 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx := background.Run(t, "Start", r.Start)
	syncCtx, syncCancel := context.WithTimeout(ctx, 30*time.Second)
	defer syncCancel()
	if err := r.WaitSynced(syncCtx); err != nil {
		t.Fatal(err)
	}
	e := &resolverEnv{t: t, ctx: ctx, client: c.Client, r: r}

	t.Run("resolves_a_running_pod_on_this_node_by_container_id", func(t *testing.T) {
		pod := e.pod(t, "app", testNode, corev1.PodRunning, statuses("containerd://"+cidApp))
		got, err := r.Resolve(string(pod.UID), cidApp)
		if err != nil {
			t.Fatal(err)
		}
		if got.Name != "app" || got.Spec.ServiceAccountName != "demo" || got.ManagedFields != nil {
			t.Errorf("pod = %s sa %q managedFields %d", got.Name, got.Spec.ServiceAccountName, len(got.ManagedFields))
		}
	})
	t.Run("resolves_init_and_ephemeral_containers_and_pending_pods", func(t *testing.T) {
		pod := e.pod(t, "init", testNode, corev1.PodPending, func(s *corev1.PodStatus) {
			s.InitContainerStatuses = []corev1.ContainerStatus{{Name: "init", ContainerID: "cri-o://" + cidInit}}
			s.EphemeralContainerStatuses = []corev1.ContainerStatus{{Name: "debug", ContainerID: "docker://" + cidDebug}}
		})
		for _, cid := range []string{cidInit, cidDebug} {
			if _, err := r.Resolve(string(pod.UID), cid); err != nil {
				t.Errorf("Resolve(%s) = %v", cid[:4], err)
			}
		}
	})
	t.Run("pod_on_another_node_is_not_found", func(t *testing.T) {
		pod := e.create(t, "elsewhere", "node-b")
		e.setStatus(t, pod, corev1.PodRunning, statuses("containerd://"+cidApp))
		// The other pod is invisible to this node's informer: wait for a pod
		// of ours updated after it, so the cache has seen everything before.
		e.pod(t, "marker-b", testNode, corev1.PodRunning, statuses("containerd://"+cidNew))
		if _, err := r.Resolve(string(pod.UID), cidApp); !errors.Is(err, ErrPodNotFound) {
			t.Errorf("Resolve = %v, want ErrPodNotFound", err)
		}
	})
	t.Run("unknown_pod_UID_is_not_found", func(t *testing.T) {
		if _, err := r.Resolve(testPodUID, cidApp); !errors.Is(err, ErrPodNotFound) {
			t.Errorf("Resolve = %v, want ErrPodNotFound", err)
		}
	})
	t.Run("container_not_in_status_is_not_yet_known", func(t *testing.T) {
		pod := e.pod(t, "starting", testNode, corev1.PodRunning, statuses("containerd://"+cidApp))
		if _, err := r.Resolve(string(pod.UID), cidNew); !errors.Is(err, ErrNotYetKnown) {
			t.Errorf("Resolve = %v, want ErrNotYetKnown", err)
		}
		// The same ID under another pod does not count.
		if _, err := r.Resolve(string(pod.UID), cidInit); !errors.Is(err, ErrNotYetKnown) {
			t.Errorf("Resolve = %v, want ErrNotYetKnown", err)
		}
	})
	t.Run("ResolveWait_returns_once_the_status_lists_the_container", func(t *testing.T) {
		pod := e.pod(t, "late", testNode, corev1.PodPending, nil)
		type result struct {
			name string
			err  error
		}
		res := make(chan result, 1)
		wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
		defer wcancel()
		go func() {
			_, name, err := r.ResolveWait(wctx, string(pod.UID), cidNew)
			res <- result{name, err}
		}()
		e.setStatus(t, pod, corev1.PodRunning, statuses("containerd://"+cidNew))
		if got := <-res; got.err != nil || got.name != "app" {
			t.Errorf("ResolveWait = %q, %v", got.name, got.err)
		}
	})
	t.Run("ResolveWait_gives_up_with_the_context", func(t *testing.T) {
		pod := e.pod(t, "never", testNode, corev1.PodRunning, statuses("containerd://"+cidApp))
		wctx, wcancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer wcancel()
		if _, _, err := r.ResolveWait(wctx, string(pod.UID), cidNew); !errors.Is(err, ErrNotYetKnown) || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("ResolveWait = %v, want ErrNotYetKnown and DeadlineExceeded", err)
		}
	})
	t.Run("terminated_container_is_refused", func(t *testing.T) {
		pod := e.pod(t, "done", testNode, corev1.PodRunning, func(s *corev1.PodStatus) {
			s.ContainerStatuses = []corev1.ContainerStatus{{Name: "app", ContainerID: "containerd://" + cidApp,
				State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 0}}}}
		})
		if _, err := r.Resolve(string(pod.UID), cidApp); !errors.Is(err, ErrContainerTerminated) {
			t.Errorf("Resolve = %v, want ErrContainerTerminated", err)
		}
	})
	t.Run("succeeded_pod_is_refused", func(t *testing.T) {
		pod := e.pod(t, "succeeded", testNode, corev1.PodSucceeded, statuses("containerd://"+cidApp))
		if _, err := r.Resolve(string(pod.UID), cidApp); !errors.Is(err, ErrPodNotRunning) {
			t.Errorf("Resolve = %v, want ErrPodNotRunning", err)
		}
	})
	t.Run("terminating_pod_is_refused", func(t *testing.T) {
		pod := e.pod(t, "terminating", testNode, corev1.PodRunning, statuses("containerd://"+cidApp))
		// A bound pod is deleted gracefully: without a kubelet it stays,
		// with a deletionTimestamp.
		if err := e.client.CoreV1().Pods("default").Delete(ctx, pod.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		e.eventually(t, "deletionTimestamp in the cache", func() bool {
			_, err := r.Resolve(string(pod.UID), cidApp)
			return errors.Is(err, ErrPodTerminating)
		})
	})
	t.Run("kubernetes_attestor_attests_a_process_of_a_pod", func(t *testing.T) {
		pod := e.pod(t, "attested", testNode, corev1.PodRunning, statuses("containerd://"+cidApp))
		peer := selfPeer(t)
		root := fakeProc(t, strconv.Itoa(os.Getpid()), map[string]string{
			"cgroup": "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + underscores(string(pod.UID)) + ".slice/cri-containerd-" + cidApp + ".scope\n",
		})
		got, err := KubernetesAttestor{Proc: Proc{Root: root}, Resolver: r}.Attest(ctx, peer)
		if err != nil {
			t.Fatal(err)
		}
		want := Selectors{PodUID: string(pod.UID), PodName: "attested", Namespace: "default", ServiceAccount: "demo",
			NodeName: testNode, ContainerID: cidApp, ContainerName: "app"}
		if got.PodUID != want.PodUID || got.PodName != want.PodName || got.Namespace != want.Namespace ||
			got.ServiceAccount != want.ServiceAccount || got.NodeName != want.NodeName ||
			got.ContainerID != want.ContainerID || got.ContainerName != want.ContainerName || got.UID != nil {
			t.Errorf("Attest = %+v, want %+v", got, want)
		}
	})
	t.Run("kubernetes_attestor_refuses_host_processes_and_unknown_containers", func(t *testing.T) {
		pod := e.pod(t, "refused", testNode, corev1.PodRunning, statuses("containerd://"+cidApp))
		peer := selfPeer(t)
		for name, tc := range map[string]struct {
			cgroup string
			want   error
		}{
			"host":              {"0::/system.slice/sshd.service\n", ErrNotInPod},
			"unknown container": {"0::/kubepods/pod" + string(pod.UID) + "/" + cidNew + "\n", ErrNotYetKnown},
			"unknown pod":       {"0::/kubepods/pod" + testPodUID + "/" + cidApp + "\n", ErrPodNotFound},
			"missing proc":      {"", os.ErrNotExist},
		} {
			files := map[string]string{"cgroup": tc.cgroup}
			if tc.cgroup == "" {
				files = nil
			}
			root := fakeProc(t, strconv.Itoa(os.Getpid()), files)
			a := KubernetesAttestor{Proc: Proc{Root: root}, Resolver: r, NotYetKnownWait: -1}
			sel, err := a.Attest(ctx, peer)
			if !errors.Is(err, ErrNotAttested) || !errors.Is(err, tc.want) || sel != (Selectors{}) {
				t.Errorf("%s: Attest = %+v, %v; want ErrNotAttested wrapping %v", name, sel, err, tc.want)
			}
		}
	})
}

func statuses(containerID string) func(*corev1.PodStatus) {
	return func(s *corev1.PodStatus) {
		s.ContainerStatuses = []corev1.ContainerStatus{{Name: "app", ContainerID: containerID,
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}}
	}
}

func (e *resolverEnv) create(t *testing.T, name, node string) *corev1.Pod {
	t.Helper()
	return cluster.CreatePod(t, e.client, "default", name, "demo", node)
}

func (e *resolverEnv) setStatus(t *testing.T, pod *corev1.Pod, phase corev1.PodPhase, mutate func(*corev1.PodStatus)) *corev1.Pod {
	t.Helper()
	p := pod.DeepCopy()
	p.Status.Phase = phase
	if mutate != nil {
		mutate(&p.Status)
	}
	p, err := e.client.CoreV1().Pods(p.Namespace).UpdateStatus(e.ctx, p, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// pod creates a pod with the given status and waits until the resolver's
// cache holds that version.
func (e *resolverEnv) pod(t *testing.T, name, node string, phase corev1.PodPhase, mutate func(*corev1.PodStatus)) *corev1.Pod {
	t.Helper()
	p := e.setStatus(t, e.create(t, name, node), phase, mutate)
	e.eventually(t, "pod "+name+" version "+p.ResourceVersion+" in the cache", func() bool {
		objs, err := e.r.informer.GetIndexer().ByIndex(uidIndex, string(p.UID))
		return err == nil && len(objs) == 1 && objs[0].(*corev1.Pod).ResourceVersion == p.ResourceVersion
	})
	return p
}

// eventually polls a cache condition.
func (e *resolverEnv) eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	err := wait.PollUntilContextTimeout(e.ctx, 10*time.Millisecond, 20*time.Second, true,
		func(context.Context) (bool, error) { return cond(), nil })
	if err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

func underscores(s string) string {
	b := []byte(s)
	for i := range b {
		if b[i] == '-' {
			b[i] = '_'
		}
	}
	return string(b)
}
