package agentapp_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/mayfly-pki/mayfly/internal/app/agentapp"
	"github.com/mayfly-pki/mayfly/internal/app/caapp"
	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/controller/bundle"
	"github.com/mayfly-pki/mayfly/internal/test/cluster"
	"github.com/mayfly-pki/mayfly/internal/test/logbuf"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
	"github.com/mayfly-pki/mayfly/pkg/atomicfile"
)

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

// kubeStack is a Kubernetes-mode CA and one agent on node-a (with the CSI
// driver and a fake /proc) against envtest, run in this process, with the
// namespaces mayfly-system and app and the agent's pod.
type kubeStack struct {
	kube      kubernetes.Interface
	dir       string
	socket    string // the Workload API
	csiSocket string
	procRoot  string // the agent's /proc
	store     *authority.SecretStore
	ctx       context.Context
}

// startKubernetesStack starts the stack with caYAML added to the CA's
// configuration, once the agent serves.
func startKubernetesStack(t *testing.T, caYAML string) *kubeStack {
	t.Helper()
	c := cluster.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	kube := c.Client
	for _, ns := range []string{"mayfly-system", "app"} {
		must[*corev1.Namespace](t)(kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}))
	}
	must[*corev1.ServiceAccount](t)(kube.CoreV1().ServiceAccounts("mayfly-system").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "mayfly-agent"}}, metav1.CreateOptions{}))
	agentPod := cluster.CreatePod(t, kube, "mayfly-system", "mayfly-agent-x", "mayfly-agent", "node-a")

	dir := t.TempDir()
	s := &kubeStack{kube: kube, dir: dir, ctx: ctx, socket: filepath.Join(dir, "run", "agent.sock"), csiSocket: filepath.Join(dir, "csi", "csi.sock"),
		procRoot: filepath.Join(dir, "proc"), store: authority.NewSecretStore(kube, "mayfly-system", "mayfly-ca")}
	var wg sync.WaitGroup
	caLogs, agLogs := &logbuf.Buffer{}, &logbuf.Buffer{}
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		if t.Failed() {
			t.Logf("CA logs:\n%s\nagent logs:\n%s", caLogs, agLogs)
		}
	})

	caCfg := must[*caapp.Config](t)(caapp.Parse([]byte("trustDomain: example.org\nhealthAddress: \"off\"\nkubernetes: {namespace: mayfly-system, leaderElection: false}\n" + caYAML)))
	lis := must[net.Listener](t)(net.Listen("tcp", "127.0.0.1:0"))
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := caapp.Run(ctx, caCfg, caapp.Options{Listener: lis, RestConfig: c.Config, Logger: slog.New(slog.NewJSONHandler(caLogs, nil))}); err != nil {
			t.Errorf("CA: %v", err)
		}
	}()
	var bundlePEM string
	wait.For(t, "trust bundle ConfigMap", func() bool {
		cm, err := kube.CoreV1().ConfigMaps("mayfly-system").Get(ctx, bundle.ConfigMapName, metav1.GetOptions{})
		if err != nil {
			return false
		}
		bundlePEM = cm.Data[bundle.ConfigMapKey]
		return bundlePEM != ""
	})
	bundleFile := filepath.Join(dir, "ca.crt")
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(bundleFile, []byte(bundlePEM), 0o644); err != nil {
		t.Fatal(err)
	}
	exp := int64(3600)
	tr := must[*authenticationv1.TokenRequest](t)(kube.CoreV1().ServiceAccounts("mayfly-system").CreateToken(ctx, "mayfly-agent", &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences: []string{"mayfly-ca"}, ExpirationSeconds: &exp,
		BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: agentPod.Name, UID: agentPod.UID},
	}}, metav1.CreateOptions{}))
	if err := os.WriteFile(tokenFile, []byte(tr.Status.Token), 0o600); err != nil {
		t.Fatal(err)
	}

	agCfg := must[*agentapp.Config](t)(agentapp.Parse([]byte(fmt.Sprintf(`
trustDomain: example.org
server: {address: %s, trustBundleFile: %s}
nodeName: node-a
socketPath: %s
dataDir: %s
healthAddress: "off"
kubernetes: {tokenFile: %s, csi: {socketPath: %s, stateDir: %s, kubeletDir: %s}}
`, lis.Addr(), bundleFile, s.socket, filepath.Join(dir, "agent"), tokenFile, s.csiSocket, filepath.Join(dir, "csi", "volumes"), dir))))
	ready := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := agentapp.Run(ctx, agCfg, agentapp.Options{RestConfig: c.Config, ProcRoot: s.procRoot, Logger: slog.New(slog.NewJSONHandler(agLogs, nil)), Ready: func(string) { close(ready) }}); err != nil {
			t.Errorf("agent: %v", err)
		}
	}()
	<-ready
	return s
}

// pod creates the ServiceAccount sa in namespace app and a pod of it on
// node-a named name; running marks it Running (with status when set).
func (s *kubeStack) pod(t *testing.T, sa, name string, status *corev1.PodStatus) *corev1.Pod {
	t.Helper()
	must[*corev1.ServiceAccount](t)(s.kube.CoreV1().ServiceAccounts("app").Create(s.ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}))
	p := cluster.CreatePod(t, s.kube, "app", name, sa, "node-a")
	if status == nil {
		return p
	}
	p.Status = *status
	return must[*corev1.Pod](t)(s.kube.CoreV1().Pods("app").UpdateStatus(s.ctx, p, metav1.UpdateOptions{}))
}

