package csi

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// RegistrationSocketName is the socket the Registrar serves in the kubelet's
// plugins_registry directory (the name node-driver-registrar would use).
const RegistrationSocketName = DriverName + "-reg.sock"

// Registrar registers csi.mayfly.dev with the kubelet through the kubelet's
// plugin registration API, in place of the node-driver-registrar sidecar: the
// kubelet watches its plugins_registry directory, finds the socket, asks
// GetInfo for the driver's name and CSI endpoint, registers the driver
// (CSINode lists it) and reports the outcome with NotifyRegistrationStatus.
// Removing the socket (at shutdown) deregisters the driver.
type Registrar struct {
	registerapi.UnimplementedRegistrationServer

	endpoint string
	log      *slog.Logger

	mu         sync.Mutex
	registered bool
	lastError  string
}

// NewRegistrar returns a Registrar announcing the CSI socket endpoint (the
// path the kubelet dials, as seen from the kubelet: the host path).
func NewRegistrar(endpoint string, log *slog.Logger, reg prometheus.Registerer) (*Registrar, error) {
	if !filepath.IsAbs(endpoint) {
		return nil, fmt.Errorf("csi registration: endpoint must be an absolute socket path, got %q", endpoint)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Registrar{endpoint: endpoint, log: log}
	if reg != nil {
		if err := reg.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "mayfly_agent_csi_kubelet_registered",
			Help: "1 when the kubelet reported csi.mayfly.dev registered, 0 before or after a failed registration.",
		}, func() float64 {
			if ok, _ := r.Status(); ok {
				return 1
			}
			return 0
		})); err != nil {
			return nil, fmt.Errorf("csi registration: register metrics: %w", err)
		}
	}
	return r, nil
}

// GetInfo tells the kubelet which plugin this is and where it listens.
func (r *Registrar) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	return &registerapi.PluginInfo{
		Type:              registerapi.CSIPlugin,
		Name:              DriverName,
		Endpoint:          r.endpoint,
		SupportedVersions: []string{"1.0.0"},
	}, nil
}

// NotifyRegistrationStatus records the kubelet's verdict.
func (r *Registrar) NotifyRegistrationStatus(_ context.Context, st *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	r.mu.Lock()
	r.registered, r.lastError = st.GetPluginRegistered(), st.GetError()
	r.mu.Unlock()
	if st.GetPluginRegistered() {
		r.log.Info("CSI driver registered with the kubelet", "driver", DriverName, "endpoint", r.endpoint)
	} else {
		r.log.Error("the kubelet refused the CSI driver registration", "driver", DriverName, "error", st.GetError())
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}

// Status returns whether the kubelet reported the driver registered, and
// the error of its last refusal.
func (r *Registrar) Status() (registered bool, lastError string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.registered, r.lastError
}

// Serve serves the registration socket in dir (the kubelet's
// plugins_registry directory, which must exist: the kubelet creates it)
// until ctx is done, then removes the socket.
func (r *Registrar) Serve(ctx context.Context, dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("csi registration: kubelet plugins_registry directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("csi registration: %s is not a directory", dir)
	}
	path := filepath.Join(dir, RegistrationSocketName)
	lis, err := listenUnix(path)
	if err != nil {
		return fmt.Errorf("csi registration: %w", err)
	}
	gs := grpc.NewServer()
	registerapi.RegisterRegistrationServer(gs, r)
	r.log.Info("CSI registration socket listening for the kubelet", "socket", path)
	return serveUntilDone(ctx, gs, lis, path, "csi registration", r.log)
}
