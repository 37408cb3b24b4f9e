package agentapp_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	gojwtsvid "github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mayfly-pki/mayfly/internal/oidc"
	"github.com/mayfly-pki/mayfly/internal/test/cluster"
	"github.com/mayfly-pki/mayfly/internal/test/filemode"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
)

// TestKubernetesCSIVolumeJWTToken: against a real CA and agent (envtest),
// a pod's CSI volume with jwtAudience holds jwt.token, which a program
// outside mayfly validates with go-spiffe against the JWKS the CA keeps in
// its ConfigMap; a pod of another node gets PermissionDenied and no
// volume.
func TestKubernetesCSIVolumeJWTToken(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test against envtest; skipped with -short")
	}
	s := startKubernetesStack(t, "jwt: {configMap: mayfly-jwks}\n")
	conn := s.csiConn(t)
	p := s.pod(t, "web", "web-1", &corev1.PodStatus{Phase: corev1.PodRunning})
	target := s.publish(t, conn, p, "csi-web-jwt", map[string]string{"jwtAudience": "vault,sts.example.com"})

	path := filepath.Join(target, "jwt.token")
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("jwt.token once NodePublishVolume returned: %v", err)
	}
	filemode.Want(t, path, 0o600)
	var jwks string
	wait.For(t, "the JWKS ConfigMap", func() bool {
		cm, err := s.kube.CoreV1().ConfigMaps("mayfly-system").Get(s.ctx, "mayfly-jwks", metav1.GetOptions{})
		if err != nil {
			return false
		}
		jwks = cm.Data[oidc.ConfigMapKey]
		return jwks != ""
	})
	bundle, err := jwtbundle.Parse(spiffeid.RequireTrustDomainFromString("example.org"), []byte(jwks))
	if err != nil {
		t.Fatal(err)
	}
	svid, err := gojwtsvid.ParseAndValidate(string(raw), bundle, []string{"sts.example.com"})
	if err != nil {
		t.Fatalf("go-spiffe refuses jwt.token against the CA's JWKS: %v", err)
	}
	if want := "spiffe://example.org/ns/app/sa/web"; svid.ID.String() != want {
		t.Fatalf("jwt.token names %s, want %s", svid.ID, want)
	}

	// A pod that does not run on this node.
	must[*corev1.ServiceAccount](t)(s.kube.CoreV1().ServiceAccounts("app").Create(s.ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "elsewhere"}}, metav1.CreateOptions{}))
	far := cluster.CreatePod(t, s.kube, "app", "elsewhere-1", "elsewhere", "node-b")
	farTarget := filepath.Join(s.dir, "pods", string(far.UID), "volumes", "kubernetes.io~csi", "tls", "mount")
	if err := os.MkdirAll(filepath.Dir(farTarget), 0o750); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(s.ctx, time.Minute)
	defer cancel()
	_, err = csipb.NewNodeClient(conn).NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{
		VolumeId: "csi-elsewhere", TargetPath: farTarget,
		VolumeCapability: &csipb.VolumeCapability{AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{}},
			AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}},
		VolumeContext: map[string]string{
			"csi.storage.k8s.io/ephemeral": "true", "csi.storage.k8s.io/pod.name": far.Name, "csi.storage.k8s.io/pod.namespace": far.Namespace,
			"csi.storage.k8s.io/pod.uid": string(far.UID), "csi.storage.k8s.io/serviceAccount.name": "elsewhere", "jwtAudience": "vault",
		},
	})
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "jwtAudience") {
		t.Fatalf("a pod of another node: %v, want PermissionDenied naming jwtAudience", err)
	}
	if _, err := os.Stat(farTarget); !os.IsNotExist(err) {
		t.Fatalf("the refused volume's target: %v", err)
	}
}
