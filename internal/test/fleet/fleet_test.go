package fleet_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/agent"
	"github.com/mayfly-pki/mayfly/internal/app/caapp"
	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/controller/bundle"
	"github.com/mayfly-pki/mayfly/internal/memlimit"
	"github.com/mayfly-pki/mayfly/internal/test/cluster"
	"github.com/mayfly-pki/mayfly/internal/test/fleet"
	"github.com/mayfly-pki/mayfly/internal/test/loopback"
	"github.com/mayfly-pki/mayfly/internal/test/openfiles"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

const (
	caNamespace = "mayfly-system"
	caSecret    = "mayfly-ca" // the CA's state, the configuration's default
	agentSA     = "mayfly-agent"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

// sizes are what one run covers: MAYFLY_FLEET_PODS, MAYFLY_FLEET_NODES,
// MAYFLY_FLEET_AGENTS (comma-separated steps), MAYFLY_FLEET_OUT (the
// report's directory) and MAYFLY_FLEET_CA_MEMORY (the CA container's memory
// limit, handed to the CA as the chart does) set them for `make
// bench-fleet`; unset, the run is
// the small smoke run of `go test`.
type sizes struct {
	pods, nodes int
	steps       []int
	out         string
	caMemory    string // the CA container's memory limit (MAYFLY_FLEET_CA_MEMORY), "" for none
}

func sizesFromEnv(t *testing.T) sizes {
	s := sizes{pods: 300, nodes: 40, steps: []int{10, 20}}
	num := func(name string, dst *int) {
		if v := os.Getenv(name); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				t.Fatalf("%s=%q: want a positive number", name, v)
			}
			*dst = n
		}
	}
	num("MAYFLY_FLEET_PODS", &s.pods)
	num("MAYFLY_FLEET_NODES", &s.nodes)
	if v := os.Getenv("MAYFLY_FLEET_AGENTS"); v != "" {
		s.steps = nil
		for f := range strings.SplitSeq(v, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 || (len(s.steps) > 0 && n <= s.steps[len(s.steps)-1]) {
				t.Fatalf("MAYFLY_FLEET_AGENTS=%q: want increasing positive numbers", v)
			}
			s.steps = append(s.steps, n)
		}
	}
	if last := s.steps[len(s.steps)-1]; last > s.nodes {
		t.Fatalf("%d agents need as many nodes, have %d", last, s.nodes)
	}
	s.out = os.Getenv("MAYFLY_FLEET_OUT")
	s.caMemory = os.Getenv("MAYFLY_FLEET_CA_MEMORY")
	if s.caMemory != "" {
		if _, err := memlimit.Parse(s.caMemory); err != nil {
			t.Fatalf("MAYFLY_FLEET_CA_MEMORY: %v", err)
		}
	}
	return s
}

// TestFleet runs the CA binary against an API server holding a synthetic
// cluster, and a fleet of real agent components (CAClient: attestation
// with a bound ServiceAccount token, the bundle stream; Batcher and
// Manager for issuance) against it over real gRPC/TLS. It measures the CA's
// time to ready, heap and RSS, the push of a new bundle until every agent
// acknowledged it at each fleet size, a reconnect storm after a CA restart
// and paced issuance. The smoke run checks that every stage completes;
// the figures are the report's.
func TestFleet(t *testing.T) {
	sz := sizesFromEnv(t)
	// Each agent holds a connection to the CA, in this process and in the
	// CA's (which inherits the limit), beside the API server's.
	last := sz.steps[len(sz.steps)-1]
	openfiles.Raise(t, uint64(last+512), strconv.Itoa(last)+" agents (in this process and in the CA's)")
	begin := time.Now()
	c := cluster.Start(t)
	f := &fixture{t: t, sz: sz, c: c, rep: &fleet.Report{Pods: sz.pods, Nodes: sz.nodes}}
	times := &f.rep.Times
	times.ClusterSeconds = time.Since(begin).Seconds()
	f.populate()
	stage := func(run func()) float64 {
		start := time.Now()
		run()
		return time.Since(start).Seconds()
	}
	times.CASeconds = stage(f.startCA)
	for _, n := range sz.steps {
		times.StepSeconds = append(times.StepSeconds, stage(func() { f.step(n) }))
	}
	times.IssuanceSeconds = stage(f.issuance)
	times.StormSeconds = stage(f.storm)
	times.TotalSeconds = time.Since(begin).Seconds()
	var md bytes.Buffer
	if err := f.rep.Markdown(&md); err != nil {
		t.Fatal(err)
	}
	t.Logf("fleet benchmark:\n%s", md.String())
	if sz.out != "" {
		if err := f.rep.Write(sz.out); err != nil {
			t.Fatal(err)
		}
		fmt.Print(md.String())
	}
}

type fixture struct {
	t    *testing.T
	sz   sizes
	c    *cluster.Cluster
	kube kubernetes.Interface
	rep  *fleet.Report

	dir, cfgPath, kubeconfig, addr, health string
	ca                                     *exec.Cmd
	caExit                                 chan error
	bundle                                 []*x509.Certificate

	pods   []*corev1.Pod // the workload pods, as written (UIDs)
	starts int           // CA processes started
	agents []*fleetAgent
	ctx    context.Context
}

// fleetAgent is one node's agent: the real CAClient, Batcher and Manager.
type fleetAgent struct {
	node    string
	ca      *agent.CAClient
	batcher *agent.Batcher
	mgr     *agent.Manager
	pods    *agent.PodIndex
}

// parallel runs f(i) for i in [0, n) on workers goroutines and fails the
// test on the first error.
func parallel(t *testing.T, n, workers int, f func(i int) error) {
	t.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					once.Do(func() { first = err })
					next.Store(int64(n))
					return
				}
			}
		})
	}
	wg.Wait()
	if first != nil {
		t.Fatal(first)
	}
}

