package e2enode

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/mayfly-pki/mayfly/internal/app/caapp"
	"github.com/mayfly-pki/mayfly/internal/demo"
	"github.com/mayfly-pki/mayfly/internal/fileconsumer"
)

// e2eValues are the values the e2e renders the chart with for the phases
// after the plain deploy/k8s install (docs/install.md, "render your own
// tree"): the images it built, WorkloadCertificates in e2e-wc, one-minute
// leaves so that rotations take seconds, a 10 s propagation delay before a
// new root activates, and the API's minimum CSI token life (600 s) so that
// a volume outlives its first token within the run.
var e2eValues = []string{
	"namespace.create=true", "trustDomain=" + trustDomain, "allowPlaceholderTrustDomain=true",
	"image.tag=" + imageTag, "image.pullPolicy=Never",
	"workloadCertificates.namespaces={e2e-wc}",
	"ca.ttl.workloadDefault=1m", "ca.extraConfig.workloads.minTTL=30s",
	"agent.extraConfig.workloads.ttl=1m",
	"ca.extraConfig.rotation.kubernetesPropagationDelay=10s",
	"delivery.csiTokenExpirationSeconds=600",
}

// csiTokenLife is delivery.csiTokenExpirationSeconds above.
const csiTokenLife = 600 * time.Second

// reconfigure renders the chart with e2eValues, applies it over the
// deploy/k8s install and waits for the CA and agent rollouts.
func (e *env) reconfigure(t *testing.T, ctx context.Context, helm string) {
	t.Helper()
	args := []string{"template", "mayfly", filepath.Join(e.repo, "deploy", "helm", "mayfly"), "--namespace", "mayfly-system"}
	for _, v := range e2eValues {
		args = append(args, "--set", v)
	}
	out, err := exec.CommandContext(ctx, helm, args...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("helm template: %v: %s", err, ee.Stderr)
		}
		t.Fatal(err)
	}
	// The namespaces WorkloadCertificates are enabled in exist first (the
	// chart's Roles live there).
	e.namespaceWithSA(t, ctx, "e2e-wc", "web")
	e.apply(t, ctx, out)
	e.waitRollout(t, ctx)
}

// waitRollout waits until the CA Deployment and the agent DaemonSet run
// their current template only, all Ready.
func (e *env) waitRollout(t *testing.T, ctx context.Context) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	var state string
	err := waitFor(ctx, "CA and agent rollouts", func() bool {
		dep, err := e.cs.AppsV1().Deployments("mayfly-system").Get(ctx, "mayfly-ca", metav1.GetOptions{})
		if err != nil {
			return false
		}
		ds, err := e.cs.AppsV1().DaemonSets("mayfly-system").Get(ctx, "mayfly-agent", metav1.GetOptions{})
		if err != nil {
			return false
		}
		st, dst := dep.Status, ds.Status
		state = fmt.Sprintf("CA %d updated %d ready of %d; agent %d updated %d ready", st.UpdatedReplicas, st.ReadyReplicas, st.Replicas, dst.UpdatedNumberScheduled, dst.NumberReady)
		return st.ObservedGeneration == dep.Generation && st.UpdatedReplicas == 2 && st.Replicas == 2 && st.ReadyReplicas == 2 &&
			dst.ObservedGeneration == ds.Generation && dst.UpdatedNumberScheduled == 1 && dst.NumberReady == 1 && dst.NumberAvailable == 1
	})
	if err != nil {
		e.dumpPods(t, ctx, "mayfly-system")
		t.Fatalf("%v: %s", err, state)
	}
}

// spiffeID is the identity of ServiceAccount sa in ns.
func spiffeID(ns, sa string) string { return "spiffe://" + trustDomain + "/ns/" + ns + "/sa/" + sa }

const demoImage = "ghcr.io/mayfly-pki/mayfly-demo:" + imageTag

