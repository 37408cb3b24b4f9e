package caapp_test

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	mayflyv1alpha1 "github.com/mayfly-pki/mayfly/api/mayfly/v1alpha1"
	"github.com/mayfly-pki/mayfly/internal/app/caapp"
	"github.com/mayfly-pki/mayfly/internal/controller/bundle"
	"github.com/mayfly-pki/mayfly/internal/issuerclient"
	"github.com/mayfly-pki/mayfly/internal/test/cluster"
	"github.com/mayfly-pki/mayfly/internal/test/logbuf"
	"github.com/mayfly-pki/mayfly/internal/test/testca"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
	"github.com/mayfly-pki/mayfly/pkg/pki"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

const kubeConfig = `
trustDomain: example.org
healthAddress: "off"
kubernetes:
  namespace: mayfly-system
`

type replica struct {
	addr string
	logs *logbuf.Buffer
}

func startReplica(t *testing.T, c *cluster.Cluster, clock rotate.Clock) *replica {
	t.Helper()
	// Replicas in one process share a hostname: name each (its adoption ConfigMap).
	p := runCA(t, kubeConfig, caapp.Options{RestConfig: c.Config, Clock: clock, Replica: "ca-" + strings.ToLower(rand.Text()[:8])})
	return &replica{addr: p.addr, logs: p.logs}
}

// startCluster starts an API server with mayfly's CRDs and creates the
// namespaces.
func startCluster(t *testing.T, namespaces ...string) *cluster.Cluster {
	t.Helper()
	c := cluster.Start(t, cluster.WithCRDDirectory("../../../deploy/k8s/base/crds"))
	for _, ns := range namespaces {
		create(t, c.Client.CoreV1().Namespaces().Create, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})
	}
	return c
}

