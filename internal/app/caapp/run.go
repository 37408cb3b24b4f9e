package caapp

import (
	"context"
	"log/slog"
	"net"
	"os"

	"k8s.io/client-go/rest"

	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// TrustBundleFile is written next to the standalone state: the PEM trust
// bundle agents start from (--trust-bundle), and the marker that this CA
// has issued before (see authority.Marker).
const TrustBundleFile = "trust-bundle.pem"

// Options are the parts of a run that tests and the demo replace.
type Options struct {
	Logger *slog.Logger
	Clock  rotate.Clock
	// Listener, when set, is used instead of listening on ListenAddress.
	Listener net.Listener
	// Ready is called once the issuer API is serving.
	Ready func(addr string)
	// RestConfig reaches the API server in Kubernetes mode (default:
	// in-cluster or KUBECONFIG).
	RestConfig *rest.Config
	// Replica names this replica's adoption ConfigMap in Kubernetes mode
	// (default: POD_NAME, else the hostname).
	Replica string
}

// Run runs the CA until ctx is done: the shared core (authority, issuer
// API, health and metrics) on the parts of the configured mode.
func Run(ctx context.Context, cfg *Config, opts Options) error {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	}
	if opts.Clock == nil {
		opts.Clock = rotate.RealClock{}
	}
	if cfg.Kubernetes != nil {
		return runKubernetes(ctx, cfg, opts)
	}
	return runStandalone(ctx, cfg, opts)
}
