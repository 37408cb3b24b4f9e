package caapp

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlconfig "sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	mayflyv1alpha1 "github.com/mayfly-pki/mayfly/api/mayfly/v1alpha1"
	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/controller/bundle"
	"github.com/mayfly-pki/mayfly/internal/controller/bundlegate"
	"github.com/mayfly-pki/mayfly/internal/controller/pcr"
	"github.com/mayfly-pki/mayfly/internal/controller/workloadcert"
	"github.com/mayfly-pki/mayfly/internal/eviction"
	"github.com/mayfly-pki/mayfly/internal/kubenodes"
	"github.com/mayfly-pki/mayfly/internal/oidc"
)

// runnable adapts a function to a controller-runtime runnable, saying
// whether it runs on the leader only.
type runnable struct {
	run    func(context.Context) error
	leader bool
}

func (r runnable) Start(ctx context.Context) error { return r.run(ctx) }
func (r runnable) NeedLeaderElection() bool        { return r.leader }

var setCtrlLogger sync.Once

// runKubernetes runs the CA in a cluster: the state in a Secret, agents
// attested by ServiceAccount token, workloads authorized by their pods, the
// trust bundle published by controllers, under controller-runtime's
// manager (leader election for rotation).
func runKubernetes(ctx context.Context, cfg *Config, opts Options) error {
	log := opts.Logger
	k := cfg.Kubernetes
	restCfg, kube, err := kubeClients(opts.RestConfig)
	if err != nil {
		return err
	}
	selector, err := bundleSelector(k)
	if err != nil {
		return err
	}
	apis, err := discoverAPIs(kube.Discovery())
	if err != nil {
		return err
	}
	mgr, err := newControllerManager(restCfg, k, apis, log)
	if err != nil {
		return err
	}
	store := authority.NewSecretStore(kube, k.Namespace, k.SecretName)
	pods := kubenodes.NewPodCache(kube, 0)
	parts, err := kubernetesParts(ctx, cfg, kube, store, pods, log)
	if err != nil {
		return err
	}
	var c *core
	// A replica's agents' acknowledgements that another replica publishes
	// may let the waiting root activate: look again at once.
	if parts.adoption, err = newKubeAdoption(cfg, restCfg, kube, opts.Replica, opts.Clock, func() {
		if c != nil {
			c.authority.Kick()
		}
	}); err != nil {
		return err
	}
	// The Kubernetes delivery paths gate a new root as the agents do.
	gate := &bundlegate.Gate{NamespaceSelector: selector, ClusterTrustBundle: apis.ClusterTrustBundles, PropagationDelay: cfg.KubernetesPropagationDelay,
		NoSecrets: !k.WorkloadCertificates.On(),
		Clock:     opts.Clock, Logger: log.With("component", "bundle-gate")}
	parts.gates = append(parts.gates, gate.Ready)
	parts.decorate = func(st Status) Status {
		st.KubernetesAPIs = &apis
		return withDelivery(st, gate.Status())
	}
	c, err = newCore(ctx, cfg, opts, parts)
	if err != nil {
		return err
	}
	if err := apis.report(log, c.registry); err != nil {
		return err
	}
	gate.Source, gate.Registerer = c.authority, c.registry
	if err := setupControllers(mgr, c, pods, selector, apis); err != nil {
		return err
	}
	if err := gate.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("trust bundle gate: %w", err)
	}
	ready := func() error {
		if err := c.authority.Ready(); err != nil {
			return err
		}
		if !pods.HasSynced() {
			return errors.New("pod cache not synced yet")
		}
		return nil
	}
	for _, r := range []runnable{
		{leader: true, run: c.authority.Rotate},
		{run: pods.Start},
		{run: func(ctx context.Context) error { return store.Watch(ctx, func() { _ = c.authority.Reload(ctx) }) }},
		{run: func(ctx context.Context) error { return c.authority.ReloadEvery(ctx, time.Minute) }},
		{run: func(ctx context.Context) error {
			return parts.evictions.Run(ctx, opts.Clock, eviction.DefaultPollInterval)
		}},
		{run: func(ctx context.Context) error { return c.serve(ctx, ready) }},
	} {
		if err := mgr.Add(r); err != nil {
			return err
		}
	}
	if cfg.JWT.ConfigMap != "" {
		jwks := &oidc.ConfigMapPublisher{Client: kube, Namespace: k.Namespace, Name: cfg.JWT.ConfigMap,
			Keys: c.jwtKeys, Changes: c.authority.Subscribe, Logger: log.With("component", "jwks-configmap")}
		if err := mgr.Add(runnable{leader: true, run: jwks.Start}); err != nil {
			return err
		}
	}
	for _, f := range parts.adoption.runnables {
		if err := mgr.Add(runnable{run: f}); err != nil {
			return err
		}
	}
	_ = mgr.AddHealthzCheck("ping", healthz.Ping)
	log.Info("starting CA in Kubernetes mode", "namespace", k.Namespace, "secret", k.SecretName, "leader_election", leaderElection(k))
	return mgr.Start(ctx)
}