// populate creates the namespaces and ServiceAccounts through the API
// server, and writes the nodes, workload pods and one agent pod per node
// that will run an agent straight into its etcd (fleet.Etcd): through the
// API server they cost about 3.6 ms of its CPU each, 17 to 22 minutes for
// the sizes. The pods keep their Running status (the API server
// resets that of a created pod to Pending). It waits until the API server
// serves every object.
func (f *fixture) populate() {
	t := f.t
	cfg := rest.CopyConfig(f.c.Config)
	cfg.QPS, cfg.Burst = 5000, 10000
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f.kube = kube
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	f.ctx = ctx
	start := time.Now()
	nss := min(100, f.sz.pods)
	parallel(t, nss+1, 16, func(i int) error {
		name := caNamespace
		if i < nss {
			name = fleet.Namespace(i)
		}
		_, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
		return err
	})
	sas := min(500, f.sz.pods)
	parallel(t, sas+1, 16, func(i int) error {
		ns, name := caNamespace, agentSA
		if i < sas {
			ns, name = fleet.Namespace(i), "app-"+strconv.Itoa(i)
		}
		_, err := kube.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
		return err
	})
	viaAPI := time.Since(start)

	etcd, err := fleet.DialEtcd(f.c.Env.ControlPlane.Etcd.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = etcd.Close() }()
	const writers = 4 // transactions in flight (8 made a loaded etcd time out)
	nodes := make([]*corev1.Node, f.sz.nodes)
	for i := range nodes {
		nodes[i] = fleet.Node(i)
	}
	if err := etcd.PutNodes(ctx, nodes, writers); err != nil {
		t.Fatal(err)
	}
	f.pods = make([]*corev1.Pod, f.sz.pods)
	for i := range f.pods {
		f.pods[i] = fleet.Pod(i, fleet.NodeName(i%f.sz.nodes))
	}
	if err := etcd.PutPods(ctx, f.pods, writers); err != nil {
		t.Fatal(err)
	}
	agents := f.sz.steps[len(f.sz.steps)-1]
	agentPods := make([]*corev1.Pod, agents)
	for i := range agentPods {
		agentPods[i] = agentPod(i)
	}
	if err := etcd.PutPods(ctx, agentPods, writers); err != nil {
		t.Fatal(err)
	}
	written := time.Since(start)
	f.waitServed(f.sz.nodes, f.sz.pods+agents)
	took := time.Since(start)
	f.warmUp()
	f.rep.Times.PopulateSeconds = took.Seconds()
	objects := nss + 1 + sas + 1 + f.sz.nodes + f.sz.pods + agents
	etcdObjects := f.sz.nodes + f.sz.pods + agents
	t.Logf("cluster populated in %s: %d namespaces and ServiceAccounts through the API server in %s; %d nodes, %d pods, %d agent pods written to etcd in %s (%.0f/s), all served by the API server %s later (%d objects, %.0f/s overall)",
		took.Round(time.Millisecond), nss+1+sas+1, viaAPI.Round(time.Millisecond), f.sz.nodes, f.sz.pods, agents, (written - viaAPI).Round(time.Millisecond),
		float64(etcdObjects)/(written-viaAPI).Seconds(), (took - written).Round(time.Millisecond), objects, float64(objects)/took.Seconds())
	f.checkEtcdObjects(etcd, nodes[0], f.pods[0], agentPods[0])
}

// warmUp waits until the API server's watch cache has taken in what was
// written to etcd, reading every pod once as the CA's informer does: a
// watch-list (the initial events of a watch, up to the bookmark that ends
// them), in protobuf. Until the cache holds etcd's latest revision the API
// server refuses it ("Too large resource version", as it would the CA's);
// taking in 160,000 objects written in a minute takes it about a minute
// more, and a CA started meanwhile took about 80 s to be ready, against
// 20-30 s in later starts on the same cluster. A CA meets an API server
// that has long served its pods, so its time to ready is measured after
// this. The time is logged.
func (f *fixture) warmUp() {
	start := time.Now()
	cfg := rest.CopyConfig(f.c.Config)
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	cfg.AcceptContentTypes = cfg.ContentType
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		f.t.Fatal(err)
	}
	tries := 0
	wait.Until(f.t, "the API server's watch cache to take in the pods", 10*time.Minute, time.Second, func(ctx context.Context) (bool, string) {
		tries++
		send := true
		w, err := kube.CoreV1().Pods("").Watch(ctx, metav1.ListOptions{
			SendInitialEvents: &send, ResourceVersionMatch: metav1.ResourceVersionMatchNotOlderThan, AllowWatchBookmarks: true,
		})
		if err != nil {
			return false, err.Error()
		}
		defer w.Stop()
		n := 0
		for ev := range w.ResultChan() {
			switch ev.Type {
			case watch.Added:
				n++
			case watch.Bookmark:
				if m, err := meta.Accessor(ev.Object); err == nil && m.GetAnnotations()[metav1.InitialEventsAnnotationKey] == "true" {
					f.t.Logf("the API server's watch cache served a watch-list of the %d pods %s after population (%d tries)", n, time.Since(start).Round(time.Millisecond), tries)
					return true, ""
				}
			case watch.Error:
				return false, fmt.Sprintf("watch-list after %d pods: %v", n, apierrors.FromObject(ev.Object))
			}
		}
		return false, fmt.Sprintf("watch-list ended after %d pods, before its bookmark", n)
	})
}

