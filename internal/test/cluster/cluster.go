// Package cluster starts a real kube-apiserver and etcd (controller-runtime's
// envtest) for tests. The binaries are built from source by
// hack/setup-envtest.sh; `make test` exports KUBEBUILDER_ASSETS for them.
package cluster

import (
	"os"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/mayfly-pki/mayfly/internal/test/background"
	"github.com/mayfly-pki/mayfly/internal/test/prereq"
)

// How long and how often a test polls for what a controller does against
// the API server (generous: tests share a loaded machine).
const (
	PollTimeout = 30 * time.Second
	PollEvery   = 50 * time.Millisecond
)

// Cluster is a running API server with an admin client.
type Cluster struct {
	Env    *envtest.Environment
	Config *rest.Config
	Client kubernetes.Interface
}

// Option changes the environment before it starts.
type Option func(*envtest.Environment)

// WithCRDDirectory installs the CRDs found in dir.
func WithCRDDirectory(dir string) Option {
	return func(e *envtest.Environment) {
		e.CRDDirectoryPaths = append(e.CRDDirectoryPaths, dir)
		e.ErrorIfCRDPathMissing = true
	}
}

// Available reports whether envtest binaries are configured. Outside CI a test
// without them is skipped with a message saying how to get them; in CI
// (CI=true) a missing control plane is a failure, never a silent skip.
func Available(t testing.TB) bool {
	t.Helper()
	return prereq.Env(t, "KUBEBUILDER_ASSETS", "run the tests through `make test` (or export KUBEBUILDER_ASSETS=$(hack/setup-envtest.sh))") != ""
}

// Start starts an API server for the test and stops it at cleanup.
func Start(t testing.TB, opts ...Option) *Cluster {
	t.Helper()
	Available(t)
	// envtest's default of 20s per component is too short for a machine
	// that runs the rest of the suite beside it (the default namespace once
	// took longer to appear); KUBEBUILDER_CONTROLPLANE_START_TIMEOUT still
	// wins when set.
	env := &envtest.Environment{}
	if os.Getenv("KUBEBUILDER_CONTROLPLANE_START_TIMEOUT") == "" {
		env.ControlPlaneStartTimeout = 2 * time.Minute
	}
	if os.Getenv("KUBEBUILDER_CONTROLPLANE_STOP_TIMEOUT") == "" {
		env.ControlPlaneStopTimeout = time.Minute
	}
	for _, o := range opts {
		o(env)
	}
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("starting envtest (KUBEBUILDER_ASSETS=%s): %v", os.Getenv("KUBEBUILDER_ASSETS"), err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Errorf("stopping envtest: %v", err)
		}
	})
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("client for envtest: %v", err)
	}
	return &Cluster{Env: env, Config: cfg, Client: client}
}

// NewManager returns a controller-runtime manager on cfg for a
// controller under test: scheme (nil: client-go's), its cache narrowed by
// byObject as the CA narrows it, no metrics or health listeners, no log,
// and controller names that may repeat (several managers per process).
// Start it with RunManager.
func NewManager(t testing.TB, cfg *rest.Config, scheme *runtime.Scheme, byObject map[client.Object]cache.ByObject) manager.Manager {
	t.Helper()
	mgr, err := manager.New(cfg, manager.Options{
		Scheme:                 scheme,
		Logger:                 logr.Discard(),
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Controller:             config.Controller{SkipNameValidation: ptr.To(true)},
		Cache:                  cache.Options{ByObject: byObject},
	})
	if err != nil {
		t.Fatalf("manager: %v", err)
	}
	return mgr
}

// RunManager starts mgr and runs it until the test ends; at cleanup it
// stops mgr and fails the test if mgr's Start returned an error.
func RunManager(t testing.TB, mgr manager.Manager) {
	t.Helper()
	background.Run(t, "manager", mgr.Start)
}
