// Package workloadcert is the controller of WorkloadCertificate objects
// (mayfly.dev/v1alpha1): it generates a key, has the CA sign an X.509-SVID
// of the object's ServiceAccount, and keeps both, with the trust bundle, in
// a kubernetes.io/tls Secret of the same namespace. It renews the
// certificate at half of its life (±10%), and repairs the Secret when it is
// deleted or edited or when the trust bundle changes. ca.crt follows a new
// trust bundle at once, without a new certificate, also while the
// certificate cannot be renewed (invalid spec, ServiceAccount gone): a new
// root activates only once every such Secret holds it
// (internal/controller/bundlegate). It never overwrites a Secret that it
// does not control.
//
// The control plane writes these Secrets, never the node agents
// (docs/delivery.md).
package workloadcert

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	mayflyv1alpha1 "github.com/mayfly-pki/mayfly/api/mayfly/v1alpha1"
	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/controller/changes"
	"github.com/mayfly-pki/mayfly/internal/policy"
	"github.com/mayfly-pki/mayfly/pkg/pki"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// DefaultClusterDomain is the cluster DNS domain when ClusterDomain is empty.
const DefaultClusterDomain = "cluster.local"

// Retry intervals.
const (
	// caNotReadyRetry is how soon a WorkloadCertificate is retried while the
	// CA does not issue.
	caNotReadyRetry = 10 * time.Second
	// notOwnedRetry is how soon a WorkloadCertificate whose Secret name is
	// taken is retried (the foreign Secret is not in the cache, so its
	// deletion is not seen).
	notOwnedRetry = time.Minute
	// cacheLagRetry is how soon to retry when the cache is behind a write.
	cacheLagRetry = 500 * time.Millisecond
	// maxRequeue bounds the wait until the next look at an object, against
	// clock jumps.
	maxRequeue = time.Hour
)

// Authority is the CA whose signing authority and trust bundle the
// controller uses; *authority.Manager is one.
type Authority interface {
	Current() (*authority.Loaded, error)
}

// Subscriber is optionally implemented by an Authority: the returned
// channel receives a value after every change of the state in force.
// With it, a changed trust bundle reaches every Secret at once; without it,
// at each object's next reconcile.
type Subscriber = changes.Subscriber

// Reconciler reconciles WorkloadCertificates into Secrets.
type Reconciler struct {
	// Client reads through the manager's cache and writes to the API.
	Client client.Client
	// APIReader reads uncached; default the manager's. It tells a Secret
	// that the cache has not seen yet from one that is not ours.
	APIReader client.Reader
	// Authority signs; its Loaded.Authority issues, Loaded.Bundle is ca.crt.
	Authority Authority
	// TrustDomain of the SPIFFE IDs issued.
	TrustDomain spiffeid.TrustDomain
	// ClusterDomain is the suffix allowed after <svc>.<ns>.svc in DNS names
	// (default cluster.local).
	ClusterDomain string
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Rand is the source of keys, serials and jitter (default crypto/rand).
	Rand io.Reader
	// Logger receives errors and the audit lines (default: discarded).
	Logger *slog.Logger
	// Registerer receives the metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// Policy is the renewal policy (default rotate.DefaultPolicy()).
	Policy *rotate.Policy
	// MaxConcurrentReconciles is the number of workers (default 4).
	MaxConcurrentReconciles int
	// Namespaces, when not empty, are the only namespaces where Secrets
	// are written (the CA's RBAC grants Secrets there alone); a
	// WorkloadCertificate elsewhere fails with NamespaceNotEnabled. Empty:
	// every namespace. Give the manager's cache SecretCache(Namespaces...).
	Namespaces []string

	metrics *metrics
	taints  taintSeen
}

