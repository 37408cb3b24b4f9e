package e2enode

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const trustDomain = "example.org" // deploy/k8s as shipped

// workloadPod is a pod of the pause image in ns under ServiceAccount sa with
// one csi.mayfly.dev inline volume "svid" of the given attributes.
func workloadPod(ns, name, sa string, attrs map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.PodSpec{
			ServiceAccountName: sa,
			SecurityContext:    &corev1.PodSecurityContext{RunAsNonRoot: ptr(true), RunAsUser: ptr(int64(10001)), FSGroup: ptr(int64(10001))},
			Containers: []corev1.Container{{
				Name: "app", Image: "ghcr.io/mayfly-pki/pause:" + imageTag, ImagePullPolicy: corev1.PullNever,
				VolumeMounts: []corev1.VolumeMount{{Name: "svid", MountPath: "/var/run/mayfly", ReadOnly: true}},
			}},
			Volumes: []corev1.Volume{{Name: "svid", VolumeSource: corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{
				Driver: "csi.mayfly.dev", ReadOnly: ptr(true), VolumeAttributes: attrs,
			}}}},
		},
	}
}

// namespaceWithSA creates ns and ServiceAccount sa in it.
func (e *env) namespaceWithSA(t *testing.T, ctx context.Context, ns, sa string) {
	t.Helper()
	if _, err := e.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// runPod creates pod and waits until it runs; it returns the time from
// creation to Running.
func (e *env) runPod(t *testing.T, ctx context.Context, pod *corev1.Pod) (*corev1.Pod, time.Duration) {
	t.Helper()
	start := time.Now()
	p, err := e.cs.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	err = waitFor(wctx, "pod "+pod.Namespace+"/"+pod.Name+" Running", func() bool {
		p, err = e.cs.CoreV1().Pods(pod.Namespace).Get(wctx, pod.Name, metav1.GetOptions{})
		return err == nil && p.Status.Phase == corev1.PodRunning
	})
	if err != nil {
		e.dumpPods(t, ctx, pod.Namespace)
		t.Fatal(err)
	}
	return p, time.Since(start)
}

// volumeDir is where the kubelet mounted the pod's CSI volume, seen from
// the node (the test shares the kubelet's mount namespace).
func volumeDir(p *corev1.Pod, volume string) string {
	return filepath.Join("/var/lib/kubelet/pods", string(p.UID), "volumes/kubernetes.io~csi", volume, "mount")
}

// leafID reads dir/tls.crt and returns its SPIFFE ID and expiry.
func leafID(dir string) (string, time.Time, error) {
	b, err := os.ReadFile(filepath.Join(dir, "tls.crt"))
	if err != nil {
		return "", time.Time{}, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return "", time.Time{}, errors.New("tls.crt: no PEM block")
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return "", time.Time{}, err
	}
	if len(c.URIs) != 1 {
		return "", time.Time{}, fmt.Errorf("tls.crt has %d URI SANs", len(c.URIs))
	}
	return c.URIs[0].String(), c.NotAfter, nil
}

// verdictCSIFiles: a pod with a csi.mayfly.dev inline volume (files mode)
// starts with tls.crt, tls.key and ca.crt, and the leaf names its namespace
// and ServiceAccount.
func (e *env) verdictCSIFiles(t *testing.T, ctx context.Context) {
	e.namespaceWithSA(t, ctx, "e2e-files", "web")
	p, took := e.runPod(t, ctx, workloadPod("e2e-files", "web-files", "web", map[string]string{"ttl": "1h"}))
	e.filesPod = p
	e.timing["pod Running, CSI files"] = took
	t.Logf("FIGURE pod with a CSI files volume Running %s after creation", took.Round(10*time.Millisecond))
	dir := volumeDir(p, "svid")
	for _, f := range []string{"tls.crt", "tls.key", "ca.crt"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("volume file %s: %v", f, err)
		}
	}
	id, _, err := leafID(dir)
	if err != nil {
		t.Fatal(err)
	}
	if want := "spiffe://" + trustDomain + "/ns/e2e-files/sa/web"; id != want {
		t.Errorf("leaf SPIFFE ID %s, want %s", id, want)
	}
}

// verdictSocketOutsidePod: a pod with a socket-mode volume starts with the
// Workload API socket in it; this process, on the node but in no pod,
// connects to that socket and gets nothing.
func (e *env) verdictSocketOutsidePod(t *testing.T, ctx context.Context) {
	e.namespaceWithSA(t, ctx, "e2e-socket", "web")
	p, took := e.runPod(t, ctx, workloadPod("e2e-socket", "web-socket", "web", map[string]string{"mode": "socket"}))
	e.timing["pod Running, CSI socket"] = took
	t.Logf("FIGURE pod with a CSI socket volume Running %s after creation", took.Round(10*time.Millisecond))
	dir := volumeDir(p, "svid")
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var sock string
	for _, en := range entries {
		if en.Type()&os.ModeSocket != 0 {
			sock = filepath.Join(dir, en.Name())
		}
	}
	if sock == "" {
		t.Fatalf("no socket in the socket-mode volume: %v", entries)
	}
	fctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	svid, err := workloadapi.FetchX509SVID(fctx, workloadapi.WithAddr("unix://"+sock))
	if err == nil {
		t.Fatalf("a process outside any pod got %s", svid.ID)
	}
	t.Logf("outside any pod: %v", err)
}

// logRSS logs the resident memory of every process named ca or agent on
// the node (the containers' processes, seen from the node's PID namespace).
func logRSS(t *testing.T) {
	entries, _ := os.ReadDir("/proc")
	for _, en := range entries {
		comm, err := os.ReadFile(filepath.Join("/proc", en.Name(), "comm"))
		if err != nil {
			continue
		}
		name := strings.TrimSpace(string(comm))
		if name != "ca" && name != "agent" {
			continue
		}
		status, err := os.ReadFile(filepath.Join("/proc", en.Name(), "status"))
		if err != nil {
			continue
		}
		for line := range strings.SplitSeq(string(status), "\n") {
			if rss, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				t.Logf("FIGURE RSS %s (pid %s): %s", name, en.Name(), strings.TrimSpace(rss))
			}
		}
	}
}