// waitServed waits until the API server lists nodes nodes and pods pods
// (its watch cache caught up with what was written to etcd).
func (f *fixture) waitServed(nodes, pods int) {
	count := func(list func(metav1.ListOptions) (int, *int64, string, error)) (int, error) {
		n, remaining, cont, err := list(metav1.ListOptions{Limit: 1})
		if err != nil {
			return 0, err
		}
		if remaining != nil {
			return n + int(*remaining), nil
		}
		for cont != "" { // no count given: page through
			var more int
			more, _, cont, err = list(metav1.ListOptions{Limit: 5000, Continue: cont})
			if err != nil {
				return 0, err
			}
			n += more
		}
		return n, nil
	}
	wait.Until(f.t, "the API server to serve every object written to etcd", 10*time.Minute, 100*time.Millisecond, func(ctx context.Context) (bool, string) {
		gotNodes, err := count(func(o metav1.ListOptions) (int, *int64, string, error) {
			l, err := f.kube.CoreV1().Nodes().List(ctx, o)
			if err != nil {
				return 0, nil, "", err
			}
			return len(l.Items), l.RemainingItemCount, l.Continue, nil
		})
		if err != nil {
			return false, err.Error()
		}
		gotPods, err := count(func(o metav1.ListOptions) (int, *int64, string, error) {
			l, err := f.kube.CoreV1().Pods("").List(ctx, o)
			if err != nil {
				return 0, nil, "", err
			}
			return len(l.Items), l.RemainingItemCount, l.Continue, nil
		})
		if err != nil {
			return false, err.Error()
		}
		return gotNodes == nodes && gotPods == pods, fmt.Sprintf("%d of %d nodes, %d of %d pods", gotNodes, nodes, gotPods, pods)
	})
}

// checkEtcdObjects checks that objects written to etcd are what the API
// server then serves: a node and a pod read back hold every field written
// (the API server adds its defaults and a resourceVersion), and a
// ServiceAccount token bound to an agent pod written to etcd is issued
// and reviewed with that pod's name and UID. It also checks the key
// layout and encoding against a pod the API server stored itself.
func (f *fixture) checkEtcdObjects(etcd *fleet.Etcd, node *corev1.Node, pod, agent *corev1.Pod) {
	t := f.t
	ctx := f.ctx
	gotNode, err := f.kube.CoreV1().Nodes().Get(ctx, node.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("node written to etcd: %v", err)
	}
	gotPod, err := f.kube.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("pod written to etcd: %v", err)
	}
	for _, c := range []struct {
		what           string
		written, read  any
		rv             string
		uid, wantUID   string
		phase, wantPhs corev1.PodPhase
	}{
		{what: "node", written: node, read: gotNode, rv: gotNode.ResourceVersion, uid: string(gotNode.UID), wantUID: string(node.UID)},
		{what: "pod", written: pod, read: gotPod, rv: gotPod.ResourceVersion, uid: string(gotPod.UID), wantUID: string(pod.UID), phase: gotPod.Status.Phase, wantPhs: corev1.PodRunning},
	} {
		if c.rv == "" || c.uid != c.wantUID || c.phase != c.wantPhs {
			t.Fatalf("%s written to etcd, read back: resourceVersion %q, UID %q (want %q), phase %q (want %q)", c.what, c.rv, c.uid, c.wantUID, c.phase, c.wantPhs)
		}
		if diff := subsetDiff(t, c.written, c.read); diff != "" {
			t.Fatalf("%s written to etcd, read back through the API server: %s", c.what, diff)
		}
	}

	// The layout and encoding the API server uses itself.
	probe, err := f.kube.CoreV1().Pods(caNamespace).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "etcd-layout-probe", Namespace: caNamespace},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "example.invalid/probe"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := etcd.Get(ctx, fleet.PodKey(probe.Namespace, probe.Name))
	if err != nil || !bytes.HasPrefix(raw, []byte("k8s\x00")) {
		t.Fatalf("the API server's own pod at %s: %d bytes, prefix %q, error %v (want the protobuf envelope)", fleet.PodKey(probe.Namespace, probe.Name), len(raw), raw[:min(len(raw), 4)], err)
	}
	if raw, err := etcd.Get(ctx, fleet.NodeKey(node.Name)); err != nil || raw == nil {
		t.Fatalf("node %s not at %s: %v", node.Name, fleet.NodeKey(node.Name), err)
	}
	if err := f.kube.CoreV1().Pods(caNamespace).Delete(ctx, probe.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64(0))}); err != nil {
		t.Fatal(err)
	}

	// A bound token for the agent pod: the API server finds the pod and
	// its node (both written to etcd) to issue it, and reviews it.
	tr, err := f.kube.CoreV1().ServiceAccounts(caNamespace).CreateToken(ctx, agentSA, &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences:      []string{"mayfly-ca"},
		BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: agent.Name, UID: agent.UID},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token bound to the agent pod written to etcd: %v", err)
	}
	rev, err := f.kube.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{
		Token: tr.Status.Token, Audiences: []string{"mayfly-ca"},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	extra := rev.Status.User.Extra
	if !rev.Status.Authenticated || !slices.Equal(extra["authentication.kubernetes.io/pod-uid"], []string{string(agent.UID)}) ||
		!slices.Equal(extra["authentication.kubernetes.io/node-name"], []string{agent.Spec.NodeName}) {
		t.Fatalf("review of the token bound to %s/%s: authenticated %v, error %q, extra %v", agent.Namespace, agent.Name, rev.Status.Authenticated, rev.Status.Error, extra)
	}
}

// subsetDiff describes where read lacks or differs from a field of
// written (both as JSON), "" if every field written was read back.
// metadata.resourceVersion is not compared; fields the API server added
// (defaults) are allowed.
func subsetDiff(t *testing.T, written, read any) string {
	var w, r map[string]any
	for _, x := range []struct {
		in  any
		out *map[string]any
	}{{written, &w}, {read, &r}} {
		b, err := json.Marshal(x.in)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, x.out); err != nil {
			t.Fatal(err)
		}
	}
	delete(w["metadata"].(map[string]any), "resourceVersion")
	return subset("", w, r)
}

func subset(path string, w, r any) string {
	switch wv := w.(type) {
	case map[string]any:
		rv, ok := r.(map[string]any)
		if !ok {
			return fmt.Sprintf("%s: read %v, want an object", path, r)
		}
		for k, v := range wv {
			if d := subset(path+"."+k, v, rv[k]); d != "" {
				return d
			}
		}
	case []any:
		rv, ok := r.([]any)
		if !ok || len(rv) != len(wv) {
			return fmt.Sprintf("%s: read %v, want %v", path, r, w)
		}
		for i := range wv {
			if d := subset(fmt.Sprintf("%s[%d]", path, i), wv[i], rv[i]); d != "" {
				return d
			}
		}
	default:
		if w != r {
			return fmt.Sprintf("%s: read %v, want %v", path, r, w)
		}
	}
	return ""
}