// publish mounts a CSI inline volume of pod p (volume ID id, with the
// volume attributes attrs) as the kubelet would publish it, and returns its
// target directory.
func (s *kubeStack) publish(t *testing.T, conn *grpc.ClientConn, p *corev1.Pod, id string, attrs ...map[string]string) string {
	t.Helper()
	target := filepath.Join(s.dir, "pods", string(p.UID), "volumes", "kubernetes.io~csi", "tls", "mount") // the kubelet's layout under kubeletDir
	if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(s.ctx, time.Minute)
	defer cancel()
	vctx := map[string]string{
		"csi.storage.k8s.io/ephemeral": "true", "csi.storage.k8s.io/pod.name": p.Name, "csi.storage.k8s.io/pod.namespace": p.Namespace,
		"csi.storage.k8s.io/pod.uid": string(p.UID), "csi.storage.k8s.io/serviceAccount.name": p.Spec.ServiceAccountName,
	}
	for _, a := range attrs {
		maps.Copy(vctx, a)
	}
	_, err := csipb.NewNodeClient(conn).NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{
		VolumeId: id, TargetPath: target,
		VolumeCapability: &csipb.VolumeCapability{AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{}},
			AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}},
		VolumeContext: vctx,
	})
	if err != nil {
		t.Fatalf("NodePublishVolume of %s: %v", id, err)
	}
	return target
}

// csiConn is a client of the stack's CSI socket.
func (s *kubeStack) csiConn(t *testing.T) *grpc.ClientConn {
	t.Helper()
	conn := must[*grpc.ClientConn](t)(grpc.NewClient("unix://"+s.csiSocket, grpc.WithTransportCredentials(insecure.NewCredentials())))
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestKubernetesPodGetsItsIdentity runs a CA and an agent in Kubernetes
// mode against envtest. The test process plays a container of a pod: a
// fake /proc gives our own PID the pod's cgroup, the pod object lists the
// container, and go-spiffe's client gets spiffe://example.org/ns/app/sa/web,
// then a rotation on its open stream; the same pod's CSI inline volume gets
// the identity as files.
func TestKubernetesPodGetsItsIdentity(t *testing.T) {
	s := startKubernetesStack(t, "workloads: {minTTL: 10s, defaultTTL: 20s, maxTTL: 1h}\n")
	ctx := s.ctx

	// The workload pod, and a fake /proc that puts this process in it.
	web := s.pod(t, "web", "web-1", nil)
	containerID := strings.Repeat("ab", 32)
	pidDir := filepath.Join(s.procRoot, fmt.Sprint(os.Getpid()))
	if err := os.MkdirAll(pidDir, 0o755); err != nil {
		t.Fatal(err)
	}
	cgroup := fmt.Sprintf("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod%s.slice/cri-containerd-%s.scope\n",
		strings.ReplaceAll(string(web.UID), "-", "_"), containerID)
	if err := os.WriteFile(filepath.Join(pidDir, "cgroup"), []byte(cgroup), 0o644); err != nil {
		t.Fatal(err)
	}

	// The container starts: the kubelet would report its ID in the status.
	web.Status = corev1.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{{Name: cluster.PodContainer, ContainerID: "containerd://" + containerID, Ready: true}}}
	started := time.Now()
	must[*corev1.Pod](t)(s.kube.CoreV1().Pods("app").UpdateStatus(ctx, web, metav1.UpdateOptions{}))

	client := must[*workloadapi.Client](t)(workloadapi.New(ctx, workloadapi.WithAddr("unix://"+s.socket)))
	defer client.Close()
	// The stream is the pod's first call: its identity is created on that
	// first use, and the open stream must get every rotation pushed.
	updates := make(chan *workloadapi.X509Context, 16)
	wctx, wcancel := context.WithTimeout(ctx, 45*time.Second)
	defer wcancel()
	go func() { _ = client.WatchX509Context(wctx, watcher{updates}) }()
	seen := map[string]bool{}
	for len(seen) < 2 {
		select {
		case u := <-updates:
			svid := u.DefaultSVID()
			if len(seen) == 0 {
				t.Logf("pod status updated -> SVID served in %s", time.Since(started).Round(time.Millisecond))
			}
			if got := svid.ID.String(); got != "spiffe://example.org/ns/app/sa/web" {
				t.Fatalf("SVID ID %s, want spiffe://example.org/ns/app/sa/web", got)
			}
			seen[svid.Certificates[0].SerialNumber.String()] = true
		case <-wctx.Done():
			t.Fatalf("the stream pushed %d certificates in 45s, want the first and a rotation", len(seen))
		}
	}

	// The same pod mounts a CSI inline volume: the agent writes its SVID
	// as files, through the same identity path.
	conn := s.csiConn(t)
	target := s.publish(t, conn, web, "csi-web-1")
	files, err := atomicfile.ReadAtomic(target, "tls.crt", "tls.key")
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(files[0], files[1])
	if err != nil {
		t.Fatalf("tls.crt and tls.key do not match: %v", err)
	}
	if got := pair.Leaf.URIs[0].String(); got != "spiffe://example.org/ns/app/sa/web" {
		t.Fatalf("volume certificate for %s", got)
	}
	if _, err := csipb.NewNodeClient(conn).NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: "csi-web-1", TargetPath: target}); err != nil {
		t.Fatalf("NodeUnpublishVolume: %v", err)
	}
	if _, err := os.Stat(target); !os.IsNotExist(err) {
		t.Fatalf("target still there after unpublish: %v", err)
	}
}

type watcher struct {
	updates chan<- *workloadapi.X509Context
}

func (w watcher) OnX509ContextUpdate(c *workloadapi.X509Context) { w.updates <- c }

func (watcher) OnX509ContextWatchError(error) {}
