// Package pcr is mayfly's KEP-4317 signer: it issues X.509-SVIDs
// spiffe://<td>/ns/<ns>/sa/<sa> for certificates.k8s.io/v1
// PodCertificateRequests addressed to the signer mayfly.dev/workload, which
// the kubelet creates for pods with a podCertificate projected volume.
//
// Before issuing, the signer checks the pod itself (kube-apiserver checks
// the pod only for requests a node creates): it exists with spec.podUID, is
// scheduled on spec.nodeName, runs as spec.serviceAccountName and is not
// terminating; and it verifies the stub CSR. The pod and signing rules are
// internal/policy's, the same the issuer API applies. A request that fails a check
// is Denied; the kubelet never retries a Denied or Failed request for the
// same pod, so anything that may pass later (CA not ready, pod cache not
// synced, intermediate about to expire, API errors) leaves the request
// pending and retries instead.
package pcr

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
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

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/controller/changes"
	"github.com/mayfly-pki/mayfly/internal/policy"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

const (
	// DefaultSignerName is the signer of mayfly workload certificates.
	DefaultSignerName = "mayfly.dev/workload"
	// DefaultMinTTL is the shortest leaf lifetime issued; kube-apiserver
	// rejects anything below 1h.
	DefaultMinTTL = time.Hour
	// DefaultMaxTTL caps leaf lifetimes below spec.maxExpirationSeconds
	// (which defaults to 24h and may be up to 91 days).
	DefaultMaxTTL = pki.MaxWorkloadTTL
	// DefaultRetryInterval is how soon a request the CA cannot issue yet is
	// tried again (also retried at once when the authority changes).
	DefaultRetryInterval = 15 * time.Second
)

// AuthoritySource returns the signing state in force, e.g. *authority.Manager.
// If it also has Subscribe() (<-chan struct{}, func()), pending requests are
// retried as soon as the state changes.
type AuthoritySource interface {
	Current() (*authority.Loaded, error)
}

// PodSource finds pods by UID, e.g. *kubenodes.PodCache (the CA's pod
// informer). If it also has HasSynced() bool, requests wait until it has
// synced.
type PodSource interface {
	ByUID(uid string) (policy.Pod, bool)
}

// Reconciler signs PodCertificateRequests of one signer name.
type Reconciler struct {
	Client client.Client
	// APIReader reads pods from the API server, uncached; default the
	// manager's APIReader. It confirms a pod missing from Pods (or is the
	// only pod source when Pods is nil) before a request is denied.
	APIReader client.Reader
	// Authority is the CA state to sign with.
	Authority AuthoritySource
	// Pods is the pod cache; nil reads every pod through APIReader.
	Pods PodSource
	// TrustDomain of the issued SPIFFE IDs.
	TrustDomain spiffeid.TrustDomain
	// SignerName is the signer served (default DefaultSignerName).
	SignerName string
	// MinTTL is the shortest lifetime (notAfter-notBefore) issued (default
	// and minimum 1h); a request is held while the intermediate has less
	// than that left, until the CA rotates.
	MinTTL time.Duration
	// MaxTTL caps the lifetime below spec.maxExpirationSeconds (default 24h).
	MaxTTL time.Duration
	// Workers is how many requests are decided at once (default
	// DefaultWorkers); one request is never decided by two at once.
	Workers int
	// RetryInterval spaces retries of requests that cannot be issued yet
	// (default DefaultRetryInterval).
	RetryInterval time.Duration
	// Now is the clock (default time.Now); kube-apiserver rejects a
	// notBefore more than 5 minutes off its own clock.
	Now func() time.Time
	// Rand is the source of serial numbers (default crypto/rand).
	Rand io.Reader
	// Logger receives one "audit" line per decision (default discard).
	Logger *slog.Logger
	// Registerer receives mayfly_ca_podcertificaterequests_total and the
	// mayfly_ca_podcertificate_* series of what was issued per pod; nil
	// registers nothing.
	Registerer prometheus.Registerer

	requests *prometheus.CounterVec
	issued   *podCredentials
}