// agentPod is the pod of node i's agent, Running, with its UID.
func agentPod(i int) *corev1.Pod {
	ts := metav1.Date(2026, 12, 1, 9, 30, 0, 0, time.UTC)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: "mayfly-agent-" + strconv.Itoa(i), Namespace: caNamespace,
			UID: types.UID(fmt.Sprintf("33333333-0000-4000-8000-%012d", i)), CreationTimestamp: ts,
			Labels: map[string]string{"app.kubernetes.io/name": "mayfly-agent"},
		},
		Spec: corev1.PodSpec{
			ServiceAccountName: agentSA, NodeName: fleet.NodeName(i),
			Containers: []corev1.Container{{Name: "agent", Image: "example.invalid/mayfly-agent"}},
		},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, StartTime: &ts, PodIP: fmt.Sprintf("10.0.%d.%d", i/256%256, i%256)},
	}
}

// startCA builds the CA binary (or takes MAYFLY_CA_BIN), writes its
// configuration and a kubeconfig for the API server, and starts it.
func (f *fixture) startCA() {
	t := f.t
	f.dir = t.TempDir()
	bin := os.Getenv("MAYFLY_CA_BIN")
	if bin == "" {
		bin = filepath.Join(f.dir, "ca")
		out, err := exec.CommandContext(f.ctx, "go", "build", "-o", bin, "github.com/mayfly-pki/mayfly/cmd/ca").CombinedOutput()
		if err != nil {
			t.Fatalf("go build ./cmd/ca: %v\n%s", err, out)
		}
	}
	f.addr, f.health = loopback.FreeAddr(t), loopback.FreeAddr(t)
	f.kubeconfig = filepath.Join(f.dir, "kubeconfig")
	writeKubeconfig(t, f.c.Config, f.kubeconfig)
	f.cfgPath = filepath.Join(f.dir, "ca.yaml")
	conf := fmt.Sprintf(`trustDomain: example.org
listenAddress: %s
healthAddress: %s
statusSocket: "off"
kubernetes:
  namespace: %s
  agentServiceAccount: %s
  leaderElection: false
attestation:
  rateLimit: 100000
  burst: 100000
  peerRateLimit: 100000
  peerBurst: 100000
`, f.addr, f.health, caNamespace, agentSA)
	if err := os.WriteFile(f.cfgPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KUBECONFIG", f.kubeconfig) // for `ca rotate-root` in this process
	for base := range strings.SplitSeq(os.Getenv("MAYFLY_FLEET_CA_BASELINE_BIN"), ",") {
		if base != "" {
			f.baseline(base)
		}
	}
	f.ca, f.caExit = f.runCA(bin)
	start := time.Now()
	f.waitReady("the CA to be ready", 10*time.Minute)
	f.rep.ReadySeconds = time.Since(start).Seconds()
	f.rep.ReadyHeapMiB, f.rep.ReadyLiveHeapMiB, f.rep.ReadyRSSMiB = f.heapMiB(), f.liveHeapMiB(), rssMiB(t, f.ca.Process.Pid)
	f.rep.HeapPerPodBytes = f.rep.ReadyLiveHeapMiB * (1 << 20) / float64(f.sz.pods+f.sz.steps[len(f.sz.steps)-1])
	t.Logf("CA ready in %.1fs: heap %.0f MiB, live heap %.0f MiB, RSS %.0f MiB, CPU %.1fs", f.rep.ReadySeconds, f.rep.ReadyHeapMiB, f.rep.ReadyLiveHeapMiB, f.rep.ReadyRSSMiB, cpuSeconds(t, f.ca.Process.Pid))
	wait.Within(t, "the trust bundle ConfigMap", time.Minute, 50*time.Millisecond, func() bool {
		cm, err := f.kube.CoreV1().ConfigMaps(caNamespace).Get(f.ctx, bundle.ConfigMapName, metav1.GetOptions{})
		if err != nil {
			return false
		}
		f.bundle = parsePEM(cm.Data[bundle.ConfigMapKey])
		return len(f.bundle) > 0
	})
}

// baseline runs another build of the CA (MAYFLY_FLEET_CA_BASELINE_BIN, a
// comma-separated list, run in turn) against the same cluster until it is ready, logs its time to ready,
// heap, RSS and CPU time, and stops it: the CA under test starts next, so
// the two list the same pods on the same machine in one run.
func (f *fixture) baseline(bin string) {
	t := f.t
	ca, exit := f.runCA(bin)
	f.caExit = exit
	start := time.Now()
	f.waitReady("the baseline CA to be ready", 10*time.Minute)
	t.Logf("baseline CA %s ready in %.1fs: heap %.0f MiB, live heap %.0f MiB, RSS %.0f MiB, CPU %.1fs", bin, time.Since(start).Seconds(),
		f.heapMiB(), f.liveHeapMiB(), rssMiB(t, ca.Process.Pid), cpuSeconds(t, ca.Process.Pid))
	_ = ca.Process.Signal(syscall.SIGTERM)
	err := <-exit
	exit <- err // for runCA's cleanup
}

func (f *fixture) runCA(bin string) (*exec.Cmd, chan error) {
	t := f.t
	cmd := exec.Command(bin, "run", "--config", f.cfgPath)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+f.kubeconfig, "POD_NAME=ca-fleet", "GOMAXPROCS=2")
	if f.sz.caMemory != "" { // as the chart sets it from the container's limit
		cmd.Env = append(cmd.Env, memlimit.EnvVar+"="+f.sz.caMemory)
	}
	var logs bytes.Buffer
	var out io.Writer = &lockedWriter{w: &logs}
	if f.sz.out != "" { // the CA's log beside the report, one file per start
		lf, err := os.Create(filepath.Join(f.sz.out, fmt.Sprintf("ca-%d.log", f.starts)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = lf.Close() })
		out = io.MultiWriter(out, lf)
	}
	f.starts++
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exit := make(chan error, 1)
	go func() { exit <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exit:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
		}
		if t.Failed() {
			t.Logf("CA output (last 4 KiB):\n%s", tail(logs.String(), 4096))
		}
	})
	return cmd, exit
}

