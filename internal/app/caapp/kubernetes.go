package caapp

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	toolscache "k8s.io/client-go/tools/cache"
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
	"github.com/mayfly-pki/mayfly/internal/controller/pcr"
	"github.com/mayfly-pki/mayfly/internal/controller/workloadcert"
	"github.com/mayfly-pki/mayfly/internal/issuer"
	"github.com/mayfly-pki/mayfly/internal/kubenodes"
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

func runKubernetes(ctx context.Context, cfg *Config, opts Options) error {
	defaults(&opts)
	log := opts.Logger
	k := cfg.Kubernetes
	restCfg := opts.RestConfig
	if restCfg == nil {
		var err error
		if restCfg, err = ctrl.GetConfig(); err != nil {
			return fmt.Errorf("kubernetes: no API server configuration (in-cluster or KUBECONFIG): %w", err)
		}
	}
	kube, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	selector := labels.Everything()
	if k.BundleNamespaceSelector != "" {
		if selector, err = labels.Parse(k.BundleNamespaceSelector); err != nil {
			return fmt.Errorf("kubernetes.bundleNamespaceSelector: %w", err)
		}
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return err
	}
	if err := mayflyv1alpha1.AddToScheme(scheme); err != nil {
		return err
	}
	// controller-runtime's logger is global: the first run in a process sets it.
	setCtrlLogger.Do(func() { ctrl.SetLogger(logrFromSlog(log)) })
	leaderElection := k.LeaderElection == nil || *k.LeaderElection
	mgr, err := ctrl.NewManager(restCfg, ctrl.Options{
		Scheme:                        scheme,
		Logger:                        logrFromSlog(log),
		LeaderElection:                leaderElection,
		LeaderElectionID:              "mayfly-ca",
		LeaderElectionNamespace:       k.Namespace,
		LeaderElectionReleaseOnCancel: true,
		Metrics:                       metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress:        "0",
		// Tests run several replicas in one process; names are unique per manager.
		Controller: ctrlconfig.Controller{SkipNameValidation: ptr.To(true)},
		Cache: cache.Options{ByObject: map[client.Object]cache.ByObject{
			// Only our bundle ConfigMaps, never every ConfigMap of the cluster.
			&corev1.ConfigMap{}: {Field: fields.OneTermEqualSelector("metadata.name", bundle.ConfigMapName)},
			// Only the PodCertificateRequests of our signer.
			&certificatesv1.PodCertificateRequest{}: pcr.CacheByObject(""),
			// Only the Secrets of WorkloadCertificates, never every Secret.
			&corev1.Secret{}: workloadcert.SecretCache(),
		}},
	})
	if err != nil {
		return fmt.Errorf("controller manager (is the API server at %s reachable?): %w", restCfg.Host, err)
	}

	reg := newRegistry()
	upstream, err := newUpstream(cfg)
	if err != nil {
		return err
	}
	store := authority.NewSecretStore(kube, k.Namespace, k.SecretName)
	var srv *issuer.Server
	am := authority.NewManager(authority.ManagerOptions{
		Store:            store,
		Minter:           &authority.Minter{TrustDomain: cfg.TrustDomain, Policy: cfg.Policy, Upstream: upstream, KeyType: cfg.KeyType, Rand: rand.Reader},
		Marker:           configMapMarker{client: kube, namespace: k.Namespace},
		Clock:            opts.Clock,
		Logger:           log.With("component", "authority"),
		Registerer:       reg,
		AllowRebootstrap: cfg.AllowRebootstrap,
		Acks:             func() bool { return srv != nil && srv.AllAgentsCurrent() },
	})
	if err := am.Load(ctx); err != nil {
		log.Error("CA state could not be loaded; the CA does not issue until this is fixed", "error", err)
	}

	pods := kubenodes.NewPodCache(kube, 0)
	kcfg := kubenodes.Config{
		TrustDomain: cfg.TrustDomain, Audience: k.Audience, AgentNamespace: k.Namespace,
		AgentServiceAccount: k.AgentServiceAccount, ClusterDomain: k.ClusterDomain, Client: kube, Cache: pods,
		RequirePodToken: k.RequirePodToken,
	}
	attestor, err := kubenodes.NewTokenAttestor(kcfg)
	if err != nil {
		return err
	}
	authorizer, err := kubenodes.NewPodAuthorizer(kcfg)
	if err != nil {
		return err
	}
	srv, err = issuer.New(issuer.Config{
		TrustDomain:        cfg.TrustDomain,
		Authority:          am,
		Attestor:           attestor,
		Authorizer:         authorizer,
		AgentTTL:           cfg.AgentTTL,
		MinWorkloadTTL:     cfg.MinWorkloadTTL,
		DefaultWorkloadTTL: cfg.DefaultWorkloadTTL,
		MaxWorkloadTTL:     cfg.MaxWorkloadTTL,
		KubernetesIDs:      true,
		ServerDNSNames:     cfg.ServerDNSNames,
		NodeRate:           rate.Limit(cfg.NodeRateLimit),
		NodeBurst:          cfg.NodeBurst,
		AttestRate:         rate.Limit(cfg.Attestation.RateLimit),
		AttestBurst:        cfg.Attestation.Burst,
		AttestPeerRate:     rate.Limit(cfg.Attestation.PeerRateLimit),
		AttestPeerBurst:    cfg.Attestation.PeerBurst,
		OnAck:              am.Kick,
		Now:                opts.Clock.Now,
		Rand:               rand.Reader,
		Logger:             log.With("component", "issuer"),
		Registerer:         reg,
	})
	if err != nil {
		return err
	}

	if err := (&bundle.Reconciler{Client: mgr.GetClient(), Source: am, NamespaceSelector: selector, ClusterTrustBundle: true}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("trust bundle controller: %w", err)
	}
	if err := (&pcr.Reconciler{
		Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Authority: am, Pods: pods,
		TrustDomain: cfg.TrustDomain, Now: opts.Clock.Now, Rand: rand.Reader,
		Logger: log.With("component", "podcertificate-signer"), Registerer: reg,
	}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("PodCertificateRequest signer: %w", err)
	}
	wcGK := schema.GroupKind{Group: mayflyv1alpha1.GroupVersion.Group, Kind: "WorkloadCertificate"}
	if _, err := mgr.GetRESTMapper().RESTMapping(wcGK, mayflyv1alpha1.GroupVersion.Version); err != nil {
		log.Warn("the WorkloadCertificate CRD is not installed: Secrets are not issued (apply deploy/k8s/base/crds)", "error", err)
	} else if err := (&workloadcert.Reconciler{
		Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Authority: am,
		TrustDomain: cfg.TrustDomain, ClusterDomain: k.ClusterDomain, Now: opts.Clock.Now, Rand: rand.Reader,
		Logger: log.With("component", "workloadcertificates"), Registerer: reg,
	}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("WorkloadCertificate controller: %w", err)
	}
	add := func(leader bool, f func(context.Context) error) error {
		return mgr.Add(runnable{run: f, leader: leader})
	}
	for _, r := range []struct {
		leader bool
		f      func(context.Context) error
	}{
		{true, am.Rotate},
		{false, pods.Start},
		{false, func(ctx context.Context) error { return watchSecret(ctx, kube, k.Namespace, k.SecretName, am) }},
		{false, func(ctx context.Context) error { return reloadLoop(ctx, am, opts.Clock, time.Minute) }},
		{false, func(ctx context.Context) error {
			g, gctx := errgroup.WithContext(ctx)
			serveIssuer(gctx, g, cfg, opts, srv)
			serveHealth(gctx, g, cfg, reg, func() error {
				if err := am.Ready(); err != nil {
					return err
				}
				if !pods.HasSynced() {
					return errors.New("pod cache not synced yet")
				}
				return nil
			}, func() Status { return statusOf(cfg, am, srv) }, log)
			return g.Wait()
		}},
	} {
		if err := add(r.leader, r.f); err != nil {
			return err
		}
	}
	_ = mgr.AddHealthzCheck("ping", healthz.Ping)
	log.Info("starting CA in Kubernetes mode", "namespace", k.Namespace, "secret", k.SecretName, "leader_election", leaderElection)
	return mgr.Start(ctx)
}