// Results of mayfly_ca_podcertificaterequests_total.
const (
	resultIssued = "issued"
	resultDenied = "denied"
	resultFailed = "failed"
)

// CacheByObject limits the manager's cache of PodCertificateRequests to
// one signer's, with a field selector: add it to cache.Options.ByObject
// under &certificatesv1.PodCertificateRequest{}.
func CacheByObject(signerName string) cache.ByObject {
	if signerName == "" {
		signerName = DefaultSignerName
	}
	return cache.ByObject{Field: fields.OneTermEqualSelector("spec.signerName", signerName)}
}

func (r *Reconciler) defaults(mgr ctrl.Manager) error {
	if r.SignerName == "" {
		r.SignerName = DefaultSignerName
	}
	if r.MinTTL == 0 {
		r.MinTTL = DefaultMinTTL
	}
	if r.MaxTTL == 0 {
		r.MaxTTL = DefaultMaxTTL
	}
	if r.RetryInterval <= 0 {
		r.RetryInterval = DefaultRetryInterval
	}
	if r.Workers == 0 {
		r.Workers = DefaultWorkers
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
	if r.Client == nil {
		r.Client = mgr.GetClient()
	}
	if r.APIReader == nil {
		r.APIReader = mgr.GetAPIReader()
	}
	switch {
	case r.Workers < 0:
		return fmt.Errorf("pcr: Workers is %d, must be positive", r.Workers)
	case r.Authority == nil:
		return errors.New("pcr: Authority is required")
	case r.TrustDomain.IsZero():
		return errors.New("pcr: TrustDomain is required")
	case r.MinTTL < apiMinLifetime:
		return fmt.Errorf("pcr: MinTTL %s is below 1h, which kube-apiserver rejects", r.MinTTL)
	case r.MaxTTL < r.MinTTL:
		return fmt.Errorf("pcr: MaxTTL %s must be at least MinTTL %s", r.MaxTTL, r.MinTTL)
	case r.MaxTTL > pki.MaxWorkloadTTL:
		return fmt.Errorf("pcr: MaxTTL %s exceeds the workload maximum %s", r.MaxTTL, pki.MaxWorkloadTTL)
	}
	r.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mayfly_ca_podcertificaterequests_total",
		Help: "PodCertificateRequests decided by the signer, by result (issued, denied, failed).",
	}, []string{"result"})
	for _, res := range []string{resultIssued, resultDenied, resultFailed} {
		r.requests.WithLabelValues(res)
	}
	r.issued = newPodCredentials(r.Pods, r.Now)
	if r.Registerer != nil {
		for _, c := range []prometheus.Collector{r.requests, r.issued} {
			if err := r.Registerer.Register(c); err != nil {
				return fmt.Errorf("pcr: register metrics: %w", err)
			}
		}
	}
	return nil
}

// DefaultWorkers is how many PodCertificateRequests are decided at once: a
// decision waits on the API server (pod lookups, the status update) far
// more than on the CPU, so a few workers keep a burst of new pods (a
// rollout) from queueing behind one another.
const DefaultWorkers = 4

// SetupWithManager defaults the Reconciler and registers the controller.
// The manager's cache should hold only this signer's requests (see
// CacheByObject); the controller filters by signer name either way.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	if err := r.defaults(mgr); err != nil {
		return err
	}
	b := builder.ControllerManagedBy(mgr).
		Named("podcertificaterequest").
		WithOptions(controller.Options{MaxConcurrentReconciles: r.Workers}).
		For(&certificatesv1.PodCertificateRequest{}, builder.WithPredicates(r.pending()))
	if sub, ok := r.Authority.(changes.Subscriber); ok {
		changed := make(chan event.GenericEvent, 1)
		if err := mgr.Add(changes.Forward(sub, &certificatesv1.PodCertificateRequest{}, changed, false)); err != nil {
			return err
		}
		b = b.WatchesRawSource(source.Channel(changed, handler.EnqueueRequestsFromMapFunc(r.allPending)))
	}
	return b.Complete(r)
}

