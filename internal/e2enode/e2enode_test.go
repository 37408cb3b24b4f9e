// Package e2enode brings up a one-node Kubernetes cluster built from source
// (hack/setup-node.sh) inside namespaces of its own, installs mayfly from
// deploy/k8s and checks it end to end with a real kubelet, containerd and
// runc. It runs only with MAYFLY_E2E_NODE=1, as root (`make e2e-node`).
package e2enode

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// imageTag is the tag `make e2e-node` builds the images with.
const imageTag = "e2e-node"

func TestMain(m *testing.M) {
	switch {
	case os.Getenv("MAYFLY_E2E_NODE") != "1":
		os.Exit(m.Run()) // every test skips
	case os.Getenv("MAYFLY_E2E_NODE_INSIDE") != "1":
		if os.Geteuid() != 0 {
			fmt.Fprintln(os.Stderr, "e2enode: MAYFLY_E2E_NODE=1 needs root (namespaces, mounts, containers)")
			os.Exit(1)
		}
		os.Exit(enterNamespaces())
	default:
		code := m.Run()
		killEverything()
		os.Exit(code)
	}
}

// env is what the whole run shares: the cluster and its clients.
type env struct {
	c      *cluster
	cs     *kubernetes.Clientset
	cl     client.Client
	rc     *rest.Config
	repo   string
	timing map[string]time.Duration
	// filesPod is the pod of the CSI files verdict (its volume is a
	// client's certificate directory in later phases).
	filesPod *corev1.Pod
}