// demoPod is a pod of the demo image running args under ServiceAccount sa,
// with the volume mounted at mount.
func demoPod(ns, name, sa string, args []string, vol corev1.Volume, mount string, env ...corev1.EnvVar) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{
			ServiceAccountName:            sa,
			TerminationGracePeriodSeconds: ptr(int64(5)),
			SecurityContext:               &corev1.PodSecurityContext{RunAsNonRoot: ptr(true), RunAsUser: ptr(int64(65532)), FSGroup: ptr(int64(65532))},
			Containers: []corev1.Container{{
				Name: "app", Image: demoImage, ImagePullPolicy: corev1.PullNever, Command: args, Env: env,
				VolumeMounts: []corev1.VolumeMount{{Name: vol.Name, MountPath: mount, ReadOnly: true}},
			}},
			Volumes: []corev1.Volume{vol},
		},
	}
}

func csiVolume(attrs map[string]string) corev1.Volume {
	return corev1.Volume{Name: "svid", VolumeSource: corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{
		Driver: "csi.mayfly.dev", ReadOnly: ptr(true), VolumeAttributes: attrs,
	}}}
}

// logs returns the whole log of the pod's container app.
func (e *env) logs(ctx context.Context, ns, name string) (string, error) {
	b, err := e.cs.CoreV1().Pods(ns).GetLogs(name, &corev1.PodLogOptions{Container: "app"}).DoRaw(ctx)
	return string(b), err
}

// countLines counts the lines of s containing sub.
func countLines(s, sub string) int {
	n := 0
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), sub) {
			n++
		}
	}
	return n
}

// chainOf reads a certificate directory's leaf chain and trust bundle.
func chainOf(dir string) (*fileconsumer.Files, error) { return fileconsumer.Read(dir) }

// leafWatch polls certificate directories every second and records every
// distinct leaf (serial) each held and the root each leaf chains to.
type leafWatch struct {
	mu     sync.Mutex
	serial map[string][]string  // dir -> serials in order seen
	root   map[string]string    // dir -> root fingerprint of the latest leaf
	before map[string]time.Time // dir -> NotBefore of the latest leaf
	ids    map[string]string    // dir -> SPIFFE ID of the latest leaf
	stop   chan struct{}
}

func watchLeaves(dirs ...string) *leafWatch {
	w := &leafWatch{serial: map[string][]string{}, root: map[string]string{}, before: map[string]time.Time{}, ids: map[string]string{}, stop: make(chan struct{})}
	go func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			for _, d := range dirs {
				f, err := chainOf(d)
				if err != nil {
					continue
				}
				s := f.Chain[0].SerialNumber.Text(16)
				w.mu.Lock()
				if l := w.serial[d]; len(l) == 0 || l[len(l)-1] != s {
					w.serial[d] = append(l, s)
				}
				w.root[d] = demo.RootOf(f.Chain, f.Roots)
				w.before[d] = f.Chain[0].NotBefore
				if len(f.Chain[0].URIs) == 1 {
					w.ids[d] = f.Chain[0].URIs[0].String()
				}
				w.mu.Unlock()
			}
			select {
			case <-w.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return w
}

func (w *leafWatch) get(dir string) (leaves int, root string, notBefore time.Time, id string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.serial[dir]), w.root[dir], w.before[dir], w.ids[dir]
}

// socketLeaves reads a demo-client log: the distinct serials of its own
// leaf and of the server's, and the latest root each is under.
func socketLeaves(log string) (mine, peer int, myRoot, peerRoot string) {
	ms, ps := map[string]bool{}, map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if _, rest, ok := strings.Cut(l, "handshake ok  peer "); ok {
			f := strings.Fields(rest) // <id> serial <s> left <n>s | me serial <s> left <n>s
			if len(f) >= 9 {
				ps[f[2]] = true
				ms[f[8]] = true
			}
		}
		if _, rest, ok := strings.Cut(l, "[socket/client] leaf now under root "); ok {
			myRoot = strings.Fields(rest)[0]
		}
		if _, rest, ok := strings.Cut(l, "[socket/server] leaf now under root "); ok {
			peerRoot = strings.Fields(rest)[0]
		}
	}
	return len(ms), len(ps), myRoot, peerRoot
}