// kubeClients returns restCfg, or the in-cluster or KUBECONFIG
// configuration when it is nil, and a client on it. The client speaks
// protobuf, client-go's default for built-in types when no content type is
// set (TestKubeClientSpeaksProtobuf): keep it unset.
func kubeClients(restCfg *rest.Config) (*rest.Config, kubernetes.Interface, error) {
	if restCfg == nil {
		var err error
		if restCfg, err = ctrl.GetConfig(); err != nil {
			return nil, nil, fmt.Errorf("kubernetes: no API server configuration (in-cluster or KUBECONFIG): %w", err)
		}
	}
	kube, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return nil, nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return restCfg, kube, nil
}

func leaderElection(k *KubernetesConfig) bool { return k.LeaderElection == nil || *k.LeaderElection }

// newControllerManager returns the controller-runtime manager the CA runs
// under, its caches narrowed to the objects the CA owns.
func newControllerManager(restCfg *rest.Config, k *KubernetesConfig, apis ClusterAPIs, log *slog.Logger) (ctrl.Manager, error) {
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := mayflyv1alpha1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	byObject := map[client.Object]cache.ByObject{
		// Only our bundle ConfigMaps, never every ConfigMap of the
		// cluster; with bundleNamespaces, only in those namespaces.
		&corev1.ConfigMap{}: {
			Field:      fields.OneTermEqualSelector("metadata.name", bundle.ConfigMapName),
			Namespaces: namespaceConfigs(bundleNamespaces(k)),
		},
		// Only the Secrets of WorkloadCertificates, never every Secret;
		// with workloadCertificates.namespaces, only there.
		&corev1.Secret{}: workloadcert.SecretCache(k.WorkloadCertificates.Namespaces...),
	}
	if apis.PodCertificateRequests {
		// Only the PodCertificateRequests of our signer.
		byObject[&certificatesv1.PodCertificateRequest{}] = pcr.CacheByObject("")
	}
	// controller-runtime's logger is global: the first run in a process sets it.
	setCtrlLogger.Do(func() { ctrl.SetLogger(logrFromSlog(log)) })
	mgr, err := ctrl.NewManager(restCfg, ctrl.Options{
		Scheme:                        scheme,
		Logger:                        logrFromSlog(log),
		LeaderElection:                leaderElection(k),
		LeaderElectionID:              "mayfly-ca",
		LeaderElectionNamespace:       k.Namespace,
		LeaderElectionReleaseOnCancel: true,
		LeaseDuration:                 &k.LeaseDuration.Duration,
		RenewDeadline:                 &k.RenewDeadline.Duration,
		RetryPeriod:                   &k.RetryPeriod.Duration,
		Metrics:                       metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress:        "0",
		// Tests run several replicas in one process; names are unique per manager.
		Controller: ctrlconfig.Controller{SkipNameValidation: ptr.To(true)},
		// managedFields are never read; dropped, every cached object is smaller.
		Cache: cache.Options{ByObject: byObject, DefaultTransform: cache.TransformStripManagedFields()},
	})
	if err != nil {
		return nil, fmt.Errorf("controller manager (is the API server at %s reachable?): %w", restCfg.Host, err)
	}
	return mgr, nil
}

// kubernetesParts are the Kubernetes mode's parts of the core: the state in
// a Secret, the bundle ConfigMap as marker, agents attested by their
// ServiceAccount token, workloads authorized by their pod.
func kubernetesParts(ctx context.Context, cfg *Config, kube kubernetes.Interface, store *authority.SecretStore, pods *kubenodes.PodCache, log *slog.Logger) (modeParts, error) {
	k := cfg.Kubernetes
	kcfg := kubenodes.Config{
		TrustDomain: cfg.TrustDomain, Audience: k.Audience, AgentNamespace: k.Namespace,
		AgentServiceAccount: k.AgentServiceAccount, ClusterDomain: k.ClusterDomain, Client: kube, Cache: pods,
		RequirePodToken: k.RequirePodToken,
	}
	attestor, err := kubenodes.NewTokenAttestor(kcfg)
	if err != nil {
		return modeParts{}, err
	}
	authorizer, err := kubenodes.NewPodAuthorizer(kcfg)
	if err != nil {
		return modeParts{}, err
	}
	return modeParts{
		store:         store,
		marker:        bundle.Marker{Client: kube, Namespace: k.Namespace},
		attestor:      attestor,
		authorizer:    authorizer,
		renewal:       attestor,
		evictions:     newEvictions(ctx, eviction.SecretStore{Client: kube, Namespace: k.Namespace}, log),
		kubernetesIDs: true,
	}, nil
}