func (f *fixture) waitReady(what string, timeout time.Duration) {
	f.t.Helper()
	wait.Until(f.t, what, timeout, 20*time.Millisecond, func(context.Context) (bool, string) {
		select {
		case err := <-f.caExit:
			f.t.Fatalf("the CA exited: %v", err)
		default:
		}
		code := f.readyz()
		return code == http.StatusOK, "readyz " + strconv.Itoa(code)
	})
}

func (f *fixture) readyz() int {
	ctx, cancel := context.WithTimeout(f.ctx, 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+f.health+"/readyz", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}

// metric returns the value of the CA's un-labelled metric name.
func (f *fixture) metric(name string) float64 {
	ctx, cancel := context.WithTimeout(f.ctx, 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+f.health+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return -1
	}
	defer func() { _ = resp.Body.Close() }()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			x, err := strconv.ParseFloat(v, 64)
			if err == nil {
				return x
			}
		}
	}
	return -1
}

func (f *fixture) heapMiB() float64 { return f.metric("go_memstats_heap_inuse_bytes") / (1 << 20) }

// liveHeapMiB is the heap the CA's last collection kept: half its next
// goal (GOGC=100).
func (f *fixture) liveHeapMiB() float64 { return f.metric("go_memstats_next_gc_bytes") / 2 / (1 << 20) }

// step starts agents until n run, waits until all hold the current
// bundle, then times two pushes of one new root: its publication (ca
// rotate-root: the bundle gains it) until every agent acknowledged it,
// and its activation (ca rotate-root --activate-now once the CA's next
// root is that root: it moves first) until every agent acknowledged
// that. The CA would activate the root itself only once every node of
// the cluster held it, and most nodes run no agent before the last step.
func (f *fixture) step(n int) {
	t := f.t
	if len(f.agents) > 0 {
		f.refreshBundle()
	}
	start := time.Now()
	from := len(f.agents)
	f.agents = append(f.agents, make([]*fleetAgent, n-from)...)
	parallel(t, n-from, connectWorkers, func(j int) error {
		i := from + j
		a, err := f.startAgent(i)
		f.agents[i] = a
		return err
	})
	f.waitAllCurrent(n, "agents connected with the current bundle", 10*time.Minute)
	connect := time.Since(start).Seconds()
	f.settleRoots(n)
	runtime.GC() // the fleet's garbage is this process's, not the CA's

	before, _ := f.agents[0].ca.Bundles.Bundle()
	caCPU, fleetCPU := cpuSeconds(t, f.ca.Process.Pid), cpuSeconds(t, os.Getpid())
	start = time.Now()
	f.rotateRoot(false)
	// The publication: the root that is new in the agents' bundles is
	// the one this request prepared (settleRoots left no next root).
	// It ends when every agent holds that root and the CA counted every
	// agent on its current bundle, or already activated the root (which
	// it does only once every agent acknowledged it).
	var root *x509.Certificate
	wait.Until(t, "every agent acknowledged the bundle with the new root", 5*time.Minute, 5*time.Millisecond, func(context.Context) (bool, string) {
		if root == nil {
			root = newRoot(f.agents[0], before)
			if root == nil {
				return false, "no agent holds a new root yet"
			}
		}
		holding, activated := f.holding(root)
		if holding < n {
			return false, fmt.Sprintf("%d/%d agents hold the new root", holding, n)
		}
		cur := f.metric("mayfly_ca_agents_with_current_bundle")
		return cur == float64(n) || activated > 0, fmt.Sprintf("CA: %.0f of %d acknowledged", cur, n)
	})
	push := time.Since(start).Seconds()
	caCPU, fleetCPU = cpuSeconds(t, f.ca.Process.Pid)-caCPU, cpuSeconds(t, os.Getpid())-fleetCPU
	if st := f.rootState(); !sameCert(st.Root.Next, root) {
		t.Fatalf("the root the agents received (serial %s) is not the CA's next root", root.SerialNumber.Text(16))
	}
	start = time.Now()
	f.rotateRoot(true) // activates the next root: the one just published
	wait.Until(t, "every agent acknowledged the bundle with the new root activated", 5*time.Minute, 5*time.Millisecond, func(context.Context) (bool, string) {
		if _, activated := f.holding(root); activated < n {
			return false, fmt.Sprintf("%d/%d agents hold the new root as the current one", activated, n)
		}
		cur := f.metric("mayfly_ca_agents_with_current_bundle")
		return cur == float64(n), fmt.Sprintf("CA: %.0f of %d acknowledged", cur, n)
	})
	activate := time.Since(start).Seconds()
	s := fleet.Step{
		Agents: n, ConnectSeconds: connect, PushSeconds: push, ActivateSeconds: activate, PushCACPUSeconds: caCPU, PushFleetCPUSeconds: fleetCPU,
		HeapMiB: f.heapMiB(), LiveHeapMiB: f.liveHeapMiB(), RSSMiB: rssMiB(t, f.ca.Process.Pid),
	}
	f.rep.Steps = append(f.rep.Steps, s)
	t.Logf("%d agents: connected in %.1fs, push until all acked %.2fs (CPU: CA %.2fs, agents %.2fs), activation until all acked %.2fs, CA heap %.0f MiB, RSS %.0f MiB", n, connect, push, caCPU, fleetCPU, activate, s.HeapMiB, s.RSSMiB)
}

// connectWorkers is how many agents start at once: each waits for its
// token, attestation and bundle stream, most of it on the API server and
// the CA.
const connectWorkers = 128

