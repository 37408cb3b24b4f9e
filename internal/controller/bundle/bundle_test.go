package bundle_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/controller/bundle"
	"github.com/mayfly-pki/mayfly/internal/test/cluster"
	"github.com/mayfly-pki/mayfly/internal/test/fakeauthority"
	"github.com/mayfly-pki/mayfly/internal/test/testca"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

func loaded(version string, roots ...*x509.Certificate) *authority.Loaded {
	return &authority.Loaded{Bundle: roots, BundleVersion: version}
}

// recordingClient records the namespaces the reconciler looked up, so a
// test knows when a namespace was decided on.
type recordingClient struct {
	client.Client
	mu  sync.Mutex
	got map[string]int
}

func (c *recordingClient) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	err := c.Client.Get(ctx, key, obj, opts...)
	if _, ok := obj.(*corev1.Namespace); ok {
		c.mu.Lock()
		c.got[key.Name]++
		c.mu.Unlock()
	}
	return err
}

func (c *recordingClient) lookedUp(ns string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.got[ns] > 0
}

// env is a cluster with the bundle controller running against it.
type env struct {
	c      *cluster.Cluster
	src    *fakeauthority.Authority
	client *recordingClient
}

// start runs a manager with the bundle controller until the test ends.
func start(t *testing.T, c *cluster.Cluster, src *fakeauthority.Authority, selector labels.Selector) *env {
	t.Helper()
	// As the CA runs it (bundle.Reconciler.SetupWithManager).
	mgr := cluster.NewManager(t, c.Config, nil, map[client.Object]cache.ByObject{
		&corev1.ConfigMap{}: {Field: fields.OneTermEqualSelector("metadata.name", bundle.ConfigMapName)},
	})
	rc := &recordingClient{Client: mgr.GetClient(), got: map[string]int{}}
	r := &bundle.Reconciler{Client: rc, Source: src, NamespaceSelector: selector, ClusterTrustBundle: true}
	if err := r.SetupWithManager(mgr); err != nil {
		t.Fatalf("SetupWithManager: %v", err)
	}
	cluster.RunManager(t, mgr)
	e := &env{c: c, src: src, client: rc}
	e.eventually(t, "the controller subscribes to bundle changes", func(context.Context) (bool, string) {
		return src.Subscribers() > 0, "no subscriber"
	})
	return e
}

// eventually polls cond every 50ms for up to 20s; cond reports whether it
// holds and, if not, what it saw.
func (e *env) eventually(t *testing.T, what string, cond func(ctx context.Context) (bool, string)) {
	t.Helper()
	wait.Until(t, what, cluster.PollTimeout, cluster.PollEvery, cond)
}

func (e *env) createNamespace(t *testing.T, name string, lbls map[string]string) {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: lbls}}
	if _, err := e.c.Client.CoreV1().Namespaces().Create(context.Background(), ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
}

// configMapCheck reports whether ns holds exactly the bundle ConfigMap
// for want.
func (e *env) configMapCheck(ctx context.Context, ns string, want *authority.Loaded) (bool, string) {
	cm, err := e.c.Client.CoreV1().ConfigMaps(ns).Get(ctx, bundle.ConfigMapName, metav1.GetOptions{})
	if err != nil {
		return false, fmt.Sprintf("namespace %s: %v", ns, err)
	}
	wantData := map[string]string{bundle.ConfigMapKey: string(pki.EncodeCertificates(want.Bundle...))}
	switch {
	case !maps.Equal(cm.Data, wantData) || len(cm.BinaryData) > 0:
		return false, fmt.Sprintf("namespace %s: data keys %v, ca.crt holds %d roots, binaryData %d keys",
			ns, slicesOfKeys(cm.Data), countPEM(cm.Data[bundle.ConfigMapKey]), len(cm.BinaryData))
	case cm.Annotations["mayfly.dev/bundle-version"] != want.BundleVersion:
		return false, fmt.Sprintf("namespace %s: bundle-version %q, want %q", ns, cm.Annotations["mayfly.dev/bundle-version"], want.BundleVersion)
	case cm.Labels["app.kubernetes.io/managed-by"] != "mayfly-ca":
		return false, fmt.Sprintf("namespace %s: labels %v", ns, cm.Labels)
	}
	return true, ""
}