// SecretCache limits the manager's cache of Secrets to those this
// controller writes, in namespaces (every namespace when none is given).
// Use it in cache.Options.ByObject for &corev1.Secret{}: the CA then never
// holds every Secret of the cluster in memory, and with namespaces it
// lists and watches Secrets only where its RBAC grants them. A foreign
// Secret of the same name is still detected (by the failed create).
func SecretCache(namespaces ...string) cache.ByObject {
	req, err := labels.NewRequirement(mayflyv1alpha1.LabelWorkloadCertificate, selection.Exists, nil)
	if err != nil {
		panic(err) // a constant, valid label key
	}
	by := cache.ByObject{Label: labels.NewSelector().Add(*req)}
	if len(namespaces) > 0 {
		by.Namespaces = map[string]cache.Config{}
		for _, ns := range namespaces {
			by.Namespaces[ns] = cache.Config{}
		}
	}
	return by
}

// enabled tells whether Secrets may be written in ns.
func (r *Reconciler) enabled(ns string) bool {
	return len(r.Namespaces) == 0 || slices.Contains(r.Namespaces, ns)
}

// SetupWithManager registers the controller. The manager's scheme must
// hold mayflyv1alpha1 and core/v1; its cache should limit Secrets with
// SecretCache. ServiceAccounts and Services are watched as metadata only.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Authority == nil {
		return errors.New("workloadcert: Authority is nil")
	}
	if r.TrustDomain.IsZero() {
		return errors.New("workloadcert: TrustDomain is empty")
	}
	if gvk := mayflyv1alpha1.GroupVersion.WithKind("WorkloadCertificate"); !mgr.GetScheme().Recognizes(gvk) {
		return fmt.Errorf("workloadcert: the manager's scheme lacks %s: add mayflyv1alpha1.AddToScheme", gvk)
	}
	r.defaults()
	if r.Client == nil {
		r.Client = mgr.GetClient()
	}
	if r.APIReader == nil {
		r.APIReader = mgr.GetAPIReader()
	}
	m, err := newMetrics(r.Registerer)
	if err != nil {
		return fmt.Errorf("workloadcert: metrics: %w", err)
	}
	r.metrics = m

	b := builder.ControllerManagedBy(mgr).
		Named("workloadcertificate").
		WithOptions(controller.Options{MaxConcurrentReconciles: r.MaxConcurrentReconciles}).
		// Status writes of our own do not need another reconcile; spec,
		// label and annotation changes do (touching an annotation forces a
		// look).
		For(&mayflyv1alpha1.WorkloadCertificate{}, builder.WithPredicates(predicate.Or(
			predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}, predicate.LabelChangedPredicate{}))).
		Owns(&corev1.Secret{}).
		Watches(&corev1.ServiceAccount{}, handler.EnqueueRequestsFromMapFunc(r.forServiceAccount), builder.OnlyMetadata).
		Watches(&corev1.Service{}, handler.EnqueueRequestsFromMapFunc(r.forService), builder.OnlyMetadata)
	if sub, ok := r.Authority.(Subscriber); ok {
		changed := make(chan event.GenericEvent, 1)
		if err := mgr.Add(changes.Forward(sub, &mayflyv1alpha1.WorkloadCertificate{}, changed, false)); err != nil {
			return err
		}
		b = b.WatchesRawSource(source.Channel(changed, handler.EnqueueRequestsFromMapFunc(r.all)))
	}
	return b.Complete(r)
}

func (r *Reconciler) defaults() {
	if r.ClusterDomain == "" {
		r.ClusterDomain = DefaultClusterDomain
	}
	if r.Now == nil {
		r.Now = time.Now
	}
	if r.Rand == nil {
		r.Rand = rand.Reader
	}
	if r.Logger == nil {
		r.Logger = slog.New(slog.DiscardHandler)
	}
	if r.Policy == nil {
		p := rotate.DefaultPolicy()
		r.Policy = &p
	}
	if r.MaxConcurrentReconciles <= 0 {
		r.MaxConcurrentReconciles = 4
	}
	if r.metrics == nil {
		r.metrics, _ = newMetrics(nil) // cannot fail without a registerer
	}
}

// all enqueues every WorkloadCertificate.
func (r *Reconciler) all(ctx context.Context, _ client.Object) []reconcile.Request {
	return r.enqueue(ctx, "", func(*mayflyv1alpha1.WorkloadCertificate) bool { return true })
}