// pending passes requests of our signer that are not decided yet.
func (r *Reconciler) pending() predicate.Predicate {
	return predicate.NewPredicateFuncs(func(o client.Object) bool {
		req, ok := o.(*certificatesv1.PodCertificateRequest)
		return ok && req.Spec.SignerName == r.SignerName && !isTerminal(req)
	})
}

// allPending enqueues every pending request of our signer.
func (r *Reconciler) allPending(ctx context.Context, _ client.Object) []reconcile.Request {
	var list certificatesv1.PodCertificateRequestList
	if err := r.Client.List(ctx, &list); err != nil {
		r.Logger.ErrorContext(ctx, "listing PodCertificateRequests after an authority change", "error", err)
		return nil
	}
	var out []reconcile.Request
	for i := range list.Items {
		req := &list.Items[i]
		if req.Spec.SignerName == r.SignerName && !isTerminal(req) {
			out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: req.Namespace, Name: req.Name}})
		}
	}
	return out
}

// errRetry marks conditions that may clear by themselves: the request stays
// pending and is retried after RetryInterval.
var errRetry = errors.New("not issuable yet")

// Reconcile decides one request: Issued, Denied, Failed, or still pending.
func (r *Reconciler) Reconcile(ctx context.Context, key reconcile.Request) (reconcile.Result, error) {
	var req certificatesv1.PodCertificateRequest
	if err := r.Client.Get(ctx, key.NamespacedName, &req); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if req.Spec.SignerName != r.SignerName || isTerminal(&req) {
		return reconcile.Result{}, nil
	}
	err := r.decide(ctx, &req)
	switch {
	case errors.Is(err, errRetry):
		r.Logger.WarnContext(ctx, "PodCertificateRequest kept pending",
			"namespace", req.Namespace, "pcr", req.Name, "pod", req.Spec.PodName, "error", err, "retry_in", r.RetryInterval.String())
		return reconcile.Result{RequeueAfter: r.RetryInterval}, nil
	case apierrors.IsConflict(err) || apierrors.IsNotFound(err):
		// Someone else decided (another replica) or the request is gone;
		// the watch brings the new state.
		return reconcile.Result{}, nil
	}
	return reconcile.Result{}, err
}

// decide runs the checks and writes the decision. It returns an error
// wrapping errRetry while the request cannot be decided yet.
func (r *Reconciler) decide(ctx context.Context, req *certificatesv1.PodCertificateRequest) error {
	if d := checkUserAnnotations(req); d != nil {
		return r.writeDenied(ctx, req, d)
	}
	pub, d := parseKey(req)
	if d != nil {
		return r.writeDenied(ctx, req, d)
	}
	pod, err := r.pod(ctx, req)
	if err != nil {
		return err
	}
	if d := checkPod(req, pod); d != nil {
		return r.writeDenied(ctx, req, d)
	}
	return r.issue(ctx, req, pub)
}

// pod returns the pod the request names, nil if it does not exist. A miss
// in the cache is confirmed with the API server: a denial is final, and a
// new pod may not be in the cache yet.
func (r *Reconciler) pod(ctx context.Context, req *certificatesv1.PodCertificateRequest) (*policy.Pod, error) {
	if r.Pods != nil {
		if s, ok := r.Pods.(interface{ HasSynced() bool }); ok && !s.HasSynced() {
			return nil, fmt.Errorf("%w: pod cache has not synced", errRetry)
		}
		if pod, ok := r.Pods.ByUID(string(req.Spec.PodUID)); ok {
			return &pod, nil
		}
	}
	var pod corev1.Pod
	err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: req.Namespace, Name: req.Spec.PodName}, &pod)
	switch {
	case apierrors.IsNotFound(err):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("%w: get pod %s/%s: %w", errRetry, req.Namespace, req.Spec.PodName, err)
	case pod.UID != req.Spec.PodUID:
		return nil, nil // re-created under the same name
	}
	p := policy.PodOf(&pod)
	return &p, nil
}

