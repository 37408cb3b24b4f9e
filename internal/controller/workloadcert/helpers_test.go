package workloadcert_test

import (
	"context"
	"crypto"
	"crypto/x509"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mayflyv1alpha1 "github.com/mayfly-pki/mayfly/api/mayfly/v1alpha1"
	"github.com/mayfly-pki/mayfly/internal/controller/workloadcert"
	"github.com/mayfly-pki/mayfly/internal/test/cluster"
	"github.com/mayfly-pki/mayfly/internal/test/fakeauthority"
	"github.com/mayfly-pki/mayfly/internal/test/logbuf"
	"github.com/mayfly-pki/mayfly/internal/test/promtest"
	"github.com/mayfly-pki/mayfly/internal/test/testca"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
	"github.com/mayfly-pki/mayfly/pkg/pki"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// env is a cluster with the CRD installed and the controller running.
type env struct {
	c      *cluster.Cluster
	cl     client.Client // direct, uncached
	ca     *testca.CA
	auth   *fakeauthority.Authority
	clock  *rotate.FakeClock
	logs   *logbuf.Buffer
	reg    *prometheus.Registry
	scheme *runtime.Scheme
	// namespaces is the controller's Namespaces (empty: every namespace).
	namespaces []string
}

func newScheme(t testing.TB) *runtime.Scheme {
	t.Helper()
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	if err := mayflyv1alpha1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	return s
}

func crdDir(t testing.TB) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("..", "..", "..", "deploy", "k8s", "base", "crds"))
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// start runs an API server and the controller until the test ends. clock
// nil means real time; tweak changes the client configuration; workers 0
// is the controller's default.
func start(t testing.TB, clock *rotate.FakeClock, tweak func(*rest.Config), workers int) *env {
	t.Helper()
	c := cluster.Start(t, cluster.WithCRDDirectory(crdDir(t)))
	e := &env{c: c, ca: testca.New(t), logs: &logbuf.Buffer{}, reg: prometheus.NewRegistry(), scheme: newScheme(t), clock: clock}
	e.auth = fakeauthority.New(fakeauthority.Loaded(e.ca, "v1"), nil)
	cfg := rest.CopyConfig(c.Config)
	if tweak != nil {
		tweak(cfg)
	}
	var err error
	if e.cl, err = client.New(cfg, client.Options{Scheme: e.scheme}); err != nil {
		t.Fatal(err)
	}
	e.runController(t, cfg, workers, e.reg)
	return e
}

// runController runs one more controller (a manager of its own) against
// the API server until the test ends, exporting its metrics to reg.
func (e *env) runController(t testing.TB, cfg *rest.Config, workers int, reg prometheus.Registerer) {
	t.Helper()
	mgr := cluster.NewManager(t, cfg, e.scheme, map[client.Object]cache.ByObject{&corev1.Secret{}: workloadcert.SecretCache(e.namespaces...)})
	r := &workloadcert.Reconciler{
		Authority:   e.auth,
		TrustDomain: e.ca.TrustDomain,
		Logger:      slog.New(slog.NewJSONHandler(e.logs, nil)),
		Registerer:  reg,
		// 0 is the default.
		MaxConcurrentReconciles: workers,
		Namespaces:              e.namespaces,
	}
	if e.clock != nil {
		r.Now = e.clock.Now
	}
	if err := r.SetupWithManager(mgr); err != nil {
		t.Fatalf("SetupWithManager: %v", err)
	}
	cluster.RunManager(t, mgr)
}

// eventually polls cond until it holds or the timeout passes; cond says
// what it saw when it does not hold.
func eventually(t testing.TB, what string, cond func(ctx context.Context) (bool, string)) {
	t.Helper()
	wait.Until(t, what, cluster.PollTimeout, cluster.PollEvery, cond)
}

func (e *env) create(t testing.TB, objs ...client.Object) {
	t.Helper()
	for _, o := range objs {
		if err := e.cl.Create(context.Background(), o); err != nil {
			t.Fatalf("create %T %s: %v", o, o.GetName(), err)
		}
	}
}

func namespace(name string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
}

func serviceAccount(ns, name string) *corev1.ServiceAccount {
	return &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
}

func service(ns, name string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": name},
			Ports:    []corev1.ServicePort{{Name: "https", Port: 443}},
		},
	}
}