func (r *Reconciler) forServiceAccount(ctx context.Context, o client.Object) []reconcile.Request {
	return r.enqueue(ctx, o.GetNamespace(), func(wc *mayflyv1alpha1.WorkloadCertificate) bool {
		return wc.Spec.ServiceAccountName == o.GetName()
	})
}

func (r *Reconciler) forService(ctx context.Context, o client.Object) []reconcile.Request {
	return r.enqueue(ctx, o.GetNamespace(), func(wc *mayflyv1alpha1.WorkloadCertificate) bool {
		for _, n := range wc.Spec.DNSNames {
			if svc, err := policy.ServiceDNSName(n, wc.Namespace, r.ClusterDomain); err == nil && svc == o.GetName() {
				return true
			}
		}
		return false
	})
}

func (r *Reconciler) enqueue(ctx context.Context, ns string, match func(*mayflyv1alpha1.WorkloadCertificate) bool) []reconcile.Request {
	var list mayflyv1alpha1.WorkloadCertificateList
	if err := r.Client.List(ctx, &list, client.InNamespace(ns)); err != nil {
		r.Logger.ErrorContext(ctx, "listing WorkloadCertificates", "namespace", ns, "error", err)
		return nil
	}
	var out []reconcile.Request
	for i := range list.Items {
		if match(&list.Items[i]) {
			out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
		}
	}
	return out
}