func TestNode(t *testing.T) {
	if os.Getenv("MAYFLY_E2E_NODE_INSIDE") != "1" {
		t.Skip("the real-node e2e runs with MAYFLY_E2E_NODE=1 as root (make e2e-node)")
	}
	bin := os.Getenv("MAYFLY_E2E_NODE_BIN")
	images := os.Getenv("MAYFLY_E2E_IMAGES")
	kustomize := os.Getenv("MAYFLY_KUSTOMIZE")
	if bin == "" || images == "" || kustomize == "" {
		t.Fatal("MAYFLY_E2E_NODE_BIN (hack/setup-node.sh), MAYFLY_E2E_IMAGES (make images) and MAYFLY_KUSTOMIZE are required; run make e2e-node")
	}
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "mayfly-e2enode-")
	if err != nil {
		t.Fatal(err)
	}
	keep := os.Getenv("MAYFLY_E2E_NODE_KEEP") == "1"
	t.Cleanup(func() {
		if t.Failed() || keep {
			t.Logf("node logs kept in %s/logs", dir)
			return
		}
		_ = os.RemoveAll(dir)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()

	startUp := time.Now()
	if err := prepareHost(dir); err != nil {
		t.Fatal(err)
	}
	c := &cluster{dir: dir, bin: bin}
	t.Cleanup(c.stop)
	var tars []string
	for _, n := range []string{"pause", "mayfly-ca", "mayfly-agent", "mayfly-demo"} {
		tars = append(tars, filepath.Join(images, fmt.Sprintf("%s-%s.tar", n, runtime.GOARCH)))
	}
	if err := c.up(ctx, tars); err != nil {
		t.Fatalf("bring-up: %v\n%v", err, c.dead())
	}
	rc, err := clientcmd.BuildConfigFromFlags("", c.admin)
	if err != nil {
		t.Fatal(err)
	}
	rc.QPS, rc.Burst = 50, 100
	cs := kubernetes.NewForConfigOrDie(rc)
	cl, err := client.New(rc, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{c: c, cs: cs, cl: cl, rc: rc, repo: repo, timing: map[string]time.Duration{}}
	e.waitNodeReady(t, ctx)
	e.timing["node bring-up"] = time.Since(startUp)
	t.Logf("FIGURE node ready %s after start (binaries and images already built)", e.timing["node bring-up"].Round(time.Second))

	installStart := time.Now()
	e.install(t, ctx, kustomize, dir)
	t.Run("ca and agent ready, CSI driver registered", func(t *testing.T) { e.verdictReady(t, ctx) })
	t.Logf("FIGURE mayfly installed and ready %s after apply", time.Since(installStart).Round(time.Second))
	t.Run("CSI files volume", func(t *testing.T) { e.verdictCSIFiles(t, ctx) })
	t.Run("CSI socket volume; a process outside any pod gets nothing", func(t *testing.T) { e.verdictSocketOutsidePod(t, ctx) })

	// The phases below need WorkloadCertificates in a namespace, short
	// leaves and the minimum CSI token life: the chart rendered with those
	// values (e2eValues) is applied over the install, as install.md's
	// "render your own tree" does.
	if !t.Run("reconfigured from the chart (helm template)", func(t *testing.T) { e.reconfigure(t, ctx, os.Getenv("MAYFLY_HELM")) }) {
		t.FailNow()
	}
	if err := os.Setenv("KUBECONFIG", c.admin); err != nil { // ca rotate-root, in this process
		t.Fatal(err)
	}
	caConfig := e.caConfigFile(t, ctx, dir)
	filesClientDir := volumeDir(e.filesPod, "svid")
	t.Run("phases", func(t *testing.T) {
		// The longest phase (the CSI token's 600 s minimum life) runs
		// beside all the others.
		t.Run("CSI volume lives past its pod token's expiry and keeps renewing", func(t *testing.T) {
			t.Parallel()
			e.verdictTokenExpiry(t, ctx)
		})
		t.Run("delivery paths, rotations, restarts", func(t *testing.T) {
			t.Parallel()
			t.Run("podCertificate projected volume with a ClusterTrustBundle", func(t *testing.T) { e.verdictPodCertificate(t, ctx) })
			t.Run("WorkloadCertificate Secret mounted and used; a namespace not opted in gets nothing", func(t *testing.T) {
				e.verdictWorkloadCertificate(t, ctx, filesClientDir)
			})
			var m *mtls
			if !t.Run("go-spiffe's client in a pod on the CSI socket; files pair; identities match namespace and ServiceAccount", func(t *testing.T) { m = e.startMTLS(t, ctx) }) {
				return
			}
			defer close(m.watch.stop)
			t.Run("mTLS every second through three leaf rotations and ca rotate-root, socket and files, no failed handshake", func(t *testing.T) {
				e.verdictRotations(t, ctx, m, caConfig)
			})
			t.Run("a deleted pod's identity is no longer renewed", func(t *testing.T) { e.verdictDeletedPod(t, ctx) })
			t.Run("agent pod deleted: back, volumes resumed and rotating", func(t *testing.T) { e.verdictAgentRestart(t, ctx, m) })
			t.Run("CA leader pod deleted: issuance continues", func(t *testing.T) { e.verdictCALeader(t, ctx, m) })
			t.Run("no failed handshake through the agent and CA leader restarts", func(t *testing.T) {
				failed, ok, err := e.failures(ctx, m)
				if err != nil || failed != 0 {
					t.Errorf("%d failed handshakes, %d ok (%v)", failed, ok, err)
				}
				t.Logf("mTLS over the whole run: %d handshakes ok, %d failed", ok, failed)
			})
		})
	})
	logRSS(t)
	for k, v := range e.timing {
		t.Logf("FIGURE %s: %s", k, v.Round(10*time.Millisecond))
	}
}

// waitNodeReady waits for the Node object to be Ready (the kubelet runs,
// the runtime and the CNI network are up).
func (e *env) waitNodeReady(t *testing.T, ctx context.Context) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	err := waitFor(ctx, "node "+nodeName+" Ready", func() bool {
		if e.c.dead() != nil {
			return true
		}
		n, err := e.cs.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
		if err != nil {
			return false
		}
		for _, cond := range n.Status.Conditions {
			if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
				return true
			}
		}
		return false
	})
	if dead := e.c.dead(); dead != nil {
		t.Fatalf("a component died: %v", dead)
	}
	if err != nil {
		t.Fatalf("%v\nkubelet log:\n%s", err, tail(e.c.path("logs", "kubelet.log"), 40))
	}
}