// rootState reads the CA's stored state.
func (f *fixture) rootState() *authority.State {
	snap, err := authority.NewSecretStore(f.kube, caNamespace, caSecret).Load(f.ctx)
	if err != nil {
		f.t.Fatalf("the CA's state: %v", err)
	}
	st, err := authority.Decode(snap.Data)
	if err != nil {
		f.t.Fatalf("the CA's state: %v", err)
	}
	return st
}

// settleRoots waits until no root rotation is pending and the CA holds
// no next root, so that the step's rotate-root prepares exactly one new
// root. A next root the CA's own plan prepared (its rotation point) is
// first activated (--activate-now), unmeasured, every agent holding it.
func (f *fixture) settleRoots(n int) {
	t := f.t
	wait.Until(t, "no root rotation pending and no next root", 5*time.Minute, 50*time.Millisecond, func(context.Context) (bool, string) {
		st := f.rootState()
		switch {
		case st.Root.Requested:
			return false, "a root rotation is pending"
		case st.Root.Next != nil:
			t.Logf("the CA prepared a next root of its own (serial %s): activating it before the step", st.Root.Next.Cert().SerialNumber.Text(16))
			f.rotateRoot(true)
			return false, "activating the CA's own next root"
		}
		return true, ""
	})
	f.waitAllCurrent(n, "agents with the current bundle", 5*time.Minute)
}

// holding counts the agents whose bundle holds root, and those whose
// bundle has it first (the CA activated it).
func (f *fixture) holding(root *x509.Certificate) (holding, activated int) {
	for _, a := range f.agents {
		certs, _ := a.ca.Bundles.Bundle()
		if i := slices.IndexFunc(certs, root.Equal); i >= 0 {
			holding++
			if i == 0 {
				activated++
			}
		}
	}
	return holding, activated
}

// newRoot is the certificate in a's bundle that before lacks, nil if none.
func newRoot(a *fleetAgent, before []*x509.Certificate) *x509.Certificate {
	certs, _ := a.ca.Bundles.Bundle()
	for _, c := range certs {
		if !slices.ContainsFunc(before, c.Equal) {
			return c
		}
	}
	return nil
}

func sameCert(s *authority.Slot, c *x509.Certificate) bool {
	return s != nil && s.Cert() != nil && s.Cert().Equal(c)
}

// refreshBundle reads the trust bundle new agents start with from the
// ConfigMap, as an agent's deployment does, once it holds the bundle the
// running agents hold (after a root activation, the CA's certificate no
// longer chains to the first bundle).
func (f *fixture) refreshBundle() {
	want, _ := f.agents[0].ca.Bundles.Bundle()
	wait.Within(f.t, "the trust bundle ConfigMap to hold the current bundle", 2*time.Minute, 50*time.Millisecond, func() bool {
		cm, err := f.kube.CoreV1().ConfigMaps(caNamespace).Get(f.ctx, bundle.ConfigMapName, metav1.GetOptions{})
		if err != nil {
			return false
		}
		got := parsePEM(cm.Data[bundle.ConfigMapKey])
		if len(got) != len(want) {
			return false
		}
		for _, w := range want {
			if !slices.ContainsFunc(got, w.Equal) {
				return false
			}
		}
		f.bundle = got
		return true
	})
}

func (f *fixture) waitAllCurrent(n int, what string, timeout time.Duration) {
	wait.Until(f.t, what, timeout, 20*time.Millisecond, func(context.Context) (bool, string) {
		conn, cur := f.metric("mayfly_ca_agents_connected"), f.metric("mayfly_ca_agents_with_current_bundle")
		return conn == float64(n) && cur == float64(n), fmt.Sprintf("%.0f connected, %.0f current of %d", conn, cur, n)
	})
}

// rotateRoot requests a root rotation as an operator does (ca
// rotate-root): the CA prepares and publishes a new root; with
// activateNow (--activate-now) it activates its next root at once.
func (f *fixture) rotateRoot(activateNow bool) {
	args := []string{"rotate-root", "--config", f.cfgPath}
	if activateNow {
		args = append(args, "--activate-now")
	}
	var out, errOut bytes.Buffer
	if code := caapp.Main(args, &out, &errOut); code != 0 {
		f.t.Fatalf("ca %s: exit %d: %s", strings.Join(args, " "), code, errOut.String())
	}
}

// startAgent attests the agent of node i with a token bound to its agent
// pod, and runs its CAClient (bundle stream included), Batcher and Manager.
func (f *fixture) startAgent(i int) (*fleetAgent, error) {
	node := fleet.NodeName(i)
	pod := agentPod(i) // as written to etcd: an agent knows its pod's name and UID (downward API)
	tr, err := f.kube.CoreV1().ServiceAccounts(caNamespace).CreateToken(f.ctx, agentSA, &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences:      []string{"mayfly-ca"},
		BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}, metav1.CreateOptions{})
	if err != nil {
		return nil, err
	}
	token := tr.Status.Token
	clock := rotate.RealClock{}
	ca, err := agent.NewCAClient(agent.CAConfig{
		Address: f.addr, TrustDomain: td, InitialBundle: f.bundle, NodeName: node,
		Credential: func(context.Context) (*issuerv1.AttestAgentRequest, error) {
			return &issuerv1.AttestAgentRequest{Credential: &issuerv1.AttestAgentRequest_ServiceAccountToken{ServiceAccountToken: token}}, nil
		},
		RenewalToken: func(context.Context) (string, error) { return token, nil },
		Clock:        clock, Policy: rotate.Policy{RenewFraction: 0.5},
	})
	if err != nil {
		return nil, err
	}
	a := &fleetAgent{node: node, ca: ca, batcher: &agent.Batcher{Signer: ca.Conn, Clock: clock}, pods: &agent.PodIndex{}}
	a.mgr = agent.NewManager(agent.ManagerConfig{Batcher: a.batcher, Bundle: ca.Bundles, TrustDomain: td, Clock: clock})
	ca.Store.OnChange(a.mgr.SetAgentSVID)
	for _, run := range []func(context.Context) error{ca.Start, a.batcher.Start, a.mgr.Start} {
		go func() { _ = run(f.ctx) }()
	}
	select {
	case <-ca.Ready():
	case <-time.After(5 * time.Minute):
		return nil, fmt.Errorf("agent of %s not ready after 5 minutes", node)
	}
	return a, nil
}