// Reconcile brings one WorkloadCertificate's Secret and status in line.
func (r *Reconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	r.defaults()
	var wc mayflyv1alpha1.WorkloadCertificate
	if err := r.Client.Get(ctx, req.NamespacedName, &wc); err != nil {
		if apierrors.IsNotFound(err) {
			r.metrics.forget(req.NamespacedName)
		}
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if wc.DeletionTimestamp != nil {
		r.metrics.forget(req.NamespacedName)
		return reconcile.Result{}, nil // the garbage collector deletes the Secret
	}
	before := wc.Status.DeepCopy()
	now := r.Now()
	res, err := r.reconcile(ctx, &wc, now)
	r.metrics.observe(&wc)
	wc.Status.ObservedGeneration = wc.Generation
	if !equality.Semantic.DeepEqual(before, &wc.Status) {
		if uerr := r.Client.Status().Update(ctx, &wc); uerr != nil {
			if apierrors.IsConflict(uerr) || apierrors.IsNotFound(uerr) {
				// The object changed (or went) meanwhile; its own event
				// reconciles it again if it still exists.
				return reconcile.Result{RequeueAfter: cacheLagRetry}, err
			}
			return reconcile.Result{}, errors.Join(err, fmt.Errorf("updating status: %w", uerr))
		}
	}
	return res, err
}

// reconcile does the work and records its outcome in wc.Status.
func (r *Reconciler) reconcile(ctx context.Context, wc *mayflyv1alpha1.WorkloadCertificate, now time.Time) (reconcile.Result, error) {
	if !r.enabled(wc.Namespace) {
		// No Secret access here: nothing to write, nothing to refresh. A
		// change of the CA's configuration restarts it, which retriggers.
		r.fail(wc, now, mayflyv1alpha1.ReasonNamespaceNotEnabled, fmt.Sprintf(
			"the CA writes WorkloadCertificate Secrets only in the namespaces it is given (kubernetes.workloadCertificates.namespaces; Helm value workloadCertificates.namespaces), and %s is not one of them; ask the operator to add it", wc.Namespace))
		return reconcile.Result{}, nil
	}
	spec, ferrs, err := validateSpec(ctx, wc, r.ClusterDomain, r)
	if err != nil {
		return reconcile.Result{}, err
	}
	if len(ferrs) > 0 {
		r.fail(wc, now, mayflyv1alpha1.ReasonInvalidSpec, "the spec is invalid; fix it: "+ferrs.Error())
		return reconcile.Result{}, r.refreshBundle(ctx, wc) // a change of the object or of a Service retriggers
	}
	id, err := pki.WorkloadID(r.TrustDomain, wc.Namespace, wc.Spec.ServiceAccountName)
	if err != nil {
		r.fail(wc, now, mayflyv1alpha1.ReasonInvalidSpec, "spec.serviceAccountName: "+err.Error())
		return reconcile.Result{}, r.refreshBundle(ctx, wc)
	}
	saExists, err := r.exists(ctx, "ServiceAccount", wc.Namespace, wc.Spec.ServiceAccountName)
	if err != nil {
		return reconcile.Result{}, err
	}
	if !saExists {
		r.fail(wc, now, mayflyv1alpha1.ReasonServiceAccountNotFound, fmt.Sprintf(
			"spec.serviceAccountName: ServiceAccount %q does not exist in namespace %s; create it or name an existing one", wc.Spec.ServiceAccountName, wc.Namespace))
		return reconcile.Result{}, r.refreshBundle(ctx, wc) // its creation retriggers
	}
	if err := r.deleteStaleSecrets(ctx, wc); err != nil {
		return reconcile.Result{}, err
	}

	secret, err := r.getSecret(ctx, types.NamespacedName{Namespace: wc.Namespace, Name: wc.Spec.SecretName})
	if err != nil {
		return reconcile.Result{}, err
	}
	if secret != nil && !metav1.IsControlledBy(secret, wc) {
		r.notOwned(wc, now)
		return reconcile.Result{RequeueAfter: notOwnedRetry}, nil
	}

	l, err := r.Authority.Current()
	if err != nil {
		r.caNotReady(wc, now, err)
		return reconcile.Result{RequeueAfter: caNotReadyRetry}, nil
	}
	bundlePEM := pki.EncodeCertificates(l.Bundle...)
	hash := specHash(id.String(), spec)
	cur, why, detail := inspect(secret, id.String(), hash, l.Bundle, now, func(leaf *x509.Certificate) time.Time {
		return r.renewalTime(wc, leaf, now)
	})
	renewAt := time.Time{}
	if why == renewNone {
		renewAt = r.renewalTime(wc, cur.leaf, now)
		if at, ok := r.taintDeadline(l, wc, cur.leaf, cur.chain, now); ok && !now.Before(at) {
			why, detail = renewTainted, "the chain holds a tainted authority; its re-issue time "+at.UTC().Format(time.RFC3339)+" passed"
		} else if ok && at.Before(renewAt) {
			renewAt = at
		}
	}
	if why == renewNone {
		// The certificate stays; bring ca.crt and metadata up to date.
		data := map[string][]byte{keyCert: secret.Data[keyCert], keyKey: secret.Data[keyKey], keyBundle: bundlePEM}
		if want, changed := desiredSecret(secret, wc, data, hash); changed {
			if err := r.Client.Update(ctx, want); err != nil {
				return r.writeFailed(wc, now, err)
			}
		}
		return r.ready(wc, now, cur.leaf, renewAt), nil
	}
	return r.issue(ctx, wc, now, l, secret, id, spec, hash, bundlePEM, why, detail)
}

// issue generates a key, signs, writes the Secret and the status.
func (r *Reconciler) issue(ctx context.Context, wc *mayflyv1alpha1.WorkloadCertificate, now time.Time, l *authority.Loaded, secret *corev1.Secret,
	id spiffeid.ID, spec issueSpec, hash string, bundlePEM []byte, why renewReason, detail string,
) (reconcile.Result, error) {
	key, err := pki.GenerateKey(spec.keyType, r.Rand)
	if err != nil {
		return r.issueFailed(wc, now, err)
	}
	signer := &pki.Signer{
		Authority: l.Authority,
		Now:       func() time.Time { return now },
		Rand:      r.Rand,
		Options:   signRules,
	}
	leaf, _, err := signer.Sign(pki.SignRequest{Kind: pki.KindWorkload, PublicKey: key.Public(), ID: id, DNSNames: spec.dnsNames, TTL: spec.ttl})
	if err != nil {
		return r.issueFailed(wc, now, err)
	}
	keyPEM, err := pki.MarshalPrivateKeyPEM(key)
	if err != nil {
		return r.issueFailed(wc, now, err)
	}
	data := map[string][]byte{
		keyCert:   pki.EncodeCertificates(l.Authority.ChainFor(leaf)...),
		keyKey:    keyPEM,
		keyBundle: bundlePEM,
	}
	want, _ := desiredSecret(secret, wc, data, hash)
	if secret == nil {
		err = r.Client.Create(ctx, want)
	} else {
		err = r.Client.Update(ctx, want)
	}
	if err != nil {
		if apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) {
			// Someone raced us (another worker, a user, a stale read):
			// look again; ownership is checked then.
			return reconcile.Result{RequeueAfter: cacheLagRetry}, nil
		}
		return r.writeFailed(wc, now, err)
	}
	renewAt := r.nextRenewal(leaf, now)
	r.metrics.issued.WithLabelValues(resultIssued).Inc()
	r.Logger.InfoContext(ctx, "audit",
		"event", "issue", "decision", "allow", "kind", string(pki.KindWorkload), "op", "WorkloadCertificate",
		"spiffe_id", id.String(), "serial", serialHex(leaf), "not_after", leaf.NotAfter.UTC().Format(time.RFC3339),
		"dns_names", spec.dnsNames, "key_type", string(spec.keyType),
		"secret_namespace", want.Namespace, "secret_name", want.Name, "workload_certificate", wc.Name,
		"reason", string(why), "detail", detail)
	return r.ready(wc, now, leaf, renewAt), nil
}

