package bundlegate_test

import (
	"context"
	"crypto/x509"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mayflyv1alpha1 "github.com/mayfly-pki/mayfly/api/mayfly/v1alpha1"
	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/controller/bundle"
	"github.com/mayfly-pki/mayfly/internal/controller/bundlegate"
	"github.com/mayfly-pki/mayfly/internal/controller/workloadcert"
	"github.com/mayfly-pki/mayfly/internal/test/cluster"
	"github.com/mayfly-pki/mayfly/internal/test/fakeauthority"
	"github.com/mayfly-pki/mayfly/internal/test/promtest"
	"github.com/mayfly-pki/mayfly/internal/test/testca"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
	"github.com/mayfly-pki/mayfly/pkg/pki"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

const (
	delay      = 2 * time.Minute
	selectedNS = "sel-a"
)

var selector = labels.SelectorFromSet(labels.Set{"mayfly.dev/bundle": "yes"})

// env is a cluster, an authority and a Gate on the manager's cache; with
// controllers, the bundle and WorkloadCertificate controllers run too.
type env struct {
	cl    client.Client
	gate  *bundlegate.Gate
	auth  *fakeauthority.Authority
	ca    *testca.CA
	clock *rotate.FakeClock
	reg   *prometheus.Registry
}

func loaded(ca *testca.CA, roots ...*x509.Certificate) *authority.Loaded {
	return fakeauthority.Loaded(ca, authority.BundleVersion(roots), roots...)
}

func start(t *testing.T, controllers bool) *env {
	t.Helper()
	crds, err := filepath.Abs(filepath.Join("..", "..", "..", "deploy", "k8s", "base", "crds"))
	if err != nil {
		t.Fatal(err)
	}
	c := cluster.Start(t, cluster.WithCRDDirectory(crds))
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if err := mayflyv1alpha1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	ca := testca.New(t)
	e := &env{ca: ca, auth: fakeauthority.New(loaded(ca, ca.Root), nil), clock: rotate.NewFakeClock(time.Now()), reg: prometheus.NewRegistry()}
	if e.cl, err = client.New(c.Config, client.Options{Scheme: scheme}); err != nil {
		t.Fatal(err)
	}
	// As the CA runs it (caapp).
	mgr := cluster.NewManager(t, c.Config, scheme, map[client.Object]cache.ByObject{
		&corev1.ConfigMap{}: {Field: fields.OneTermEqualSelector("metadata.name", bundle.ConfigMapName)},
		&corev1.Secret{}:    workloadcert.SecretCache(),
	})
	e.gate = &bundlegate.Gate{Source: e.auth, NamespaceSelector: selector, ClusterTrustBundle: true, PropagationDelay: delay, Clock: e.clock, Registerer: e.reg}
	if err := e.gate.SetupWithManager(mgr); err != nil {
		t.Fatalf("gate: %v", err)
	}
	if controllers {
		if err := (&bundle.Reconciler{Client: mgr.GetClient(), Source: e.auth, NamespaceSelector: selector, ClusterTrustBundle: true}).SetupWithManager(mgr); err != nil {
			t.Fatalf("bundle controller: %v", err)
		}
		if err := (&workloadcert.Reconciler{Authority: e.auth, TrustDomain: ca.TrustDomain, Now: e.clock.Now}).SetupWithManager(mgr); err != nil {
			t.Fatalf("WorkloadCertificate controller: %v", err)
		}
	}
	cluster.RunManager(t, mgr)
	return e
}

func (e *env) create(t *testing.T, objs ...client.Object) {
	t.Helper()
	for _, o := range objs {
		if err := e.cl.Create(context.Background(), o); err != nil {
			t.Fatalf("create %T %s: %v", o, o.GetName(), err)
		}
	}
}

func (e *env) update(t *testing.T, o client.Object, change func()) {
	t.Helper()
	ctx := context.Background()
	if err := e.cl.Get(ctx, client.ObjectKeyFromObject(o), o); err != nil {
		t.Fatal(err)
	}
	change()
	if err := e.cl.Update(ctx, o); err != nil {
		t.Fatalf("update %T %s: %v", o, o.GetName(), err)
	}
}

// waitPending waits until the objects pending for the current bundle are
// want (sorted, "kind ns/name").
func (e *env) waitPending(t *testing.T, want ...string) {
	t.Helper()
	wait.Until(t, fmt.Sprintf("pending objects %v", want), cluster.PollTimeout, cluster.PollEvery, func(context.Context) (bool, string) {
		l, _ := e.auth.Current()
		ok, pending, _ := e.gate.Adopted(l.BundleVersion)
		if len(want) == 0 {
			return ok, fmt.Sprintf("adopted %v, pending %v", ok, pending)
		}
		return !ok && slices.Equal(pending, want), fmt.Sprintf("adopted %v, pending %v", ok, pending)
	})
}

// waitReadyAfterDelay waits until no object is pending, then checks that
// the gate turns Ready only once the propagation delay has passed on the
// fake clock (early is the error if it is Ready before).
func (e *env) waitReadyAfterDelay(t *testing.T, early string) {
	t.Helper()
	e.waitPending(t)
	if e.gate.Ready() {
		t.Error(early)
	}
	e.clock.Advance(delay)
	if !e.gate.Ready() {
		t.Error("not Ready after the propagation delay")
	}
}

func pemOf(certs ...*x509.Certificate) string { return string(pki.EncodeCertificates(certs...)) }

func namespace(name string, selected bool) *corev1.Namespace {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if selected {
		ns.Labels = map[string]string{"mayfly.dev/bundle": "yes"}
	}
	return ns
}

func configMap(ns, data string) *corev1.ConfigMap {
	return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: bundle.ConfigMapName}, Data: map[string]string{bundle.ConfigMapKey: data}}
}