// trustRoots returns the roots of the mayfly-trust-bundle ConfigMap.
func (e *env) trustRoots(ctx context.Context) ([]*x509.Certificate, error) {
	cm, err := e.cs.CoreV1().ConfigMaps("mayfly-system").Get(ctx, "mayfly-trust-bundle", metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	return parseCerts([]byte(cm.Data["ca.crt"]))
}

func parseCerts(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no certificate")
	}
	return out, nil
}

// verifyChain checks chain (leaf first) against roots and returns the
// leaf's SPIFFE ID.
func verifyChain(chain, roots []*x509.Certificate) (string, error) {
	pool, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return "", err
	}
	if len(chain[0].URIs) != 1 {
		return "", fmt.Errorf("leaf has %d URI SANs", len(chain[0].URIs))
	}
	return chain[0].URIs[0].String(), nil
}

// agentMetrics scrapes the agent pod's /metrics.
func (e *env) agentMetrics(ctx context.Context) (string, error) {
	pods, err := e.cs.CoreV1().Pods("mayfly-system").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=mayfly-agent"})
	if err != nil {
		return "", err
	}
	for _, p := range pods.Items {
		if p.Status.PodIP == "" || p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning {
			continue
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.Status.PodIP+":9444/metrics", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	return "", errors.New("no running agent pod")
}

// verdictTokenExpiry: a CSI files volume lives past the expiry of the pod
// token the kubelet first handed the driver (600 s) and keeps renewing: its
// leaf is issued after that expiry, with a token the kubelet renewed and
// passed on a republish.
func (e *env) verdictTokenExpiry(t *testing.T, ctx context.Context) {
	e.namespaceWithSA(t, ctx, "e2e-token", "web")
	created := time.Now()
	p, _ := e.runPod(t, ctx, workloadPod("e2e-token", "long-lived", "web", nil))
	dir := volumeDir(p, "svid")
	firstTokenExpiry := created.Add(csiTokenLife)
	ctx, cancel := context.WithDeadline(ctx, firstTokenExpiry.Add(4*time.Minute))
	defer cancel()
	var last string
	err := waitFor(ctx, "a leaf issued after the first pod token expired", func() bool {
		f, err := chainOf(dir)
		if err != nil {
			last = err.Error()
			return false
		}
		l := f.Chain[0]
		last = fmt.Sprintf("leaf %s valid %s..%s", l.URIs[0], l.NotBefore.Format(time.TimeOnly), l.NotAfter.Format(time.TimeOnly))
		// NotBefore is backdated by the CA's skew allowance (seconds):
		// 20 s past the expiry leaves no doubt.
		return l.NotBefore.After(firstTokenExpiry.Add(20*time.Second)) && time.Now().Before(l.NotAfter)
	})
	if err != nil {
		e.dumpPods(t, ctx, "mayfly-system")
		t.Fatalf("%v; last: %s", err, last)
	}
	t.Logf("volume %s after its first token's expiry (%s): %s", time.Since(created).Round(time.Second), firstTokenExpiry.Format(time.TimeOnly), last)
}

// verdictPodCertificate: a pod with a podCertificate projected volume
// (signer mayfly.dev/workload) and a ClusterTrustBundle projection starts
// with a credential bundle whose chain verifies against the projected
// roots and names the pod's namespace and ServiceAccount.
func (e *env) verdictPodCertificate(t *testing.T, ctx context.Context) {
	e.namespaceWithSA(t, ctx, "e2e-podcert", "web")
	pod := workloadPod("e2e-podcert", "web-podcert", "web", nil)
	pod.Spec.Volumes = []corev1.Volume{{Name: "svid", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
		{PodCertificate: &corev1.PodCertificateProjection{SignerName: "mayfly.dev/workload", KeyType: "ECDSAP256", MaxExpirationSeconds: ptr(int32(3600)), CredentialBundlePath: "credentialbundle.pem"}},
		{ClusterTrustBundle: &corev1.ClusterTrustBundleProjection{SignerName: ptr("mayfly.dev/workload"), LabelSelector: &metav1.LabelSelector{}, Path: "ca.crt"}},
	}}}}}
	p, took := e.runPod(t, ctx, pod)
	e.timing["pod Running, podCertificate"] = took
	t.Logf("FIGURE pod with a podCertificate + ClusterTrustBundle volume Running %s after creation", took.Round(10*time.Millisecond))
	dir := filepath.Join("/var/lib/kubelet/pods", string(p.UID), "volumes/kubernetes.io~projected/svid")
	bundle, err := os.ReadFile(filepath.Join(dir, "credentialbundle.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(bundle, []byte("PRIVATE KEY-----")) {
		t.Error("credentialbundle.pem holds no private key")
	}
	chain, err := parseCerts(bundle)
	if err != nil {
		t.Fatalf("credentialbundle.pem: %v", err)
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	roots, err := parseCerts(caPEM)
	if err != nil {
		t.Fatalf("ca.crt: %v", err)
	}
	id, err := verifyChain(chain, roots)
	if err != nil {
		t.Fatalf("the credential bundle's chain does not verify against the projected ClusterTrustBundle: %v", err)
	}
	if want := spiffeID("e2e-podcert", "web"); id != want {
		t.Errorf("podCertificate leaf is %s, want %s", id, want)
	}
}

// workloadCertificate returns a WorkloadCertificate object.
func workloadCertificate(ns, name, sa, secret string) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "mayfly.dev/v1alpha1", "kind": "WorkloadCertificate",
		"metadata": map[string]any{"namespace": ns, "name": name},
		"spec":     map[string]any{"serviceAccountName": sa, "secretName": secret, "ttl": "10m"},
	}}
	return u
}