// refreshBundle brings ca.crt of every Secret wc controls up to the current
// trust bundle while its certificate cannot be renewed (the spec is invalid,
// the ServiceAccount is gone): a new root must reach every Secret before it
// signs, whatever becomes of the certificate in it. The certificate and
// key stay as they are.
func (r *Reconciler) refreshBundle(ctx context.Context, wc *mayflyv1alpha1.WorkloadCertificate) error {
	l, err := r.Authority.Current()
	if err != nil {
		return nil // nothing to publish; the CA's readiness retriggers
	}
	bundlePEM := pki.EncodeCertificates(l.Bundle...)
	var list corev1.SecretList
	if err := r.Client.List(ctx, &list, client.InNamespace(wc.Namespace), client.MatchingLabels{mayflyv1alpha1.LabelWorkloadCertificate: wc.Name}); err != nil {
		return err
	}
	for i := range list.Items {
		s := &list.Items[i]
		if !metav1.IsControlledBy(s, wc) || s.DeletionTimestamp != nil || bytes.Equal(s.Data[keyBundle], bundlePEM) {
			continue
		}
		s = s.DeepCopy()
		if s.Data == nil {
			s.Data = map[string][]byte{}
		}
		s.Data[keyBundle] = bundlePEM
		if err := r.Client.Update(ctx, s); err != nil {
			return fmt.Errorf("updating ca.crt of Secret %s/%s: %w", s.Namespace, s.Name, err)
		}
	}
	return nil
}

// getSecret reads the Secret from the cache and, when the cache does not
// hold it, from the API: the cache holds only Secrets with our label, so a
// foreign Secret of that name (or ours, stripped of the label, or not yet
// seen by the cache) is found there. It returns nil when there is none.
func (r *Reconciler) getSecret(ctx context.Context, key types.NamespacedName) (*corev1.Secret, error) {
	s := &corev1.Secret{}
	err := r.Client.Get(ctx, key, s)
	if apierrors.IsNotFound(err) {
		err = r.APIReader.Get(ctx, key, s)
	}
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading Secret %s: %w", key, err)
	}
	return s, nil
}

// renewalTime returns when leaf is due: the time recorded in the status
// when it is this leaf's, otherwise half of its life.
func (r *Reconciler) renewalTime(wc *mayflyv1alpha1.WorkloadCertificate, leaf *x509.Certificate, now time.Time) time.Time {
	if wc.Status.RenewalTime != nil && wc.Status.SerialNumber == serialHex(leaf) {
		return wc.Status.RenewalTime.Time
	}
	d := r.Policy.Next(&rotate.Validity{NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter}, now, 0, 0)
	return d.At.Truncate(time.Second)
}