// issue signs the leaf and writes the Issued status.
func (r *Reconciler) issue(ctx context.Context, req *certificatesv1.PodCertificateRequest, pub any) error {
	loaded, err := r.Authority.Current()
	if err != nil {
		return fmt.Errorf("%w: %w", errRetry, err)
	}
	ca := loaded.Authority
	if ca.Cert == nil {
		return fmt.Errorf("%w: no issuing certificate loaded", errRetry)
	}
	id, err := pki.WorkloadID(r.TrustDomain, req.Namespace, req.Spec.ServiceAccountName)
	if err != nil {
		return r.writeFailed(ctx, req, deny(ReasonSigningFailed, "no SPIFFE ID for ServiceAccount %s/%s: %v", req.Namespace, req.Spec.ServiceAccountName, err))
	}
	// Whole seconds make the lifetime exact: certificates carry seconds.
	now := r.Now().Truncate(time.Second)
	maxExp := maxExpiration(req)
	plan := lifetimePolicy{min: r.MinTTL, max: r.MaxTTL}.plan(now, maxExp, ca.Cert.NotBefore, ca.Cert.NotAfter)
	if plan.life < plan.floor {
		return fmt.Errorf("%w: the intermediate (valid %s to %s) allows a lifetime of %s, below %s; waiting for the CA to rotate",
			errRetry, ca.Cert.NotBefore.UTC().Format(time.RFC3339), ca.Cert.NotAfter.UTC().Format(time.RFC3339), plan.life, plan.floor)
	}
	signer := pki.Signer{
		Authority: ca,
		Now:       func() time.Time { return now },
		Rand:      r.Rand,
		Options: policy.WorkloadRules(policy.WorkloadLimits{
			MinTTL: pki.MinWorkloadTTL, MaxTTL: pki.MaxWorkloadTTL, KubernetesIDs: true,
		}),
	}
	leaf, _, err := signer.Sign(pki.SignRequest{Kind: pki.KindWorkload, PublicKey: pub, ID: id, TTL: plan.ttl})
	switch {
	case policy.ClassOf(err) == policy.ClassUnavailable:
		return fmt.Errorf("%w: %w", errRetry, err)
	case err != nil:
		return r.writeFailed(ctx, req, deny(ReasonSigningFailed, "the CA could not sign: %v", err))
	}
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	switch {
	case life > maxExp:
		return r.writeFailed(ctx, req, deny(ReasonSigningFailed, "issued lifetime %s exceeds spec.maxExpirationSeconds %d", life, int64(maxExp/time.Second)))
	case life < apiMinLifetime:
		return fmt.Errorf("%w: issued lifetime %s is below 1h (issuer valid %s to %s)", errRetry, life,
			ca.Cert.NotBefore.UTC().Format(time.RFC3339), ca.Cert.NotAfter.UTC().Format(time.RFC3339))
	}

	nb, na := metav1.NewTime(leaf.NotBefore), metav1.NewTime(leaf.NotAfter)
	refreshAt := beginRefreshAt(leaf.NotBefore, leaf.NotAfter)
	if loaded.State != nil && loaded.State.SigningTainted() {
		// A tainted key still signs (ca taint; a new root waits for the
		// agents): the kubelet should come back as early as the API allows.
		refreshAt = leaf.NotBefore.Add(refreshMargin)
	}
	refresh := metav1.NewTime(refreshAt)
	req.Status.CertificateChain = string(pki.EncodeCertificates(ca.ChainFor(leaf)...))
	req.Status.NotBefore, req.Status.NotAfter, req.Status.BeginRefreshAt = &nb, &na, &refresh
	req.Status.Conditions = append(req.Status.Conditions, r.condition(req, certificatesv1.PodCertificateRequestConditionTypeIssued,
		ReasonIssued, fmt.Sprintf("issued %s, serial %s, valid until %s", id, serialHex(leaf.SerialNumber), leaf.NotAfter.UTC().Format(time.RFC3339))))
	if err := r.Client.Status().Update(ctx, req); err != nil {
		return fmt.Errorf("write Issued status of %s/%s: %w", req.Namespace, req.Name, err)
	}
	r.requests.WithLabelValues(resultIssued).Inc()
	r.issued.record(req.Namespace, req.Spec.PodName, req.Spec.PodUID, leaf.NotBefore, leaf.NotAfter, refresh.Time)
	r.audit(ctx, req, slog.LevelInfo, "issue", "allow", ReasonIssued,
		slog.String("spiffe_id", id.String()),
		slog.String("serial", serialHex(leaf.SerialNumber)),
		slog.String("not_before", leaf.NotBefore.UTC().Format(time.RFC3339)),
		slog.String("not_after", leaf.NotAfter.UTC().Format(time.RFC3339)),
		slog.String("begin_refresh_at", refresh.UTC().Format(time.RFC3339)))
	return nil
}