// verdictWorkloadCertificate: in the opted-in namespace e2e-wc a
// WorkloadCertificate's Secret names the namespace and ServiceAccount, a
// pod serves mutual TLS from it mounted, and a client with a CSI volume of
// another namespace (e2e-files) completes a handshake with it; in e2e-other
// (not opted in) the WorkloadCertificate reports NamespaceNotEnabled and no
// Secret appears.
func (e *env) verdictWorkloadCertificate(t *testing.T, ctx context.Context, clientDir string) {
	if err := e.cl.Create(ctx, workloadCertificate("e2e-wc", "web", "web", "web-tls")); err != nil {
		t.Fatal(err)
	}
	e.namespaceWithSA(t, ctx, "e2e-other", "web")
	if err := e.cl.Create(ctx, workloadCertificate("e2e-other", "web", "web", "web-tls")); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var sec *corev1.Secret
	if err := waitFor(wctx, "Secret e2e-wc/web-tls", func() bool {
		var err error
		sec, err = e.cs.CoreV1().Secrets("e2e-wc").Get(wctx, "web-tls", metav1.GetOptions{})
		return err == nil && len(sec.Data["tls.crt"]) > 0
	}); err != nil {
		t.Fatal(err)
	}
	chain, err := parseCerts(sec.Data["tls.crt"])
	if err != nil {
		t.Fatal(err)
	}
	roots, err := parseCerts(sec.Data["ca.crt"])
	if err != nil {
		t.Fatal(err)
	}
	if id, err := verifyChain(chain, roots); err != nil || id != spiffeID("e2e-wc", "web") {
		t.Errorf("Secret leaf %s (%v), want %s", id, err, spiffeID("e2e-wc", "web"))
	}
	vol := corev1.Volume{Name: "tls", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "web-tls", DefaultMode: ptr(int32(0o440))}}}
	p, took := e.runPod(t, ctx, demoPod("e2e-wc", "web-secret", "web", []string{"demo-files", "--serve", ":8445", "--dir", "/tls", "--interval", "1s"}, vol, "/tls"))
	e.timing["pod Running, WorkloadCertificate Secret"] = took
	t.Logf("FIGURE pod with a WorkloadCertificate Secret volume Running %s after creation", took.Round(10*time.Millisecond))
	addr := p.Status.PodIP + ":8445"
	var dialErr error
	if err := waitFor(wctx, "a handshake with the Secret's server", func() bool {
		dialErr = fileconsumer.Dial(addr, clientDir)
		return dialErr == nil
	}); err != nil {
		t.Fatalf("%v: %v", err, dialErr)
	}
	log, _ := e.logs(ctx, "e2e-wc", "web-secret")
	if countLines(log, "handshake ok") == 0 {
		t.Errorf("the Secret's server logged no handshake: %s", log)
	}

	// Not opted in: NamespaceNotEnabled, no Secret.
	var reason string
	if err := waitFor(wctx, "e2e-other/web NamespaceNotEnabled", func() bool {
		u := &unstructured.Unstructured{}
		u.SetAPIVersion("mayfly.dev/v1alpha1")
		u.SetKind("WorkloadCertificate")
		if err := e.cl.Get(wctx, client.ObjectKey{Namespace: "e2e-other", Name: "web"}, u); err != nil {
			return false
		}
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		for _, c := range conds {
			if m, ok := c.(map[string]any); ok {
				if r, _ := m["reason"].(string); r != "" {
					reason = r
				}
			}
		}
		return reason == "NamespaceNotEnabled"
	}); err != nil {
		t.Errorf("%v (last reason %q)", err, reason)
	}
	if _, err := e.cs.CoreV1().Secrets("e2e-other").Get(ctx, "web-tls", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("Secret e2e-other/web-tls: %v, want NotFound", err)
	}
}