// install renders deploy/k8s through an overlay that only sets the image
// tags and pull policy (docs/install.md) and applies it server-side.
func (e *env) install(t *testing.T, ctx context.Context, kustomize, dir string) {
	t.Helper()
	overlay := filepath.Join(dir, "overlay")
	rel, err := filepath.Rel(overlay, filepath.Join(e.repo, "deploy", "k8s"))
	if err != nil {
		t.Fatal(err)
	}
	k := fmt.Sprintf(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - %s
images:
  - name: ghcr.io/mayfly-pki/mayfly-ca
    newTag: %s
  - name: ghcr.io/mayfly-pki/mayfly-agent
    newTag: %s
patches:
  - target: {kind: Deployment, name: mayfly-ca}
    patch: |-
      - {op: replace, path: /spec/template/spec/containers/0/imagePullPolicy, value: Never}
  - target: {kind: DaemonSet, name: mayfly-agent}
    patch: |-
      - {op: replace, path: /spec/template/spec/containers/0/imagePullPolicy, value: Never}
`, rel, imageTag, imageTag)
	if err := writeFile(filepath.Join(overlay, "kustomization.yaml"), k); err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(ctx, kustomize, "build", "--load-restrictor", "LoadRestrictionsNone", overlay).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("kustomize build: %v: %s", err, ee.Stderr)
		}
		t.Fatal(err)
	}
	e.apply(t, ctx, out)
}

// apply applies every object of a multi-document YAML server-side,
// retrying kinds whose CRD is not established yet.
func (e *env) apply(t *testing.T, ctx context.Context, manifests []byte) {
	t.Helper()
	var objs []*unstructured.Unstructured
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(manifests), 4096)
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			t.Fatal(err)
		}
		if len(u.Object) > 0 {
			objs = append(objs, u)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	pending := objs
	for len(pending) > 0 {
		var again []*unstructured.Unstructured
		var lastErr error
		for _, u := range pending {
			u.SetManagedFields(nil)
			err := e.cl.Patch(ctx, u, client.Apply, client.FieldOwner("mayfly-e2enode"), client.ForceOwnership) //nolint:staticcheck // SSA of unstructured objects
			if apierrors.IsInvalid(err) && u.GetKind() == "CSIDriver" {
				// Fields of a CSIDriver the API keeps immutable: an
				// upgrade replaces the object (docs/upgrade.md).
				t.Logf("CSIDriver %s: %v; replacing it", u.GetName(), err)
				if err := e.cl.Delete(ctx, u); err != nil && !apierrors.IsNotFound(err) {
					t.Fatal(err)
				}
				again, lastErr = append(again, u), err
				continue
			}
			if meta.IsNoMatchError(err) || apierrors.IsNotFound(err) {
				again, lastErr = append(again, u), err
				continue
			}
			if err != nil {
				t.Fatalf("apply %s %s/%s: %v", u.GetKind(), u.GetNamespace(), u.GetName(), err)
			}
		}
		if len(again) == len(pending) {
			select {
			case <-ctx.Done():
				t.Fatalf("apply: %d objects never applied: %v", len(again), lastErr)
			case <-time.After(time.Second):
			}
			// A new CRD needs a fresh RESTMapper.
			cl, err := client.New(e.rc, client.Options{})
			if err != nil {
				t.Fatal(err)
			}
			e.cl = cl
		}
		pending = again
	}
}

// verdictReady: the CA Deployment (2 replicas) and the agent DaemonSet are
// Ready and the kubelet registered csi.mayfly.dev (CSINode lists it).
func (e *env) verdictReady(t *testing.T, ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	var dep *appsv1.Deployment
	var ds *appsv1.DaemonSet
	var drivers []string
	err := waitFor(ctx, "CA ready, agent ready, CSINode lists csi.mayfly.dev", func() bool {
		var err error
		if dep, err = e.cs.AppsV1().Deployments("mayfly-system").Get(ctx, "mayfly-ca", metav1.GetOptions{}); err != nil {
			return false
		}
		if ds, err = e.cs.AppsV1().DaemonSets("mayfly-system").Get(ctx, "mayfly-agent", metav1.GetOptions{}); err != nil {
			return false
		}
		drivers = nil
		if n, err := e.cs.StorageV1().CSINodes().Get(ctx, nodeName, metav1.GetOptions{}); err == nil {
			for _, d := range n.Spec.Drivers {
				drivers = append(drivers, d.Name)
			}
		}
		return dep.Status.ReadyReplicas == 2 && ds.Status.NumberReady == 1 && strings.Contains(strings.Join(drivers, ","), "csi.mayfly.dev")
	})
	if err != nil {
		e.dumpPods(t, ctx, "mayfly-system")
		t.Fatalf("%v: CA ready %d/2, agent ready %d/1, CSINode drivers %v", err, readyReplicas(dep), numberReady(ds), drivers)
	}
}

func readyReplicas(d *appsv1.Deployment) int32 {
	if d == nil {
		return -1
	}
	return d.Status.ReadyReplicas
}

func numberReady(d *appsv1.DaemonSet) int32 {
	if d == nil {
		return -1
	}
	return d.Status.NumberReady
}

// dumpPods logs the pods of ns, their events and container logs.
func (e *env) dumpPods(t *testing.T, ctx context.Context, ns string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	pods, err := e.cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Logf("list pods: %v", err)
		return
	}
	for _, p := range pods.Items {
		t.Logf("pod %s/%s phase %s conditions %+v", ns, p.Name, p.Status.Phase, p.Status.ContainerStatuses)
		for _, c := range p.Spec.Containers {
			b, err := e.cs.CoreV1().Pods(ns).GetLogs(p.Name, &corev1.PodLogOptions{Container: c.Name, TailLines: ptr(int64(30))}).DoRaw(ctx)
			t.Logf("logs %s/%s: %s %v", p.Name, c.Name, b, err)
		}
	}
	evs, err := e.cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
	if err == nil {
		for _, ev := range evs.Items {
			t.Logf("event %s %s: %s %s", ev.InvolvedObject.Kind, ev.InvolvedObject.Name, ev.Reason, ev.Message)
		}
	}
}

func ptr[T any](v T) *T { return &v }