// renewalsPerToken is how many certificates one pod token serves in the
// steady state of the chart's CSI driver: the kubelet replaces an 8 h
// token at 80% of its life, and a 1 h certificate is renewed at half life,
// so a token serves 6.4 h / 30 min, about 13 certificates.
const renewalsPerToken = 13

// issuance obtains workload certificates through the agents' Managers,
// paced at the steady rate of 150,000 identities with 1h certificates
// renewed at half life (~86/s), and measures the CA's CPU over the window.
// Each pod obtains renewalsPerToken certificates (a certificate and its
// renewals, the hours between them compressed into the window); half of
// the pods carry a bound pod token of 8 h, the same for all of their
// certificates as in the steady state, reviewed by the CA.
func (f *fixture) issuance() {
	t := f.t
	agents := len(f.agents)
	var pods []*corev1.Pod // pods on nodes that run an agent
	for i, p := range f.pods {
		if i%f.sz.nodes < agents {
			pods = append(pods, p)
		}
	}
	total := min(len(pods), 300)
	if f.sz.out == "" {
		total = min(total, 40) // the smoke run of go test
	}
	pods = pods[:total]
	tokens := make([]agent.TokenSource, total)
	withToken := 0
	parallel(t, total, 16, func(j int) error {
		if j%2 != 0 {
			return nil
		}
		p := pods[j]
		tr, err := f.kube.CoreV1().ServiceAccounts(p.Namespace).CreateToken(f.ctx, p.Spec.ServiceAccountName, &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
			Audiences: []string{"mayfly-ca"}, ExpirationSeconds: new(int64(8 * 3600)),
			BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: p.Name, UID: p.UID},
		}}, metav1.CreateOptions{})
		if err != nil {
			return err
		}
		tokens[j] = agent.StaticToken(tr.Status.Token)
		return nil
	})
	for _, tok := range tokens {
		if tok != nil {
			withToken++
		}
	}
	reviewsBefore := f.apiserverTokenReviews()
	cpuBefore := cpuSeconds(t, f.ca.Process.Pid)
	start := time.Now()
	const rate = 86.0
	parallel(t, total, total, func(j int) error {
		p := pods[j]
		a := f.agents[indexOfNode(p.Spec.NodeName, f.sz.nodes)]
		key := p.Namespace + "/" + p.Spec.ServiceAccountName + "#" + p.Name
		release := a.pods.Add(key, string(p.UID), tokens[j])
		defer release()
		spec := agent.Spec{Key: key, TTL: time.Hour}
		spec.PodUIDs = func() []string { return a.pods.UIDs(key) }
		spec.PodToken = func(uid string) string { return a.pods.Token(key, uid) }
		for k := range renewalsPerToken {
			// Certificate k*total+j of the window, at the steady rate:
			// pacing of a benchmark, not a wait for a condition.
			if d := time.Until(start.Add(time.Duration(float64(k*total+j) / rate * float64(time.Second)))); d > 0 {
				time.Sleep(d)
			}
			if _, err := a.mgr.Obtain(f.ctx, spec); err != nil {
				return fmt.Errorf("pod %s/%s on %s: %w", p.Namespace, p.Name, a.node, err)
			}
			a.mgr.Remove(key)
		}
		return nil
	})
	elapsed := time.Since(start).Seconds()
	cpu := cpuSeconds(t, f.ca.Process.Pid) - cpuBefore
	reviews := f.apiserverTokenReviews() - reviewsBefore
	certs := renewalsPerToken * total
	f.rep.Issuance = &fleet.Issuance{
		Certificates: certs, Seconds: elapsed, PerSecond: float64(certs) / elapsed,
		CPUPercent:           100 * cpu / elapsed,
		CPUPercentAt86:       100 * cpu / float64(certs) * 86,
		CertificatesPerToken: renewalsPerToken,
		TokenReviewsPerCert:  reviews / float64(renewalsPerToken*withToken),
		RPCsPerRenewal:       f.renewalsAfterRollouts(),
	}
	i := f.rep.Issuance
	t.Logf("issuance: %d certificates in %.1fs, CA CPU %.1f%% of one core (%.1f%% at 86/s), %.3f TokenReviews per certificate with a token, %.2f requests per renewal after rollouts",
		i.Certificates, i.Seconds, i.CPUPercent, i.CPUPercentAt86, i.TokenReviewsPerCert, i.RPCsPerRenewal)
}

// renewalsAfterRollouts gives one agent's identity the pods of ten
// rollouts that are gone (their volumes never unpublished) and the live
// pod, and counts the items sent per renewal once the first renewal
// taught the agent which pods are gone.
func (f *fixture) renewalsAfterRollouts() float64 {
	t := f.t
	a := f.agents[0]
	var live *corev1.Pod
	for _, p := range f.pods {
		if p.Spec.NodeName == a.node {
			live = p
			break
		}
	}
	if live == nil {
		t.Fatalf("no pod on %s", a.node)
	}
	clock := rotate.NewFakeClock(time.Now())
	x := &agent.PodIndex{Now: clock.Now}
	key := live.Namespace + "/" + live.Spec.ServiceAccountName + "#rollouts"
	x.Add(key, string(live.UID), nil)
	for r := range 10 {
		x.Add(key, fmt.Sprintf("00000000-dead-4000-8000-%012d", r), nil)
	}
	clock.Advance(agent.PodForgetGrace)
	var sent atomic.Int64
	counting := &agent.Batcher{Signer: countingSigner{next: a.ca.Conn, items: &sent}, Clock: rotate.RealClock{}}
	go func() { _ = counting.Start(f.ctx) }()
	var logs bytes.Buffer
	mgr := agent.NewManager(agent.ManagerConfig{Batcher: counting, Bundle: a.ca.Bundles, TrustDomain: td, Clock: rotate.RealClock{},
		Logger: slog.New(slog.NewTextHandler(&lockedWriter{w: &logs}, nil))})
	spec := agent.Spec{Key: key, TTL: time.Hour}
	spec.PodUIDs = func() []string { return x.UIDs(key) }
	spec.PodGone = func(uid string) { x.Forget(key, uid) }
	spec.PodWorked = func(uid string) { x.Worked(key, uid) }
	obtain := func() {
		if _, err := mgr.Obtain(f.ctx, spec); err != nil {
			t.Fatalf("renewal after rollouts: %v\n%s", err, logs.String())
		}
		mgr.Remove(key)
	}
	obtain() // learns which pods are gone
	sent.Store(0)
	const renewals = 10
	for range renewals {
		obtain()
	}
	return float64(sent.Load()) / renewals
}