// mtls is the two pairs of pods doing mutual TLS every second: go-spiffe
// programs on the Workload API socket (demo-server, demo-client) and
// plain TLS programs on CSI files (demo-files --serve / --connect).
type mtls struct {
	ns                       string
	filesServer, filesClient string // volume directories
	watch                    *leafWatch
}

var mtlsPods = []string{"sock-server", "sock-client", "files-server", "files-client"}

// startMTLS starts the four pods and checks the go-spiffe fetch inside a
// pod (verdict: socket mode with go-spiffe's own client).
func (e *env) startMTLS(t *testing.T, ctx context.Context) *mtls {
	m := &mtls{ns: "e2e-mtls"}
	e.namespaceWithSA(t, ctx, m.ns, "server")
	if _, err := e.cs.CoreV1().ServiceAccounts(m.ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "client"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	sockEnv := corev1.EnvVar{Name: "SPIFFE_ENDPOINT_SOCKET", Value: "unix:///run/spiffe/agent.sock"}
	server, client := spiffeID(m.ns, "server"), spiffeID(m.ns, "client")
	ss, took := e.runPod(t, ctx, demoPod(m.ns, "sock-server", "server",
		[]string{"demo-server", "--listen", ":8444", "--id", server, "--client-id", client},
		csiVolume(map[string]string{"mode": "socket"}), "/run/spiffe", sockEnv))
	e.timing["pod Running, CSI socket (go-spiffe server)"] = took
	t.Logf("FIGURE go-spiffe server pod with a CSI socket volume Running %s after creation", took.Round(10*time.Millisecond))
	_, _ = e.runPod(t, ctx, demoPod(m.ns, "sock-client", "client",
		[]string{"demo-client", "--server", ss.Status.PodIP + ":8444", "--id", client, "--server-id", server, "--interval", "1s"},
		csiVolume(map[string]string{"mode": "socket"}), "/run/spiffe", sockEnv))
	fs, took := e.runPod(t, ctx, demoPod(m.ns, "files-server", "server",
		[]string{"demo-files", "--serve", ":8445", "--dir", "/var/run/mayfly", "--interval", "1s"}, csiVolume(nil), "/var/run/mayfly"))
	e.timing["pod Running, CSI files (demo-files server)"] = took
	fc, _ := e.runPod(t, ctx, demoPod(m.ns, "files-client", "client",
		[]string{"demo-files", "--connect", fs.Status.PodIP + ":8445", "--dir", "/var/run/mayfly", "--interval", "1s"}, csiVolume(nil), "/var/run/mayfly"))
	m.filesServer, m.filesClient = volumeDir(fs, "svid"), volumeDir(fc, "svid")
	m.watch = watchLeaves(m.filesServer, m.filesClient) // the caller stops it

	// go-spiffe inside the pods: the client fetched its SVID, a JWT-SVID,
	// and completed a handshake with the server, each authorizing the
	// other's ID from the namespace and ServiceAccount.
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var log string
	if err := waitFor(wctx, "the go-spiffe client's first handshake", func() bool {
		log, _ = e.logs(wctx, m.ns, "sock-client")
		return strings.Contains(log, "handshake ok  peer "+server)
	}); err != nil {
		e.dumpPods(t, ctx, m.ns)
		t.Fatalf("%v; client log:\n%s", err, log)
	}
	if !strings.Contains(log, "jwt-svid ok  sub "+client) {
		t.Errorf("the go-spiffe client fetched no JWT-SVID of %s:\n%s", client, log)
	}
	slog, _ := e.logs(ctx, m.ns, "sock-server")
	if !strings.Contains(slog, "as "+server) {
		t.Errorf("the go-spiffe server does not serve as %s:\n%s", server, slog)
	}
	if err := waitFor(wctx, "the files client's first handshake", func() bool {
		l, _ := e.logs(wctx, m.ns, "files-client")
		return strings.Contains(l, "handshake ok")
	}); err != nil {
		e.dumpPods(t, ctx, m.ns)
		t.Fatal(err)
	}
	for dir, want := range map[string]string{m.filesServer: server, m.filesClient: client} {
		if _, _, _, id := m.watch.get(dir); id != want {
			t.Errorf("files volume %s holds %s, want %s", dir, id, want)
		}
	}
	return m
}

// failures returns the failed handshakes the four programs logged, and
// the successful ones of the two clients.
func (e *env) failures(ctx context.Context, m *mtls) (failed, ok int, err error) {
	for _, name := range mtlsPods {
		log, err := e.logs(ctx, m.ns, name)
		if err != nil {
			return 0, 0, fmt.Errorf("logs of %s: %w", name, err)
		}
		failed += countLines(log, "FAILED")
		if strings.HasSuffix(name, "client") {
			ok += countLines(log, "handshake ok")
		}
	}
	return failed, ok, nil
}

// leaves returns the leaf counts and roots of the four programs.
func (e *env) leaves(ctx context.Context, m *mtls) (counts []int, roots []string, err error) {
	log, err := e.logs(ctx, m.ns, "sock-client")
	if err != nil {
		return nil, nil, err
	}
	mine, peer, myRoot, peerRoot := socketLeaves(log)
	fsN, fsRoot, _, _ := m.watch.get(m.filesServer)
	fcN, fcRoot, _, _ := m.watch.get(m.filesClient)
	return []int{peer, mine, fsN, fcN}, []string{peerRoot, myRoot, fsRoot, fcRoot}, nil
}

// verdictRotations: both pairs go through at least three leaf rotations
// each and one `ca rotate-root` (every leaf ends under the new root), with
// no failed handshake.
func (e *env) verdictRotations(t *testing.T, ctx context.Context, m *mtls, caConfig string) {
	start := time.Now()
	wctx, cancel := context.WithTimeout(ctx, 6*time.Minute)
	defer cancel()
	var counts []int
	var roots []string
	if err := waitFor(wctx, "three leaf rotations of each of the four programs", func() bool {
		var err error
		counts, roots, err = e.leaves(wctx, m)
		return err == nil && min(counts[0], counts[1], counts[2], counts[3]) >= 4
	}); err != nil {
		t.Fatalf("%v: leaves seen (socket server, socket client, files server, files client) %v", err, counts)
	}
	t.Logf("three rotations of every leaf after %s: leaves seen %v", time.Since(start).Round(time.Second), counts)

	old, err := e.trustRoots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(old) != 1 {
		t.Fatalf("trust bundle holds %d roots before the rotation, want 1", len(old))
	}
	oldFP := demo.Fingerprint(old[0])
	var out, errOut bytes.Buffer
	rotateAt := time.Now()
	if code := caapp.Main([]string{"rotate-root", "--config", caConfig}, &out, &errOut); code != 0 {
		t.Fatalf("ca rotate-root: exit %d: %s", code, errOut.String())
	}
	t.Logf("ca rotate-root: %s", strings.TrimSpace(out.String()))
	if err := waitFor(wctx, "every leaf under the new root", func() bool {
		var err error
		counts, roots, err = e.leaves(wctx, m)
		if err != nil {
			return false
		}
		for _, r := range roots {
			if r == oldFP || r == "" || r == "unknown" {
				return false
			}
		}
		return true
	}); err != nil {
		t.Fatalf("%v: roots of the leaves (socket server, socket client, files server, files client) %v, old root %s", err, roots, oldFP)
	}
	t.Logf("FIGURE every leaf under the new root %s after ca rotate-root (old %s, now %v)", time.Since(rotateAt).Round(time.Second), oldFP, roots)
	failed, ok, err := e.failures(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	if failed != 0 || ok < 60 {
		t.Errorf("%d failed handshakes, %d successful (want 0 failed, at least 60 ok)", failed, ok)
	}
	t.Logf("mTLS through rotations and ca rotate-root: %d handshakes ok, %d failed, leaves seen %v, %s", ok, failed, counts, time.Since(start).Round(time.Second))
}

// verdictDeletedPod: once a pod is deleted, the agent stops renewing its
// identity: the identity's series leaves the agent's metrics and does not
// come back for longer than a leaf's renewal interval.
func (e *env) verdictDeletedPod(t *testing.T, ctx context.Context) {
	e.namespaceWithSA(t, ctx, "e2e-del", "gone")
	id := spiffeID("e2e-del", "gone")
	p, _ := e.runPod(t, ctx, workloadPod("e2e-del", "gone", "gone", nil))
	wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	series := `spiffe_id="` + id + `"`
	if err := waitFor(wctx, "the agent's metrics list "+id, func() bool {
		m, err := e.agentMetrics(wctx)
		return err == nil && strings.Contains(m, series)
	}); err != nil {
		t.Fatal(err)
	}
	if err := e.cs.CoreV1().Pods("e2e-del").Delete(ctx, "gone", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(wctx, "pod e2e-del/gone gone", func() bool {
		_, err := e.cs.CoreV1().Pods("e2e-del").Get(wctx, "gone", metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	}); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(wctx, "the agent drops "+id, func() bool {
		m, err := e.agentMetrics(wctx)
		return err == nil && !strings.Contains(m, series)
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(volumeDir(p, "svid")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("volume of the deleted pod: %v, want it gone", err)
	}
	// Longer than a one-minute leaf's renewal interval: nothing renews it.
	quiet := time.Now().Add(75 * time.Second)
	for time.Now().Before(quiet) {
		if m, err := e.agentMetrics(ctx); err == nil && strings.Contains(m, series) {
			t.Fatalf("the agent renewed %s after its pod was deleted", id)
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(time.Second):
		}
	}
}

// verdictAgentRestart: the agent pod is deleted; the DaemonSet brings it
// back; the files volumes get new leaves from the new agent (resumed), the
// go-spiffe client a new SVID, and a new CSI pod starts.
func (e *env) verdictAgentRestart(t *testing.T, ctx context.Context, m *mtls) {
	pods, err := e.cs.CoreV1().Pods("mayfly-system").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=mayfly-agent"})
	if err != nil || len(pods.Items) != 1 {
		t.Fatalf("agent pods: %v (%d)", err, len(pods.Items))
	}
	log, _ := e.logs(ctx, m.ns, "sock-client")
	mineBefore, _, _, _ := socketLeaves(log)
	deleted := time.Now()
	if err := e.cs.CoreV1().Pods("mayfly-system").Delete(ctx, pods.Items[0].Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
	defer cancel()
	if err := waitFor(wctx, "a new agent pod Ready", func() bool {
		ps, err := e.cs.CoreV1().Pods("mayfly-system").List(wctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=mayfly-agent"})
		if err != nil {
			return false
		}
		for _, p := range ps.Items {
			if p.UID != pods.Items[0].UID && p.DeletionTimestamp == nil && podReady(&p) {
				return true
			}
		}
		return false
	}); err != nil {
		e.dumpPods(t, ctx, "mayfly-system")
		t.Fatal(err)
	}
	t.Logf("FIGURE agent pod back Ready %s after deletion", time.Since(deleted).Round(time.Second))
	if err := waitFor(wctx, "files volumes and the go-spiffe client renewed by the new agent", func() bool {
		_, _, a, _ := m.watch.get(m.filesServer)
		_, _, b, _ := m.watch.get(m.filesClient)
		log, _ := e.logs(wctx, m.ns, "sock-client")
		mine, _, _, _ := socketLeaves(log)
		// NotBefore is backdated by up to a minute's skew allowance.
		return a.After(deleted.Add(-30*time.Second)) && b.After(deleted.Add(-30*time.Second)) && mine > mineBefore
	}); err != nil {
		t.Fatal(err)
	}
	p, took := e.runPod(t, ctx, workloadPod("e2e-files", "after-agent-restart", "web", nil))
	if _, _, err := leafID(volumeDir(p, "svid")); err != nil {
		t.Errorf("a CSI pod after the agent's restart: %v", err)
	}
	t.Logf("a CSI pod after the agent's restart Running in %s", took.Round(10*time.Millisecond))
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}

// verdictCALeader: the CA pod holding the Lease is deleted; the other
// replica takes the Lease and issuance continues: a new CSI pod gets its
// files and the running volumes keep rotating.
func (e *env) verdictCALeader(t *testing.T, ctx context.Context, m *mtls) {
	lease, err := e.cs.CoordinationV1().Leases("mayfly-system").Get(ctx, "mayfly-ca", metav1.GetOptions{})
	if err != nil || lease.Spec.HolderIdentity == nil {
		t.Fatalf("Lease mayfly-ca: %v", err)
	}
	holder := *lease.Spec.HolderIdentity
	pods, err := e.cs.CoreV1().Pods("mayfly-system").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=mayfly-ca"})
	if err != nil {
		t.Fatal(err)
	}
	leader := ""
	for _, p := range pods.Items {
		if strings.HasPrefix(holder, p.Name) {
			leader = p.Name
		}
	}
	if leader == "" {
		t.Fatalf("no CA pod holds the Lease (holder %q)", holder)
	}
	deleted := time.Now()
	if err := e.cs.CoreV1().Pods("mayfly-system").Delete(ctx, leader, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
	defer cancel()
	if err := waitFor(wctx, "another CA replica holds the Lease", func() bool {
		l, err := e.cs.CoordinationV1().Leases("mayfly-system").Get(wctx, "mayfly-ca", metav1.GetOptions{})
		return err == nil && l.Spec.HolderIdentity != nil && !strings.HasPrefix(*l.Spec.HolderIdentity, leader)
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("FIGURE a new CA leader %s after the leader pod's deletion", time.Since(deleted).Round(time.Second))
	p, _ := e.runPod(t, ctx, workloadPod("e2e-files", "after-leader-change", "web", nil))
	id, _, err := leafID(volumeDir(p, "svid"))
	if err != nil || id != spiffeID("e2e-files", "web") {
		t.Errorf("a CSI pod after the leader's deletion: %s, %v", id, err)
	}
	if err := waitFor(wctx, "the files volumes renewed after the leader's deletion", func() bool {
		_, _, a, _ := m.watch.get(m.filesServer)
		_, _, b, _ := m.watch.get(m.filesClient)
		return a.After(deleted.Add(-30*time.Second)) && b.After(deleted.Add(-30*time.Second))
	}); err != nil {
		t.Fatal(err)
	}
	e.waitRollout(t, ctx)
}

// caConfigFile writes the CA's configuration (the ConfigMap) into dir for
// `ca rotate-root --config`, which reaches the CA Secret through KUBECONFIG.
func (e *env) caConfigFile(t *testing.T, ctx context.Context, dir string) string {
	t.Helper()
	cm, err := e.cs.CoreV1().ConfigMaps("mayfly-system").Get(ctx, "mayfly-ca-config", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "ca.yaml")
	if err := writeFile(p, cm.Data["ca.yaml"]); err != nil {
		t.Fatal(err)
	}
	return p
}
