package caapp_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/mayfly-pki/mayfly/internal/app/caapp"
	"github.com/mayfly-pki/mayfly/internal/cli"
	"github.com/mayfly-pki/mayfly/internal/controller/bundle"
	"github.com/mayfly-pki/mayfly/internal/test/cluster"
	"github.com/mayfly-pki/mayfly/internal/test/prereq"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// TestKubernetesOlderAPIServer runs the CA against kube-apiserver 1.35
// (MAYFLY_ENVTEST_OLD: `KUBE_VERSION=1.35.4 hack/setup-envtest.sh`), which
// serves neither PodCertificateRequest nor ClusterTrustBundle at
// certificates.k8s.io/v1: the CA starts, publishes the bundle ConfigMaps,
// and says in its log and status that those paths are off.
func TestKubernetesOlderAPIServer(t *testing.T) {
	assets := prereq.Env(t, "MAYFLY_ENVTEST_OLD", "run the tests through `make test` (or export MAYFLY_ENVTEST_OLD=$(KUBE_VERSION=1.35.4 hack/setup-envtest.sh))")
	c := cluster.Start(t, cluster.WithCRDDirectory("../../../deploy/k8s/base/crds"), func(e *envtest.Environment) {
		e.ControlPlane.APIServer = &envtest.APIServer{Path: filepath.Join(assets, "kube-apiserver")}
		e.ControlPlane.Etcd = &envtest.Etcd{Path: filepath.Join(assets, "etcd")}
	})
	v, err := c.Client.Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	if v.Minor >= "36" {
		t.Fatalf("MAYFLY_ENVTEST_OLD serves Kubernetes %s; want 1.34 or 1.35", v.GitVersion)
	}
	ctx := context.Background()
	kube := c.Client
	for _, ns := range []string{"mayfly-system", "app"} {
		create(t, kube.CoreV1().Namespaces().Create, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})
	}
	sock := filepath.Join(t.TempDir(), "status.sock")
	p := runCA(t, kubeConfig+"statusSocket: "+sock+"\n", caapp.Options{RestConfig: c.Config, Clock: rotate.RealClock{}, Replica: "ca-old"})
	wait.For(t, "trust bundle ConfigMap in namespace app", func() bool {
		_, err := kube.CoreV1().ConfigMaps("app").Get(ctx, bundle.ConfigMapName, metav1.GetOptions{})
		return err == nil
	})
	for _, want := range []string{"does not serve certificates.k8s.io/v1 PodCertificateRequest", "does not serve certificates.k8s.io/v1 ClusterTrustBundle"} {
		if !strings.Contains(p.logs.String(), want) {
			t.Errorf("log has no line %q", want)
		}
	}
	var st caapp.Status
	wait.For(t, "ca status ready", func() bool {
		return cli.FetchStatus(sock, "CA", &st) == nil && st.Ready
	})
	if a := st.KubernetesAPIs; a == nil || a.PodCertificateRequests || a.ClusterTrustBundles {
		t.Errorf("status kubernetesAPIs = %+v, want both off", a)
	}
	t.Logf("Kubernetes %s: CA ready without PodCertificateRequest and ClusterTrustBundle", v.GitVersion)
}