// setupControllers adds the trust bundle publisher, the
// PodCertificateRequest signer and, when its CRD is installed, the
// WorkloadCertificate controller.
func setupControllers(mgr ctrl.Manager, c *core, pods *kubenodes.PodCache, selector labels.Selector, apis ClusterAPIs) error {
	if err := (&bundle.Reconciler{Client: mgr.GetClient(), Source: c.authority, NamespaceSelector: selector, ClusterTrustBundle: apis.ClusterTrustBundles}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("trust bundle controller: %w", err)
	}
	if apis.PodCertificateRequests {
		if err := setupSigner(mgr, c, pods); err != nil {
			return err
		}
	}
	return setupWorkloadCertificates(mgr, c)
}

// setupSigner adds the PodCertificateRequest signer mayfly.dev/workload.
func setupSigner(mgr ctrl.Manager, c *core, pods *kubenodes.PodCache) error {
	cfg, log := c.cfg, c.opts.Logger
	if err := (&pcr.Reconciler{
		Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Authority: c.authority, Pods: pods,
		TrustDomain: cfg.TrustDomain, Now: c.opts.Clock.Now, Rand: rand.Reader,
		Logger: log.With("component", "podcertificate-signer"), Registerer: c.registry,
	}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("PodCertificateRequest signer: %w", err)
	}
	return nil
}

// setupWorkloadCertificates adds the WorkloadCertificate controller when
// its CRD is installed.
func setupWorkloadCertificates(mgr ctrl.Manager, c *core) error {
	cfg, log := c.cfg, c.opts.Logger
	if !cfg.Kubernetes.WorkloadCertificates.On() {
		log.Info("the WorkloadCertificate controller is off (kubernetes.workloadCertificates.enabled: false): no Secret is written")
		return nil
	}
	wcGK := schema.GroupKind{Group: mayflyv1alpha1.GroupVersion.Group, Kind: "WorkloadCertificate"}
	if _, err := mgr.GetRESTMapper().RESTMapping(wcGK, mayflyv1alpha1.GroupVersion.Version); err != nil {
		log.Warn("the WorkloadCertificate CRD is not installed: Secrets are not issued (apply deploy/k8s/base/crds)", "error", err)
		return nil
	}
	if err := (&workloadcert.Reconciler{
		Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Authority: c.authority,
		TrustDomain: cfg.TrustDomain, ClusterDomain: cfg.Kubernetes.ClusterDomain, Now: c.opts.Clock.Now, Rand: rand.Reader,
		Logger: log.With("component", "workloadcertificates"), Registerer: c.registry,
		Namespaces: cfg.Kubernetes.WorkloadCertificates.Namespaces,
	}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("WorkloadCertificate controller: %w", err)
	}
	return nil
}

// bundleNamespaces are the namespaces that may get the trust bundle
// ConfigMap: kubernetes.bundleNamespaces and the CA's own (the agents mount
// it there); nil when every namespace may.
func bundleNamespaces(k *KubernetesConfig) []string {
	if len(k.BundleNamespaces) == 0 {
		return nil
	}
	if slices.Contains(k.BundleNamespaces, k.Namespace) {
		return k.BundleNamespaces
	}
	return append(slices.Clone(k.BundleNamespaces), k.Namespace)
}

// bundleSelector selects the namespaces of the trust bundle ConfigMaps:
// kubernetes.bundleNamespaceSelector, within kubernetes.bundleNamespaces.
func bundleSelector(k *KubernetesConfig) (labels.Selector, error) {
	selector := labels.Everything()
	if k.BundleNamespaceSelector != "" {
		var err error
		if selector, err = labels.Parse(k.BundleNamespaceSelector); err != nil {
			return nil, fmt.Errorf("kubernetes.bundleNamespaceSelector: %w", err)
		}
	}
	if names := bundleNamespaces(k); names != nil {
		req, err := labels.NewRequirement(corev1.LabelMetadataName, selection.In, names)
		if err != nil {
			return nil, fmt.Errorf("kubernetes.bundleNamespaces: %w", err)
		}
		selector = selector.Add(*req)
	}
	return selector, nil
}

// namespaceConfigs is a cache's per-namespace configuration for names; nil
// (every namespace) for none.
func namespaceConfigs(names []string) map[string]cache.Config {
	if len(names) == 0 {
		return nil
	}
	out := make(map[string]cache.Config, len(names))
	for _, ns := range names {
		out[ns] = cache.Config{}
	}
	return out
}