func (e *env) waitConfigMap(t *testing.T, ns string, want *authority.Loaded) *corev1.ConfigMap {
	t.Helper()
	e.eventually(t, "namespace "+ns+" holds the trust bundle "+want.BundleVersion, func(ctx context.Context) (bool, string) {
		return e.configMapCheck(ctx, ns, want)
	})
	cm, err := e.c.Client.CoreV1().ConfigMaps(ns).Get(context.Background(), bundle.ConfigMapName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return cm
}

// waitEveryNamespace waits until every namespace (that sel matches) holds
// the bundle.
func (e *env) waitEveryNamespace(t *testing.T, want *authority.Loaded) {
	t.Helper()
	e.eventually(t, "every namespace holds the trust bundle "+want.BundleVersion, func(ctx context.Context) (bool, string) {
		list, err := e.c.Client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		if len(list.Items) < 4 {
			return false, fmt.Sprintf("only %d namespaces", len(list.Items))
		}
		for _, ns := range list.Items {
			if ok, saw := e.configMapCheck(ctx, ns.Name, want); !ok {
				return false, saw
			}
		}
		return true, ""
	})
}

// ctbCheck reports whether the ClusterTrustBundle holds exactly want's roots.
func (e *env) ctbCheck(ctx context.Context, want *authority.Loaded) (bool, string) {
	ctb, err := e.c.Client.CertificatesV1().ClusterTrustBundles().Get(ctx, bundle.ClusterTrustBundleName, metav1.GetOptions{})
	if err != nil {
		return false, err.Error()
	}
	if ctb.Spec.SignerName != bundle.SignerName {
		return false, fmt.Sprintf("signerName %q", ctb.Spec.SignerName)
	}
	got, err := decodeStrict(ctb.Spec.TrustBundle)
	if err != nil {
		return false, err.Error()
	}
	if len(got) != len(want.Bundle) {
		return false, fmt.Sprintf("%d roots, want %d", len(got), len(want.Bundle))
	}
	for i := range got {
		if !got[i].Equal(want.Bundle[i]) {
			return false, fmt.Sprintf("root %d is %s, want %s", i, got[i].Subject, want.Bundle[i].Subject)
		}
	}
	return true, ""
}

// decodeStrict decodes PEM certificates and fails on headers or other data.
func decodeStrict(s string) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	rest := []byte(s)
	for len(bytes.TrimSpace(rest)) > 0 {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		switch {
		case blk == nil:
			return nil, errors.New("trailing data that is not PEM")
		case blk.Type != "CERTIFICATE":
			return nil, fmt.Errorf("PEM block of type %q", blk.Type)
		case len(blk.Headers) > 0:
			return nil, fmt.Errorf("PEM headers %v", blk.Headers)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

func slicesOfKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

func countPEM(s string) int {
	certs, err := decodeStrict(s)
	if err != nil {
		return -1
	}
	return len(certs)
}

func TestBundleDistribution(t *testing.T) {
	t.Parallel()
	c := cluster.Start(t)
	ca1, ca2 := testca.New(t), testca.New(t)
	v1 := loaded("v1", ca1.Root)
	src := fakeauthority.New(v1, nil)
	// A namespace that exists before the controller starts.
	e := &env{c: c}
	e.createNamespace(t, "team-a", nil)
	e = start(t, c, src, nil)
	ctx := context.Background()
	cms := func(ns string) interface {
		Get(context.Context, string, metav1.GetOptions) (*corev1.ConfigMap, error)
		Update(context.Context, *corev1.ConfigMap, metav1.UpdateOptions) (*corev1.ConfigMap, error)
		Delete(context.Context, string, metav1.DeleteOptions) error
	} {
		return c.Client.CoreV1().ConfigMaps(ns)
	}

	t.Run("existing_namespaces_get_the_configmap", func(t *testing.T) {
		e.waitEveryNamespace(t, v1)
		e.waitConfigMap(t, "team-a", v1)
		e.waitConfigMap(t, "kube-system", v1)
	})

	t.Run("clustertrustbundle_is_created_at_start", func(t *testing.T) {
		// No bundle change was signalled: the first reconcile creates it.
		e.eventually(t, "the ClusterTrustBundle holds v1", func(ctx context.Context) (bool, string) { return e.ctbCheck(ctx, v1) })
		ctb, err := c.Client.CertificatesV1().ClusterTrustBundles().Get(ctx, bundle.ClusterTrustBundleName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if ctb.Spec.TrustBundle != string(pki.EncodeCertificates(ca1.Root)) {
			t.Errorf("trustBundle = %q, want the PEM of the root", ctb.Spec.TrustBundle)
		}
	})

	t.Run("namespace_created_later_gets_the_configmap", func(t *testing.T) {
		e.createNamespace(t, "team-late", map[string]string{"any": "label"})
		e.waitConfigMap(t, "team-late", v1)
	})

	t.Run("edited_configmap_is_restored", func(t *testing.T) {
		cm := e.waitConfigMap(t, "team-a", v1)
		cm.Data[bundle.ConfigMapKey] = string(pki.EncodeCertificates(testca.New(t).Root))
		cm.Data["extra"] = "planted"
		cm.BinaryData = map[string][]byte{"blob": {1, 2, 3}}
		cm.Annotations["mayfly.dev/bundle-version"] = "forged"
		if _, err := cms("team-a").Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("edit: %v", err)
		}
		restored := e.waitConfigMap(t, "team-a", v1)
		if restored.UID != cm.UID {
			t.Errorf("the ConfigMap was replaced (uid %s -> %s), want it updated in place", cm.UID, restored.UID)
		}
	})

	t.Run("deleted_configmap_is_recreated", func(t *testing.T) {
		old := e.waitConfigMap(t, "team-late", v1)
		if err := cms("team-late").Delete(ctx, bundle.ConfigMapName, metav1.DeleteOptions{}); err != nil {
			t.Fatalf("delete: %v", err)
		}
		e.eventually(t, "the deleted ConfigMap is re-created", func(ctx context.Context) (bool, string) {
			cm, err := cms("team-late").Get(ctx, bundle.ConfigMapName, metav1.GetOptions{})
			if err != nil {
				return false, err.Error()
			}
			if cm.UID == old.UID {
				return false, "still the old object"
			}
			return e.configMapCheck(ctx, "team-late", v1)
		})
	})

	t.Run("deleted_clustertrustbundle_is_recreated", func(t *testing.T) {
		old, err := c.Client.CertificatesV1().ClusterTrustBundles().Get(ctx, bundle.ClusterTrustBundleName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Client.CertificatesV1().ClusterTrustBundles().Delete(ctx, bundle.ClusterTrustBundleName, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		e.eventually(t, "the ClusterTrustBundle is re-created", func(ctx context.Context) (bool, string) {
			ctb, err := c.Client.CertificatesV1().ClusterTrustBundles().Get(ctx, bundle.ClusterTrustBundleName, metav1.GetOptions{})
			if err != nil {
				return false, err.Error()
			}
			if ctb.UID == old.UID {
				return false, "still the old object"
			}
			return e.ctbCheck(ctx, v1)
		})
	})

	t.Run("bundle_change_updates_everything", func(t *testing.T) {
		v2 := loaded("v2", ca1.Root, ca2.Root)
		src.Set(v2, nil)
		e.waitEveryNamespace(t, v2)
		e.eventually(t, "the ClusterTrustBundle holds both roots", func(ctx context.Context) (bool, string) { return e.ctbCheck(ctx, v2) })
		ctb, err := c.Client.CertificatesV1().ClusterTrustBundles().Get(ctx, bundle.ClusterTrustBundleName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if want := string(pki.EncodeCertificates(ca1.Root, ca2.Root)); ctb.Spec.TrustBundle != want {
			t.Errorf("trustBundle = %q, want %q", ctb.Spec.TrustBundle, want)
		}
		if ctb.Labels["app.kubernetes.io/managed-by"] != "mayfly-ca" {
			t.Errorf("ClusterTrustBundle labels = %v", ctb.Labels)
		}

		// And back to one root: the old root is dropped everywhere.
		v3 := loaded("v3", ca2.Root)
		src.Set(v3, nil)
		e.waitEveryNamespace(t, v3)
		e.eventually(t, "the ClusterTrustBundle holds only the new root", func(ctx context.Context) (bool, string) { return e.ctbCheck(ctx, v3) })
	})
}

func TestBundleNamespaceSelector(t *testing.T) {
	t.Parallel()
	c := cluster.Start(t)
	v1 := loaded("v1", testca.New(t).Root)
	trust := map[string]string{"mayfly.dev/trust": "yes"}
	e := &env{c: c}
	e.createNamespace(t, "trusted-early", trust)
	e.createNamespace(t, "untrusted", map[string]string{"mayfly.dev/trust": "no"})
	e.createNamespace(t, "unlabelled", nil)
	e = start(t, c, fakeauthority.New(v1, nil), labels.SelectorFromSet(labels.Set(trust)))
	ctx := context.Background()

	e.waitConfigMap(t, "trusted-early", v1)
	e.createNamespace(t, "trusted-late", trust)
	e.waitConfigMap(t, "trusted-late", v1)

	// The controller runs one worker: once it has looked up the other
	// namespaces and then reconciled a namespace created after that, it
	// has decided on them.
	for _, ns := range []string{"untrusted", "unlabelled", "default", "kube-system"} {
		e.eventually(t, "the controller looked at namespace "+ns, func(context.Context) (bool, string) {
			return e.client.lookedUp(ns), "not yet"
		})
	}
	e.createNamespace(t, "trusted-barrier", trust)
	e.waitConfigMap(t, "trusted-barrier", v1)
	list, err := c.Client.CoreV1().ConfigMaps("").List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + bundle.ConfigMapName})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, cm := range list.Items {
		got = append(got, cm.Namespace)
	}
	if want := map[string]bool{"trusted-early": true, "trusted-late": true, "trusted-barrier": true}; len(got) != len(want) || !want[got[0]] || !want[got[1]] || !want[got[2]] {
		t.Fatalf("ConfigMaps in namespaces %v, want only in %v", got, slicesOfBoolKeys(want))
	}

	// Labelling a namespace selects it.
	ns, err := c.Client.CoreV1().Namespaces().Get(ctx, "unlabelled", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ns.Labels = trust
	if _, err := c.Client.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitConfigMap(t, "unlabelled", v1)
}

func slicesOfBoolKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestBundleSourceNotReady(t *testing.T) {
	t.Parallel()
	c := cluster.Start(t)
	ctx := context.Background()
	errNotReady := fmt.Errorf("%w: state not loaded yet", authority.ErrNotReady)
	src := fakeauthority.New(nil, errNotReady)
	e := &env{c: c}
	e.createNamespace(t, "team-a", nil)
	e = start(t, c, src, nil)

	assertNothingWritten := func(t *testing.T) {
		t.Helper()
		list, err := c.Client.CoreV1().ConfigMaps("").List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + bundle.ConfigMapName})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Items) != 0 {
			t.Fatalf("%d bundle ConfigMaps written while the source was not ready (first in %s)", len(list.Items), list.Items[0].Namespace)
		}
		_, err = c.Client.CertificatesV1().ClusterTrustBundles().Get(ctx, bundle.ClusterTrustBundleName, metav1.GetOptions{})
		if !apierrors.IsNotFound(err) {
			t.Fatalf("ClusterTrustBundle while the source was not ready: err = %v", err)
		}
	}

	t.Run("nothing_is_written_before_ready", func(t *testing.T) {
		// Every reconcile asks the source first; wait for several rounds
		// of them (the first pass and retries) before looking.
		e.eventually(t, "the controller tried every namespace and retried", func(context.Context) (bool, string) {
			n := src.Calls()
			return n >= 20, fmt.Sprintf("%d calls of Current", n)
		})
		assertNothingWritten(t)
	})

	v1 := loaded("v1", testca.New(t).Root)
	t.Run("ready_source_is_published", func(t *testing.T) {
		src.Set(v1, nil)
		e.waitEveryNamespace(t, v1)
		e.eventually(t, "the ClusterTrustBundle holds v1", func(ctx context.Context) (bool, string) { return e.ctbCheck(ctx, v1) })
	})

	t.Run("not_ready_again_keeps_what_was_published", func(t *testing.T) {
		before := src.Calls()
		src.Set(nil, errNotReady)
		// The change triggers a reconcile of every namespace and the
		// ClusterTrustBundle; wait until they and some retries ran.
		e.eventually(t, "the controller reconciled after the source failed", func(context.Context) (bool, string) {
			n := src.Calls() - before
			return n >= 20, fmt.Sprintf("%d calls of Current", n)
		})
		e.waitEveryNamespace(t, v1)
		if ok, saw := e.ctbCheck(ctx, v1); !ok {
			t.Fatalf("ClusterTrustBundle changed while the source was not ready: %s", saw)
		}
		// A deleted ConfigMap is not re-created empty meanwhile.
		if err := c.Client.CoreV1().ConfigMaps("team-a").Delete(ctx, bundle.ConfigMapName, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		before = src.Calls()
		e.eventually(t, "the controller reconciled after the delete", func(context.Context) (bool, string) {
			n := src.Calls() - before
			return n >= 10, fmt.Sprintf("%d calls of Current", n)
		})
		if _, err := c.Client.CoreV1().ConfigMaps("team-a").Get(ctx, bundle.ConfigMapName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Fatalf("ConfigMap in team-a while the source was not ready: err = %v", err)
		}

		// Ready again: it comes back.
		src.Set(v1, nil)
		e.waitConfigMap(t, "team-a", v1)
	})
}