func (r *Reconciler) writeDenied(ctx context.Context, req *certificatesv1.PodCertificateRequest, d *denial) error {
	return r.writeFinal(ctx, req, certificatesv1.PodCertificateRequestConditionTypeDenied, resultDenied, d)
}

func (r *Reconciler) writeFailed(ctx context.Context, req *certificatesv1.PodCertificateRequest, d *denial) error {
	return r.writeFinal(ctx, req, certificatesv1.PodCertificateRequestConditionTypeFailed, resultFailed, d)
}

// writeFinal writes a Denied or Failed status (no chain, no times).
func (r *Reconciler) writeFinal(ctx context.Context, req *certificatesv1.PodCertificateRequest, condType, result string, d *denial) error {
	req.Status = certificatesv1.PodCertificateRequestStatus{
		Conditions: append(req.Status.Conditions, r.condition(req, condType, d.reason, d.message)),
	}
	if err := r.Client.Status().Update(ctx, req); err != nil {
		return fmt.Errorf("write %s status of %s/%s: %w", condType, req.Namespace, req.Name, err)
	}
	r.requests.WithLabelValues(result).Inc()
	decision := "deny"
	if result == resultFailed {
		decision = "fail"
	}
	r.audit(ctx, req, slog.LevelWarn, "deny", decision, d.reason, slog.String("message", d.message))
	return nil
}

func (r *Reconciler) condition(req *certificatesv1.PodCertificateRequest, condType, reason, message string) metav1.Condition {
	return metav1.Condition{
		Type:               condType,
		Status:             metav1.ConditionTrue,
		Reason:             reason,
		Message:            message,
		LastTransitionTime: metav1.NewTime(r.Now()),
		ObservedGeneration: req.Generation,
	}
}

// audit writes the one audit line of a decision: which request, for which
// pod and identity, and the outcome. Never keys or whole certificates.
func (r *Reconciler) audit(ctx context.Context, req *certificatesv1.PodCertificateRequest, level slog.Level, ev, decision, reason string, extra ...slog.Attr) {
	attrs := append([]slog.Attr{
		slog.String("event", ev),
		slog.String("decision", decision),
		slog.String("reason", reason),
		slog.String("kind", string(pki.KindWorkload)),
		slog.String("op", "PodCertificateRequest"),
		slog.String("signer", req.Spec.SignerName),
		slog.String("namespace", req.Namespace),
		slog.String("pcr", req.Name),
		slog.String("pod", req.Spec.PodName),
		slog.String("pod_uid", string(req.Spec.PodUID)),
		slog.String("node", string(req.Spec.NodeName)),
		slog.String("service_account", req.Spec.ServiceAccountName),
	}, extra...)
	r.Logger.LogAttrs(ctx, level, "audit", attrs...)
}

func serialHex(n *big.Int) string {
	if n == nil {
		return ""
	}
	return n.Text(16)
}