// nextRenewal draws the renewal time of a new leaf: half of its life with
// the policy's jitter.
func (r *Reconciler) nextRenewal(leaf *x509.Certificate, now time.Time) time.Time {
	at := r.Policy.Next(&rotate.Validity{NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter}, now, 0, r.jitter()).At
	return at.Truncate(time.Second) // the API keeps seconds; keep status comparable
}

// jitter returns a value in [-1,1] from Rand (0 when Rand fails).
func (r *Reconciler) jitter() float64 {
	var b [8]byte
	if _, err := io.ReadFull(r.Rand, b[:]); err != nil {
		return 0
	}
	u := float64(binary.BigEndian.Uint64(b[:])>>11) / float64(1<<53) // [0,1)
	return math.Max(-1, math.Min(1, 2*u-1))
}

// deleteStaleSecrets removes Secrets this object wrote under an earlier
// spec.secretName.
func (r *Reconciler) deleteStaleSecrets(ctx context.Context, wc *mayflyv1alpha1.WorkloadCertificate) error {
	var list corev1.SecretList
	if err := r.Client.List(ctx, &list, client.InNamespace(wc.Namespace), client.MatchingLabels{mayflyv1alpha1.LabelWorkloadCertificate: wc.Name}); err != nil {
		return err
	}
	for i := range list.Items {
		s := &list.Items[i]
		if s.Name == wc.Spec.SecretName || !metav1.IsControlledBy(s, wc) {
			continue
		}
		if err := r.Client.Delete(ctx, s, client.Preconditions{UID: &s.UID}); client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("deleting Secret %s/%s of the previous spec.secretName: %w", s.Namespace, s.Name, err)
		}
		r.Logger.InfoContext(ctx, "deleted Secret of the previous spec.secretName", "secret_namespace", s.Namespace, "secret_name", s.Name, "workload_certificate", wc.Name)
	}
	return nil
}

// exists reports whether a core/v1 object exists, reading metadata only
// (through the cache when the manager runs the metadata watches).
func (r *Reconciler) exists(ctx context.Context, kind, namespace, name string) (bool, error) {
	m := &metav1.PartialObjectMetadata{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: kind}}
	err := r.Client.Get(ctx, types.NamespacedName{Namespace: namespace, Name: name}, m)
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("looking up %s %s/%s: %w", kind, namespace, name, err)
	}
	return m.DeletionTimestamp == nil, nil
}

func (r *Reconciler) serviceExists(ctx context.Context, namespace, name string) (bool, error) {
	return r.exists(ctx, "Service", namespace, name)
}

// Status helpers. Each sets all three conditions.

func (r *Reconciler) setConditions(wc *mayflyv1alpha1.WorkloadCertificate, now time.Time, ready, issuing, failed metav1.ConditionStatus, reason, msg string) bool {
	changed := false
	for _, c := range []struct {
		typ string
		st  metav1.ConditionStatus
	}{{mayflyv1alpha1.ConditionReady, ready}, {mayflyv1alpha1.ConditionIssuing, issuing}, {mayflyv1alpha1.ConditionFailed, failed}} {
		if meta.SetStatusCondition(&wc.Status.Conditions, metav1.Condition{
			Type: c.typ, Status: c.st, Reason: reason, Message: msg,
			ObservedGeneration: wc.Generation, LastTransitionTime: metav1.NewTime(now),
		}) {
			changed = true
		}
	}
	return changed
}

// fail records a condition the user must fix; the existing Secret stays
// (and expires) untouched.
func (r *Reconciler) fail(wc *mayflyv1alpha1.WorkloadCertificate, now time.Time, reason, msg string) {
	wasFailed := meta.IsStatusConditionTrue(wc.Status.Conditions, mayflyv1alpha1.ConditionFailed) &&
		meta.FindStatusCondition(wc.Status.Conditions, mayflyv1alpha1.ConditionFailed).Message == msg
	r.setConditions(wc, now, metav1.ConditionFalse, metav1.ConditionFalse, metav1.ConditionTrue, reason, msg)
	if !wasFailed {
		r.metrics.issued.WithLabelValues(resultDenied).Inc()
		r.Logger.Warn("audit", "event", "deny", "decision", "deny", "kind", string(pki.KindWorkload), "op", "WorkloadCertificate",
			"workload_certificate", wc.Name, "namespace", wc.Namespace, "reason", reason, "detail", msg)
	}
}