// TestGate drives the delivery objects by hand, as if their controllers
// were stopped: each kind lacking the next root holds the activation back,
// and the propagation delay runs from when the last object caught up.
func TestGate(t *testing.T) {
	e := start(t, false)
	ctx := context.Background()
	root1 := e.ca.Root
	root2 := testca.New(t, testca.WithTrustDomain("example.org")).Root
	old, next := pemOf(root1), pemOf(root1, root2)

	wc := &mayflyv1alpha1.WorkloadCertificate{
		ObjectMeta: metav1.ObjectMeta{Namespace: selectedNS, Name: "web"},
		Spec:       mayflyv1alpha1.WorkloadCertificateSpec{ServiceAccountName: "web", SecretName: "web-tls"},
	}
	e.create(t, namespace(selectedNS, true), namespace("unselected", false), wc)
	ref := metav1.NewControllerRef(wc, mayflyv1alpha1.GroupVersion.WithKind("WorkloadCertificate"))
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: selectedNS, Name: "web-tls", OwnerReferences: []metav1.OwnerReference{*ref},
			Labels: map[string]string{mayflyv1alpha1.LabelWorkloadCertificate: "web"}},
		Data: map[string][]byte{"ca.crt": []byte(old)},
	}
	ctb := &certificatesv1.ClusterTrustBundle{
		ObjectMeta: metav1.ObjectMeta{Name: bundle.ClusterTrustBundleName},
		Spec:       certificatesv1.ClusterTrustBundleSpec{SignerName: bundle.SignerName, TrustBundle: old},
	}
	cm := configMap(selectedNS, old)
	e.create(t, secret, ctb, cm,
		// Neither counts: a namespace that is not selected, a Secret that
		// no WorkloadCertificate controls.
		configMap("unselected", "stale"),
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: selectedNS, Name: "copied", Labels: map[string]string{mayflyv1alpha1.LabelWorkloadCertificate: "web"}},
			Data: map[string][]byte{"ca.crt": []byte("stale")}})
	e.waitPending(t)

	e.auth.Set(loaded(e.ca, root1, root2), nil)
	t.Run("every_kind_lacking_the_next_root_is_pending", func(t *testing.T) {
		e.waitPending(t, "clustertrustbundle "+bundle.ClusterTrustBundleName, "configmap sel-a/mayfly-trust-bundle", "secret sel-a/web-tls")
		if e.gate.Ready() {
			t.Error("Ready with every object on the old bundle")
		}
		for _, kind := range []string{"configmap", "secret", "clustertrustbundle"} {
			if v, _ := promtest.Value(t, e.reg, "mayfly_ca_bundle_pending_objects", "kind="+kind); v != 1 {
				t.Errorf("mayfly_ca_bundle_pending_objects{kind=%s} = %v, want 1", kind, v)
			}
		}
		st := e.gate.Status()
		if !st.Tracking || st.Pending != 3 || st.Objects != 3 || len(st.PendingObjects) != 3 || st.PropagationDelay != "2m0s" {
			t.Errorf("status %+v", st)
		}
	})

	t.Run("a_ConfigMap_and_the_ClusterTrustBundle_lacking_it_block", func(t *testing.T) {
		e.update(t, secret, func() { secret.Data["ca.crt"] = []byte(next) })
		e.waitPending(t, "clustertrustbundle "+bundle.ClusterTrustBundleName, "configmap sel-a/mayfly-trust-bundle")
		e.update(t, ctb, func() { ctb.Spec.TrustBundle = next })
		e.waitPending(t, "configmap sel-a/mayfly-trust-bundle")
		// Unreadable content is pending as well.
		e.update(t, cm, func() { cm.Data[bundle.ConfigMapKey] = "not a PEM bundle" })
		e.waitPending(t, "configmap sel-a/mayfly-trust-bundle")
		if e.gate.Ready() {
			t.Error("Ready while a ConfigMap lacks the next root")
		}
	})

	t.Run("activation_waits_the_propagation_delay_after_the_last_object", func(t *testing.T) {
		e.update(t, cm, func() { cm.Data[bundle.ConfigMapKey] = next })
		e.waitPending(t)
		l, _ := e.auth.Current()
		if _, _, since := e.gate.Adopted(l.BundleVersion); !since.Equal(e.clock.Now()) {
			t.Errorf("readySince %s, want the (fake) time the last object caught up, %s", since, e.clock.Now())
		}
		if e.gate.Ready() {
			t.Error("Ready before the propagation delay")
		}
		e.clock.Advance(delay - time.Second)
		if e.gate.Ready() {
			t.Error("Ready a second before the propagation delay passed")
		}
		if st := e.gate.Status(); st.Pending != 0 || st.PropagationLeft != "1s" || st.AllSince == nil {
			t.Errorf("status %+v, want nothing pending and 1s left", st)
		}
		e.clock.Advance(time.Second)
		if !e.gate.Ready() {
			t.Error("not Ready once every object held the next root for the propagation delay")
		}
	})

	t.Run("a_Secret_edited_back_blocks_and_restarts_the_delay", func(t *testing.T) {
		e.update(t, secret, func() { secret.Data["ca.crt"] = []byte(old) })
		e.waitPending(t, "secret sel-a/web-tls")
		if e.gate.Ready() {
			t.Error("Ready while a Secret lacks the next root")
		}
		e.update(t, secret, func() { secret.Data["ca.crt"] = []byte(next) })
		e.waitReadyAfterDelay(t, "Ready at once after the Secret caught up again: the delay must restart")
	})

	t.Run("a_new_selected_namespace_without_its_ConfigMap_blocks", func(t *testing.T) {
		e.create(t, namespace("sel-b", true))
		e.waitPending(t, "configmap sel-b/mayfly-trust-bundle")
		if e.gate.Ready() {
			t.Error("Ready while a selected namespace has no bundle ConfigMap")
		}
		e.create(t, configMap("sel-b", next))
		e.waitPending(t)
	})

	t.Run("a_deleted_ClusterTrustBundle_blocks", func(t *testing.T) {
		if err := e.cl.Delete(ctx, ctb); err != nil {
			t.Fatal(err)
		}
		e.waitPending(t, "clustertrustbundle "+bundle.ClusterTrustBundleName)
	})
}

