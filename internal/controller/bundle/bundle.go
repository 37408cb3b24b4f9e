// Package bundle distributes the CA's trust bundle inside the cluster: a
// ConfigMap mayfly-trust-bundle (key ca.crt) in every selected namespace,
// restored when edited or deleted, and a ClusterTrustBundle for the signer
// mayfly.dev/workload that pods can project.
package bundle

import (
	"context"
	"encoding/pem"
	"fmt"
	"strings"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/controller/changes"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

const (
	// ConfigMapName is the name of the trust bundle ConfigMap in each
	// selected namespace.
	ConfigMapName = "mayfly-trust-bundle"
	// ConfigMapKey holds the PEM roots.
	ConfigMapKey = "ca.crt"
	// SignerName is the KEP-4317 signer of mayfly workload certificates.
	SignerName = "mayfly.dev/workload"
	// ClusterTrustBundleName is the name of our ClusterTrustBundle; names of
	// a signer's bundles must start with "<signer with / as :>:".
	ClusterTrustBundleName = "mayfly.dev:workload:roots"
	// clusterKey is the request name that reconciles the ClusterTrustBundle.
	clusterKey = "\x00cluster"
	managedBy  = "mayfly-ca"
)

// Source is the authority whose bundle is distributed.
type Source interface {
	Current() (*authority.Loaded, error)
	Subscribe() (<-chan struct{}, func())
}

// Reconciler keeps the bundle objects in sync.
type Reconciler struct {
	Client client.Client
	Source Source
	// NamespaceSelector selects the namespaces that get the ConfigMap.
	NamespaceSelector labels.Selector
	// ClusterTrustBundle enables the ClusterTrustBundle (default on).
	ClusterTrustBundle bool
}

// SetupWithManager registers the controller. The manager's cache should
// be limited to ConfigMaps named ConfigMapName (see CacheOptions).
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.NamespaceSelector == nil {
		r.NamespaceSelector = labels.Everything()
	}
	changed := make(chan event.GenericEvent, 1)
	if err := mgr.Add(changes.Forward(r.Source, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: clusterKey}}, changed, true)); err != nil {
		return err
	}
	isOurs := predicate.NewPredicateFuncs(func(o client.Object) bool { return o.GetName() == ConfigMapName })
	b := builder.ControllerManagedBy(mgr).
		Named("trust-bundle").
		For(&corev1.Namespace{}).
		Watches(&corev1.ConfigMap{}, handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
			return []reconcile.Request{{NamespacedName: types.NamespacedName{Name: o.GetNamespace()}}}
		}), builder.WithPredicates(isOurs)).
		WatchesRawSource(source.Channel(changed, handler.EnqueueRequestsFromMapFunc(r.all)))
	if r.ClusterTrustBundle {
		b = b.Watches(&certificatesv1.ClusterTrustBundle{}, handler.EnqueueRequestsFromMapFunc(func(context.Context, client.Object) []reconcile.Request {
			return []reconcile.Request{{NamespacedName: types.NamespacedName{Name: clusterKey}}}
		}), builder.WithPredicates(predicate.NewPredicateFuncs(func(o client.Object) bool { return o.GetName() == ClusterTrustBundleName })))
	}
	return b.Complete(r)
}

// all enqueues every namespace and the ClusterTrustBundle.
func (r *Reconciler) all(ctx context.Context, _ client.Object) []reconcile.Request {
	var list corev1.NamespaceList
	if err := r.Client.List(ctx, &list); err != nil {
		return []reconcile.Request{{NamespacedName: types.NamespacedName{Name: clusterKey}}}
	}
	out := make([]reconcile.Request, 0, len(list.Items)+1)
	for _, ns := range list.Items {
		out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Name: ns.Name}})
	}
	return append(out, reconcile.Request{NamespacedName: types.NamespacedName{Name: clusterKey}})
}

// Reconcile brings one namespace's ConfigMap (or the ClusterTrustBundle)
// in line with the current bundle.
func (r *Reconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	l, err := r.Source.Current()
	if err != nil {
		// Not ready: never publish an empty or stale bundle; try later.
		return reconcile.Result{}, fmt.Errorf("trust bundle not available: %w", err)
	}
	bundlePEM := string(pki.EncodeCertificates(l.Bundle...))
	if req.Name == clusterKey {
		if !r.ClusterTrustBundle {
			return reconcile.Result{}, nil
		}
		return reconcile.Result{}, r.reconcileCTB(ctx, bundlePEM)
	}
	var ns corev1.Namespace
	if err := r.Client.Get(ctx, types.NamespacedName{Name: req.Name}, &ns); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if ns.DeletionTimestamp != nil || !r.NamespaceSelector.Matches(labels.Set(ns.Labels)) {
		return reconcile.Result{}, nil
	}
	var cm corev1.ConfigMap
	err = r.Client.Get(ctx, types.NamespacedName{Namespace: ns.Name, Name: ConfigMapName}, &cm)
	switch {
	case apierrors.IsNotFound(err):
		cm = corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: ConfigMapName, Labels: ourLabels(), Annotations: map[string]string{"mayfly.dev/bundle-version": l.BundleVersion}},
			Data:       map[string]string{ConfigMapKey: bundlePEM},
		}
		return reconcile.Result{}, client.IgnoreAlreadyExists(r.Client.Create(ctx, &cm))
	case err != nil:
		return reconcile.Result{}, err
	}
	if cm.Data[ConfigMapKey] == bundlePEM && len(cm.Data) == 1 && len(cm.BinaryData) == 0 && cm.Annotations["mayfly.dev/bundle-version"] == l.BundleVersion {
		return reconcile.Result{}, nil
	}
	cm.Data = map[string]string{ConfigMapKey: bundlePEM}
	cm.BinaryData = nil
	if cm.Labels == nil {
		cm.Labels = map[string]string{}
	}
	for k, v := range ourLabels() {
		cm.Labels[k] = v
	}
	if cm.Annotations == nil {
		cm.Annotations = map[string]string{}
	}
	cm.Annotations["mayfly.dev/bundle-version"] = l.BundleVersion
	return reconcile.Result{}, r.Client.Update(ctx, &cm)
}

func (r *Reconciler) reconcileCTB(ctx context.Context, bundlePEM string) error {
	want := ctbContent(bundlePEM)
	var ctb certificatesv1.ClusterTrustBundle
	err := r.Client.Get(ctx, types.NamespacedName{Name: ClusterTrustBundleName}, &ctb)
	switch {
	case apierrors.IsNotFound(err):
		ctb = certificatesv1.ClusterTrustBundle{
			ObjectMeta: metav1.ObjectMeta{Name: ClusterTrustBundleName, Labels: ourLabels()},
			Spec:       certificatesv1.ClusterTrustBundleSpec{SignerName: SignerName, TrustBundle: want},
		}
		return client.IgnoreAlreadyExists(r.Client.Create(ctx, &ctb))
	case err != nil:
		return err
	}
	if ctb.Spec.TrustBundle == want {
		return nil
	}
	ctb.Spec.TrustBundle = want
	return r.Client.Update(ctx, &ctb)
}

// ctbContent re-encodes PEM without headers, as the API requires.
func ctbContent(bundlePEM string) string {
	var b strings.Builder
	rest := []byte(bundlePEM)
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		b.Write(pem.EncodeToMemory(&pem.Block{Type: blk.Type, Bytes: blk.Bytes}))
	}
	return b.String()
}

func ourLabels() map[string]string {
	return map[string]string{"app.kubernetes.io/managed-by": managedBy}
}