func (r *Reconciler) notOwned(wc *mayflyv1alpha1.WorkloadCertificate, now time.Time) {
	r.fail(wc, now, mayflyv1alpha1.ReasonSecretNotOwned, fmt.Sprintf(
		"Secret %s/%s exists and is not controlled by this WorkloadCertificate; it is left untouched. Delete that Secret, or set spec.secretName to a free name",
		wc.Namespace, wc.Spec.SecretName))
}

func (r *Reconciler) caNotReady(wc *mayflyv1alpha1.WorkloadCertificate, now time.Time, err error) {
	msg := fmt.Sprintf("waiting for the CA to issue (retrying every %s): %v", caNotReadyRetry, err)
	if meta.IsStatusConditionTrue(wc.Status.Conditions, mayflyv1alpha1.ConditionReady) &&
		wc.Status.NotAfter != nil && now.Before(wc.Status.NotAfter.Time) &&
		(wc.Status.RenewalTime == nil || now.Before(wc.Status.RenewalTime.Time)) {
		// The Secret was fine when last seen and is not due: keep Ready.
		meta.SetStatusCondition(&wc.Status.Conditions, metav1.Condition{Type: mayflyv1alpha1.ConditionIssuing, Status: metav1.ConditionTrue,
			Reason: mayflyv1alpha1.ReasonCANotReady, Message: msg, ObservedGeneration: wc.Generation, LastTransitionTime: metav1.NewTime(now)})
		return
	}
	if r.setConditions(wc, now, metav1.ConditionFalse, metav1.ConditionTrue, metav1.ConditionFalse, mayflyv1alpha1.ReasonCANotReady, msg) {
		r.metrics.issued.WithLabelValues(resultError).Inc()
	}
}

func (r *Reconciler) issueFailed(wc *mayflyv1alpha1.WorkloadCertificate, now time.Time, err error) (reconcile.Result, error) {
	r.metrics.issued.WithLabelValues(resultError).Inc()
	r.setConditions(wc, now, metav1.ConditionFalse, metav1.ConditionTrue, metav1.ConditionFalse, mayflyv1alpha1.ReasonIssuanceFailed, "issuing failed (retrying): "+err.Error())
	return reconcile.Result{}, err // backoff from the workqueue
}

func (r *Reconciler) writeFailed(wc *mayflyv1alpha1.WorkloadCertificate, now time.Time, err error) (reconcile.Result, error) {
	return r.issueFailed(wc, now, fmt.Errorf("writing Secret %s/%s: %w", wc.Namespace, wc.Spec.SecretName, err))
}

// ready records a good Secret holding leaf and requeues at renewAt.
func (r *Reconciler) ready(wc *mayflyv1alpha1.WorkloadCertificate, now time.Time, leaf *x509.Certificate, renewAt time.Time) reconcile.Result {
	st := &wc.Status
	st.NotBefore = &metav1.Time{Time: leaf.NotBefore}
	st.NotAfter = &metav1.Time{Time: leaf.NotAfter}
	st.RenewalTime = &metav1.Time{Time: renewAt}
	st.SerialNumber = serialHex(leaf)
	if len(leaf.URIs) == 1 {
		st.SPIFFEID = leaf.URIs[0].String()
	}
	r.setConditions(wc, now, metav1.ConditionTrue, metav1.ConditionFalse, metav1.ConditionFalse, mayflyv1alpha1.ReasonIssued,
		fmt.Sprintf("Secret %s holds a certificate valid until %s, renewed at %s",
			wc.Spec.SecretName, leaf.NotAfter.UTC().Format(time.RFC3339), renewAt.UTC().Format(time.RFC3339)))
	wait := renewAt.Sub(now)
	wait = max(min(wait, maxRequeue), time.Second)
	return reconcile.Result{RequeueAfter: wait}
}

func serialHex(c *x509.Certificate) string { return c.SerialNumber.Text(16) }