func create[T any](t *testing.T, f func(context.Context, T, metav1.CreateOptions) (T, error), obj T) T {
	t.Helper()
	out, err := f(context.Background(), obj, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestKubernetesTwoReplicas runs two CA replicas against one API server:
// one bootstraps, both sign, only the leader rotates, and both pick the new
// intermediate up from the Secret watch.
func TestKubernetesTwoReplicas(t *testing.T) {
	c := startCluster(t, "mayfly-system", "app")
	ctx := context.Background()
	kube := c.Client
	create(t, kube.CoreV1().ServiceAccounts("mayfly-system").Create, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "mayfly-agent"}})
	create(t, kube.CoreV1().ServiceAccounts("app").Create, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "web"}})
	agentPod := cluster.CreatePod(t, kube, "mayfly-system", "agent-a", "mayfly-agent", "node-a")
	webPod := cluster.CreatePod(t, kube, "app", "web-1", "web", "node-a")

	clock := rotate.NewFakeClock(time.Now())
	r1 := startReplica(t, c, clock)
	r2 := startReplica(t, c, clock)

	// The bundle ConfigMap is the agents' starting trust.
	roots := trustRoots(t, kube)
	wait.For(t, "trust bundle ConfigMap in namespace app", func() bool {
		_, err := kube.CoreV1().ConfigMaps("app").Get(ctx, bundle.ConfigMapName, metav1.GetOptions{})
		return err == nil
	})

	token := agentToken(t, kube, agentPod)

	// dial returns a client of replica r presenting cert (may be nil).
	dial := func(r *replica, cert *tls.Certificate) issuerv1.IssuerClient {
		return dialCA(t, r.addr, clock.Now, func() []*x509.Certificate { return roots }, cert)
	}
	agentKey := testca.Key(t)
	var agentCert *tls.Certificate
	// The agent SVID lives 1h: after the fake clock jumps, the agent
	// attests again with its (real-time valid) token.
	attest := func() {
		wait.For(t, "agent attestation (pod caches synced)", func() bool {
			resp, err := dial(r1, nil).AttestAgent(ctx, &issuerv1.AttestAgentRequest{Csr: testca.CSR(t, agentKey), Credential: &issuerv1.AttestAgentRequest_ServiceAccountToken{ServiceAccountToken: token}})
			if err != nil {
				t.Logf("attest: %v", err)
				return false
			}
			agentCert = &tls.Certificate{Certificate: resp.GetCertificateChain(), PrivateKey: agentKey}
			return true
		})
	}
	attest()

	sign := func(r *replica) *x509.Certificate {
		t.Helper()
		resp, err := dial(r, agentCert).SignWorkloads(ctx, &issuerv1.SignWorkloadsRequest{Requests: []*issuerv1.WorkloadRequest{
			{RequestId: "web", Csr: testca.CSR(t, testca.Key(t)), PodUid: string(webPod.UID)},
		}})
		if err != nil {
			t.Fatalf("SignWorkloads via %s: %v\nlogs 1: %s\nlogs 2: %s", r.addr, err, r1.logs, r2.logs)
		}
		issued := resp.GetResults()[0].GetIssued()
		if issued == nil {
			t.Fatalf("denied via %s: %s", r.addr, resp.GetResults()[0].GetDenial().GetMessage())
		}
		chain, err := issuerclient.ParseChain(issued.GetCertificateChain())
		if err != nil {
			t.Fatal(err)
		}
		id, err := pki.VerifyX509SVID(chain[0], chain[1:], roots, clock.Now(), x509.ExtKeyUsageClientAuth)
		if err != nil {
			t.Fatalf("issued SVID does not verify: %v", err)
		}
		if id.String() != "spiffe://example.org/ns/app/sa/web" {
			t.Fatalf("ID %s", id)
		}
		return chain[1]
	}
	// The KEP-4317 signer answers a PodCertificateRequest for the pod.
	stub, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, testca.Key(t))
	if err != nil {
		t.Fatal(err)
	}
	pcrObj := create(t, kube.CertificatesV1().PodCertificateRequests("app").Create, &certificatesv1.PodCertificateRequest{
		ObjectMeta: metav1.ObjectMeta{Name: "web-1-pcr"},
		Spec: certificatesv1.PodCertificateRequestSpec{
			SignerName: "mayfly.dev/workload", PodName: webPod.Name, PodUID: webPod.UID,
			ServiceAccountName: "web", ServiceAccountUID: uuid.NewUUID(), NodeName: "node-a", NodeUID: uuid.NewUUID(),
			MaxExpirationSeconds: ptr.To[int32](3600), StubPKCS10Request: stub,
		},
	})
	wait.For(t, "PodCertificateRequest issued", func() bool {
		got, err := kube.CertificatesV1().PodCertificateRequests("app").Get(ctx, pcrObj.Name, metav1.GetOptions{})
		return err == nil && strings.Contains(got.Status.CertificateChain, "BEGIN CERTIFICATE")
	})

	// The WorkloadCertificate controller writes the Secret.
	wc := &mayflyv1alpha1.WorkloadCertificate{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "app"},
		Spec:       mayflyv1alpha1.WorkloadCertificateSpec{ServiceAccountName: "web", SecretName: "web-tls"},
	}
	cl, err := client.New(c.Config, client.Options{Scheme: wcScheme(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.Create(ctx, wc); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "WorkloadCertificate Secret", func() bool {
		sec, err := kube.CoreV1().Secrets("app").Get(ctx, "web-tls", metav1.GetOptions{})
		return err == nil && len(sec.Data["tls.crt"]) > 0 && len(sec.Data["tls.key"]) > 0
	})

	before1, before2 := sign(r1), sign(r2)
	if !before1.Equal(before2) {
		t.Fatal("replicas sign with different intermediates")
	}

	// Past the activation point (2/3 of 48h) in steps so the leader prepares, then activates.
	clock.Advance(25 * time.Hour)
	wait.For(t, "next intermediate prepared", func() bool {
		return strings.Count(r1.logs.String()+r2.logs.String(), `"msg":"rotated CA keys"`) >= 1
	})
	clock.Advance(8 * time.Hour)
	wait.For(t, "intermediate activated", func() bool {
		return strings.Count(r1.logs.String()+r2.logs.String(), `"msg":"rotated CA keys"`) >= 2
	})
	attest()
	wait.For(t, "intermediate activated on both replicas", func() bool {
		a, b := sign(r1), sign(r2)
		return !a.Equal(before1) && a.Equal(b)
	})
	l1 := strings.Count(r1.logs.String(), `"msg":"rotated CA keys"`)
	l2 := strings.Count(r2.logs.String(), `"msg":"rotated CA keys"`)
	if (l1 == 0) == (l2 == 0) {
		t.Fatalf("rotations logged by replica 1: %d, replica 2: %d; want exactly one replica rotating", l1, l2)
	}
}

// dialCA returns a client of the issuer API at addr, verifying it with
// bundle and presenting cert (may be nil), closed when the test ends.
func dialCA(t *testing.T, addr string, now func() time.Time, bundle func() []*x509.Certificate, cert *tls.Certificate) issuerv1.IssuerClient {
	t.Helper()
	conn, client, err := issuerclient.Dial(issuerclient.Config{
		Address: addr, TrustDomain: td, Now: now, Bundle: bundle,
		Certificate: func() *tls.Certificate { return cert },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return client
}

// trustRoots waits for the trust bundle ConfigMap of mayfly-system, the
// agents' starting trust, and returns its roots.
func trustRoots(t *testing.T, kube kubernetes.Interface) []*x509.Certificate {
	t.Helper()
	var roots []*x509.Certificate
	wait.For(t, "trust bundle ConfigMap", func() bool {
		cm, err := kube.CoreV1().ConfigMaps("mayfly-system").Get(context.Background(), bundle.ConfigMapName, metav1.GetOptions{})
		if err != nil {
			return false
		}
		roots, err = pki.DecodeCertificates([]byte(cm.Data[bundle.ConfigMapKey]), pki.PEMLimits{})
		return err == nil
	})
	return roots
}

// agentToken returns a ServiceAccount token of the agent pod, for the CA's
// audience, as the kubelet projects it.
func agentToken(t *testing.T, kube kubernetes.Interface, pod *corev1.Pod) string {
	t.Helper()
	exp := int64(3600)
	tr, err := kube.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(context.Background(), pod.Spec.ServiceAccountName, &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences: []string{"mayfly-ca"}, ExpirationSeconds: &exp,
		BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Status.Token
}

func wcScheme(t *testing.T) *runtime.Scheme {
	t.Helper()
	s := runtime.NewScheme()
	if err := mayflyv1alpha1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	return s
}