func workloadCert(ns, name, sa, secret string, dnsNames ...string) *mayflyv1alpha1.WorkloadCertificate {
	return &mayflyv1alpha1.WorkloadCertificate{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       mayflyv1alpha1.WorkloadCertificateSpec{ServiceAccountName: sa, SecretName: secret, DNSNames: dnsNames},
	}
}

func (e *env) get(ctx context.Context, ns, name string) (*mayflyv1alpha1.WorkloadCertificate, error) {
	var wc mayflyv1alpha1.WorkloadCertificate
	err := e.cl.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &wc)
	return &wc, err
}

// waitCondition waits until the condition typ of ns/name has status and
// reason, for the current generation, and returns the object.
func (e *env) waitCondition(t testing.TB, ns, name, typ string, status metav1.ConditionStatus, reason string) *mayflyv1alpha1.WorkloadCertificate {
	t.Helper()
	var wc *mayflyv1alpha1.WorkloadCertificate
	eventually(t, fmt.Sprintf("%s/%s has %s=%s (%s)", ns, name, typ, status, reason), func(ctx context.Context) (bool, string) {
		var err error
		if wc, err = e.get(ctx, ns, name); err != nil {
			return false, err.Error()
		}
		c := meta.FindStatusCondition(wc.Status.Conditions, typ)
		if c == nil {
			return false, fmt.Sprintf("no %s condition; conditions %v", typ, wc.Status.Conditions)
		}
		if c.Status != status || c.Reason != reason || wc.Status.ObservedGeneration != wc.Generation {
			return false, fmt.Sprintf("%s=%s reason %s: %s (observed generation %d of %d)", typ, c.Status, c.Reason, c.Message, wc.Status.ObservedGeneration, wc.Generation)
		}
		return true, ""
	})
	return wc
}

// issued is the parsed content of a Secret written by the controller.
type issued struct {
	secret *corev1.Secret
	chain  []*x509.Certificate
	key    crypto.Signer
	roots  []*x509.Certificate
}

func (i *issued) serial() string { return i.chain[0].SerialNumber.Text(16) }

func (e *env) secret(ctx context.Context, ns, name string) (*issued, error) {
	var s corev1.Secret
	if err := e.cl.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &s); err != nil {
		return nil, err
	}
	chain, err := pki.DecodeCertificates(s.Data["tls.crt"], pki.PEMLimits{})
	if err != nil {
		return nil, fmt.Errorf("tls.crt: %w", err)
	}
	key, err := pki.ParsePrivateKeyPEM(s.Data["tls.key"])
	if err != nil {
		return nil, fmt.Errorf("tls.key: %w", err)
	}
	roots, err := pki.DecodeCertificates(s.Data["ca.crt"], pki.PEMLimits{})
	if err != nil {
		return nil, fmt.Errorf("ca.crt: %w", err)
	}
	return &issued{secret: &s, chain: chain, key: key, roots: roots}, nil
}

// waitSecret waits until ns/name holds a certificate whose serial is not
// notSerial and whose key matches, and that the status describes.
func (e *env) waitSecret(t testing.TB, ns, wcName, secretName, notSerial string) *issued {
	t.Helper()
	var got *issued
	eventually(t, fmt.Sprintf("Secret %s/%s holds a new matching certificate (not serial %q) described by the status", ns, secretName, notSerial), func(ctx context.Context) (bool, string) {
		var err error
		if got, err = e.secret(ctx, ns, secretName); err != nil {
			return false, err.Error()
		}
		if got.serial() == notSerial {
			return false, "still serial " + notSerial
		}
		if !got.key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(got.chain[0].PublicKey) {
			return false, "tls.key does not match tls.crt"
		}
		wc, err := e.get(ctx, ns, wcName)
		if err != nil {
			return false, err.Error()
		}
		if wc.Status.SerialNumber != got.serial() || !meta.IsStatusConditionTrue(wc.Status.Conditions, mayflyv1alpha1.ConditionReady) {
			return false, fmt.Sprintf("status serial %q, Secret serial %q, conditions %v", wc.Status.SerialNumber, got.serial(), wc.Status.Conditions)
		}
		return true, ""
	})
	return got
}

// counter returns the value of mayfly_ca_workloadcertificates_issued_total
// for result (0 before the first).
func (e *env) counter(t testing.TB, result string) float64 {
	t.Helper()
	v, _ := promtest.Value(t, e.reg, "mayfly_ca_workloadcertificates_issued_total", "result="+result)
	return v
}

func has(s, sub string) bool { return strings.Contains(s, sub) }