// TestGateWithControllers runs the bundle and WorkloadCertificate
// controllers: what they write is what the Gate recognises, and a next
// root reaches every object without a new certificate.
func TestGateWithControllers(t *testing.T) {
	e := start(t, true)
	e.create(t, namespace(selectedNS, true), &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: selectedNS, Name: "web"}},
		&mayflyv1alpha1.WorkloadCertificate{
			ObjectMeta: metav1.ObjectMeta{Namespace: selectedNS, Name: "web"},
			Spec:       mayflyv1alpha1.WorkloadCertificateSpec{ServiceAccountName: "web", SecretName: "web-tls"},
		})
	wait.Until(t, "the Secret, the ConfigMap and the ClusterTrustBundle hold the first bundle", cluster.PollTimeout, cluster.PollEvery, func(context.Context) (bool, string) {
		l, _ := e.auth.Current()
		ok, pending, _ := e.gate.Adopted(l.BundleVersion)
		st := e.gate.Status()
		return ok && st.Objects == 3, fmt.Sprintf("adopted %v, %d objects, pending %v", ok, st.Objects, pending)
	})
	root2 := testca.New(t, testca.WithTrustDomain("example.org")).Root
	e.auth.Set(loaded(e.ca, e.ca.Root, root2), nil)
	e.waitReadyAfterDelay(t, "Ready before the propagation delay")
}

func TestGateBeforeSyncFailsClosed(t *testing.T) {
	g := &bundlegate.Gate{Source: fakeauthority.New(&authority.Loaded{BundleVersion: "v"}, nil)}
	if ok, pending, _ := g.Adopted("v"); ok || pending != nil {
		t.Errorf("Adopted before sync = %v, %v; want false, none", ok, pending)
	}
	if g.Ready() {
		t.Error("Ready before the informers synced")
	}
	if st := g.Status(); st.Tracking || !strings.HasPrefix(st.PropagationDelay, "0s") {
		t.Errorf("status %+v", st)
	}
}