// countingSigner counts the items sent to the CA.
type countingSigner struct {
	next  agent.Signer
	items *atomic.Int64
}

func (c countingSigner) SignWorkloads(ctx context.Context, reqs []*issuerv1.WorkloadRequest) ([]*issuerv1.WorkloadResult, error) {
	c.items.Add(int64(len(reqs)))
	return c.next.SignWorkloads(ctx, reqs)
}

// storm restarts the CA: every agent reconnects (a full TLS handshake
// each, the new process has no session keys) and re-opens its bundle
// stream. It times until all are back with the current bundle, and
// samples /readyz and the CA's RSS meanwhile.
func (f *fixture) storm() {
	t := f.t
	n := len(f.agents)
	_ = f.ca.Process.Signal(syscall.SIGTERM)
	select {
	case <-f.caExit:
	case <-time.After(time.Minute):
		t.Fatal("the CA did not stop within a minute of SIGTERM")
	}
	bin := f.ca.Path
	start := time.Now()
	f.ca, f.caExit = f.runCA(bin)
	// The RSS is sampled from the new process's start, so that the peak
	// includes its pod list; /readyz only once it was first ready.
	storm := &fleet.Storm{Agents: n}
	pid := f.ca.Process.Pid
	var wasReady atomic.Bool
	done := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			storm.PeakRSSMiB = max(storm.PeakRSSMiB, rssMiB(t, pid))
			if wasReady.Load() && f.readyz() != http.StatusOK {
				storm.NotReadySamples++
			}
			select {
			case <-done:
				return
			case <-time.After(50 * time.Millisecond): // sampling interval
			}
		}
	}()
	stop := sync.OnceFunc(func() { close(done); <-sampled })
	t.Cleanup(stop) // a failed wait below still stops the sampling
	f.waitReady("the restarted CA to be ready", 10*time.Minute)
	wasReady.Store(true)
	// At least n: an agent's stream from before a reconnect may linger
	// on the CA until its connection is found gone; the surplus is
	// reported.
	var extra atomic.Int64 // the condition runs on wait's goroutine
	wait.Until(t, "every agent back after the CA restarted", 10*time.Minute, 20*time.Millisecond, func(context.Context) (bool, string) {
		conn, cur := f.metric("mayfly_ca_agents_connected"), f.metric("mayfly_ca_agents_with_current_bundle")
		extra.Store(int64(conn) - int64(n))
		return conn >= float64(n) && cur >= float64(n), fmt.Sprintf("%.0f connected, %.0f current of %d", conn, cur, n)
	})
	storm.Seconds = time.Since(start).Seconds()
	storm.ExtraStreams = int(extra.Load())
	stop()
	t.Logf("reconnect storm of %d agents: %.1fs, /readyz failed %d samples, peak RSS %.0f MiB, %d streams more than agents",
		n, storm.Seconds, storm.NotReadySamples, storm.PeakRSSMiB, storm.ExtraStreams)
	f.rep.Storm = storm
}

// apiserverTokenReviews reads the API server's count of TokenReview
// creations.
func (f *fixture) apiserverTokenReviews() float64 {
	raw, err := f.kube.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(f.ctx)
	if err != nil {
		f.t.Fatalf("API server metrics: %v", err)
	}
	var sum float64
	for line := range strings.SplitSeq(string(raw), "\n") {
		if !strings.HasPrefix(line, "apiserver_request_total{") || !strings.Contains(line, `resource="tokenreviews"`) || !strings.Contains(line, `verb="POST"`) && !strings.Contains(line, `verb="CREATE"`) {
			continue
		}
		if i := strings.LastIndexByte(line, ' '); i > 0 {
			v, err := strconv.ParseFloat(line[i+1:], 64)
			if err == nil {
				sum += v
			}
		}
	}
	return sum
}

func indexOfNode(name string, nodes int) int {
	for i := range nodes {
		if fleet.NodeName(i) == name {
			return i
		}
	}
	return -1
}

func writeKubeconfig(t *testing.T, cfg *rest.Config, path string) {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["envtest"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData, Token: cfg.BearerToken}
	kc.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "admin"}
	kc.CurrentContext = "envtest"
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
}

func parsePEM(s string) []*x509.Certificate {
	var out []*x509.Certificate
	rest := []byte(s)
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return out
		}
		if c, err := x509.ParseCertificate(b.Bytes); err == nil {
			out = append(out, c)
		}
	}
}

// rssMiB reads VmRSS of pid.
func rssMiB(t *testing.T, pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			if err != nil {
				t.Fatalf("VmRSS %q: %v", v, err)
			}
			return kb / 1024
		}
	}
	return 0
}

// cpuSeconds reads the user and system CPU time of pid.
func cpuSeconds(t *testing.T, pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	utime, _ := strconv.ParseFloat(fields[11], 64)
	stime, _ := strconv.ParseFloat(fields[12], 64)
	return (utime + stime) / 100 // USER_HZ
}

type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.w.Len() > 1<<20 {
		l.w.Reset()
	}
	return l.w.Write(p)
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}