// watchSecret reloads the authority whenever the CA Secret changes, so
// every replica signs with the slot the leader activated, without restart.
func watchSecret(ctx context.Context, kube kubernetes.Interface, namespace, name string, am *authority.Manager) error {
	f := informers.NewSharedInformerFactoryWithOptions(kube, 10*time.Minute,
		informers.WithNamespace(namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", name).String()
		}))
	inf := f.Core().V1().Secrets().Informer()
	reload := func(any) { _ = am.Reload(ctx) }
	if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    reload,
		UpdateFunc: func(_, n any) { reload(n) },
		DeleteFunc: reload,
	}); err != nil {
		return err
	}
	f.Start(ctx.Done())
	<-ctx.Done()
	f.Shutdown()
	return nil
}

// configMapMarker is the Kubernetes authority.Marker: the trust bundle
// ConfigMap in the CA's own namespace.
type configMapMarker struct {
	client    kubernetes.Interface
	namespace string
}

func (m configMapMarker) Marked(ctx context.Context) (bool, error) {
	cm, err := m.client.CoreV1().ConfigMaps(m.namespace).Get(ctx, bundle.ConfigMapName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return cm.Data[bundle.ConfigMapKey] != "", nil
}

func (m configMapMarker) Mark(ctx context.Context, bundlePEM []byte) error {
	cms := m.client.CoreV1().ConfigMaps(m.namespace)
	cm, err := cms.Get(ctx, bundle.ConfigMapName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = cms.Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: bundle.ConfigMapName, Namespace: m.namespace, Labels: map[string]string{"app.kubernetes.io/managed-by": "mayfly-ca"}},
			Data:       map[string]string{bundle.ConfigMapKey: string(bundlePEM)},
		}, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	if cm.Data[bundle.ConfigMapKey] == string(bundlePEM) {
		return nil
	}
	if cm.Data == nil {
		cm.Data = map[string]string{}
	}
	cm.Data[bundle.ConfigMapKey] = string(bundlePEM)
	_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
	return err
}
