package agentapp_test

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mayfly-pki/mayfly/internal/app/agentapp"
	"github.com/mayfly-pki/mayfly/internal/app/caapp"
	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/controller/bundle"
	"github.com/mayfly-pki/mayfly/internal/fileconsumer"
	"github.com/mayfly-pki/mayfly/internal/test/cluster"
	"github.com/mayfly-pki/mayfly/internal/test/logbuf"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
)

// TestKubernetesRootRotationCSIFileConsumers: two pods of two
// ServiceAccounts each mount a CSI inline volume (files mode); a plain
// crypto/tls server and client read tls.crt, tls.key and ca.crt from the
// two volumes for every handshake, every 500ms, through a root rotation
// requested as `ca rotate-root` does in Kubernetes mode (on the CA
// Secret). No handshake may fail: every volume's ca.crt holds the next
// root before any leaf under it is written.
func TestKubernetesRootRotationCSIFileConsumers(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test with a real root rotation (about 40s); skipped with -short")
	}
	c := cluster.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	kube := c.Client
	for _, ns := range []string{"mayfly-system", "app"} {
		must[*corev1.Namespace](t)(kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}))
	}
	must[*corev1.ServiceAccount](t)(kube.CoreV1().ServiceAccounts("mayfly-system").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "mayfly-agent"}}, metav1.CreateOptions{}))
	agentPod := must[*corev1.Pod](t)(kube.CoreV1().Pods("mayfly-system").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "mayfly-agent-x"},
		Spec:       corev1.PodSpec{ServiceAccountName: "mayfly-agent", NodeName: "node-a", Containers: []corev1.Container{{Name: "agent", Image: "mayfly/agent"}}},
	}, metav1.CreateOptions{}))
	pods := map[string]*corev1.Pod{}
	for _, sa := range []string{"server", "client"} {
		must[*corev1.ServiceAccount](t)(kube.CoreV1().ServiceAccounts("app").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}))
		p := must[*corev1.Pod](t)(kube.CoreV1().Pods("app").Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: sa + "-1"},
			Spec:       corev1.PodSpec{ServiceAccountName: sa, NodeName: "node-a", Containers: []corev1.Container{{Name: sa, Image: sa}}},
		}, metav1.CreateOptions{}))
		p.Status = corev1.PodStatus{Phase: corev1.PodRunning}
		pods[sa] = must[*corev1.Pod](t)(kube.CoreV1().Pods("app").UpdateStatus(ctx, p, metav1.UpdateOptions{}))
	}

	dir := t.TempDir()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	caLogs, agLogs := &logbuf.Buffer{}, &logbuf.Buffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("CA logs:\n%s\nagent logs:\n%s", caLogs, agLogs)
		}
	})

	caCfg := must[*caapp.Config](t)(caapp.Parse([]byte("trustDomain: example.org\nhealthAddress: \"off\"\nkubernetes: {namespace: mayfly-system, leaderElection: false}\nworkloads: {minTTL: 10s, defaultTTL: 20s, maxTTL: 1h}\nrotation: {kubernetesPropagationDelay: 0s}\n")))
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

	csiSocket := filepath.Join(dir, "csi", "csi.sock")
	agCfg := must[*agentapp.Config](t)(agentapp.Parse([]byte(fmt.Sprintf(`
trustDomain: example.org
server: {address: %s, trustBundleFile: %s}
nodeName: node-a
socketPath: %s
dataDir: %s
healthAddress: "off"
kubernetes: {tokenFile: %s, csi: {socketPath: %s, stateDir: %s, kubeletDir: %s}}
`, lis.Addr(), bundleFile, filepath.Join(dir, "run", "agent.sock"), filepath.Join(dir, "agent"), tokenFile, csiSocket, filepath.Join(dir, "csi", "volumes"), dir))))
	ready := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := agentapp.Run(ctx, agCfg, agentapp.Options{RestConfig: c.Config, Logger: slog.New(slog.NewJSONHandler(agLogs, nil)), Ready: func(string) { close(ready) }}); err != nil {
			t.Errorf("agent: %v", err)
		}
	}()
	<-ready

	// Each pod mounts a CSI inline volume, as the kubelet would publish it.
	conn := must[*grpc.ClientConn](t)(grpc.NewClient("unix://"+csiSocket, grpc.WithTransportCredentials(insecure.NewCredentials())))
	defer conn.Close()
	targets := map[string]string{}
	for sa, p := range pods {
		target := filepath.Join(dir, "pods", string(p.UID), "volumes", "kubernetes.io~csi", "tls", "mount")
		if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
			t.Fatal(err)
		}
		pctx, pcancel := context.WithTimeout(ctx, time.Minute)
		_, err := csipb.NewNodeClient(conn).NodePublishVolume(pctx, &csipb.NodePublishVolumeRequest{
			VolumeId: "csi-" + sa, TargetPath: target,
			VolumeCapability: &csipb.VolumeCapability{AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{}},
				AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}},
			VolumeContext: map[string]string{
				"csi.storage.k8s.io/ephemeral": "true", "csi.storage.k8s.io/pod.name": p.Name, "csi.storage.k8s.io/pod.namespace": "app",
				"csi.storage.k8s.io/pod.uid": string(p.UID), "csi.storage.k8s.io/serviceAccount.name": sa,
			},
		})
		pcancel()
		if err != nil {
			t.Fatalf("NodePublishVolume for %s: %v", sa, err)
		}
		targets[sa] = target
	}
	files, err := fileconsumer.Listen(targets["server"], targets["client"])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { files.Close() })
	if err := files.Handshake(); err != nil {
		t.Fatalf("file consumers before the rotation: %v", err)
	}
	oldRoots := readDir(t, targets["server"]).Roots
	if len(oldRoots) != 1 {
		t.Fatalf("ca.crt holds %d roots before the rotation, want 1", len(oldRoots))
	}
	oldRoot := oldRoots[0]

	began := time.Now()
	if err := authority.RequestRootRotation(ctx, authority.NewSecretStore(kube, "mayfly-system", "mayfly-ca")); err != nil {
		t.Fatalf("RequestRootRotation: %v", err)
	}
	var (
		handshakes, failed int
		trusted            time.Duration
		onNew              = map[string]time.Duration{}
	)
	wait.Until(t, "both volumes hold leaves under the new root", 2*time.Minute, 500*time.Millisecond, func(context.Context) (bool, string) {
		handshakes++
		if err := files.Handshake(); err != nil {
			failed++
			t.Errorf("handshake %d failed during the root rotation: %v", handshakes, err)
		}
		now := map[string]*fileconsumer.Files{}
		for sa, target := range targets {
			now[sa] = readDir(t, target)
		}
		for sa, f := range now {
			top := f.Chain[len(f.Chain)-1]
			if top.CheckSignatureFrom(oldRoot) == nil {
				continue
			}
			for other, o := range now {
				if !slices.ContainsFunc(o.Roots, oldRoot.Equal) {
					t.Fatalf("%s's ca.crt dropped the old root while leaves under it are valid", other)
				}
				if !slices.ContainsFunc(o.Roots, func(r *x509.Certificate) bool { return top.CheckSignatureFrom(r) == nil }) {
					t.Fatalf("%s's volume holds a leaf under a root that %s's ca.crt does not hold", sa, other)
				}
			}
			if _, ok := onNew[sa]; !ok {
				onNew[sa] = time.Since(began)
			}
		}
		if trusted == 0 && len(now["server"].Roots) == 2 && len(now["client"].Roots) == 2 {
			trusted = time.Since(began)
			if len(onNew) != 0 {
				t.Fatal("a leaf under the next root was written before every ca.crt held it")
			}
		}
		return len(onNew) == 2, fmt.Sprintf("every ca.crt holds the next root: %v; volumes on it: %d", trusted != 0, len(onNew))
	})
	if trusted == 0 {
		t.Fatal("the leaves moved to a new root without every ca.crt holding both first")
	}
	t.Logf("root rotation, CSI file consumers: every ca.crt held the next root %v after the request; leaves under it after %v (server) and %v (client); %d handshakes, %d failed",
		trusted.Round(100*time.Millisecond), onNew["server"].Round(100*time.Millisecond), onNew["client"].Round(100*time.Millisecond), handshakes, failed)
}
