package caapp

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"k8s.io/client-go/rest"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/cli"
	"github.com/mayfly-pki/mayfly/internal/hostnodes"
	"github.com/mayfly-pki/mayfly/internal/issuer"
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
}

// Run runs the CA until ctx is done.
func Run(ctx context.Context, cfg *Config, opts Options) error {
	if cfg.Kubernetes != nil {
		return runKubernetes(ctx, cfg, opts)
	}
	return runStandalone(ctx, cfg, opts)
}

func defaults(opts *Options) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	}
	if opts.Clock == nil {
		opts.Clock = rotate.RealClock{}
	}
}

func runStandalone(ctx context.Context, cfg *Config, opts Options) error {
	defaults(&opts)
	log := opts.Logger
	store, err := authority.NewDirStore(cfg.Directory)
	if err != nil {
		return err
	}
	reg := newRegistry()
	upstream, err := newUpstream(cfg)
	if err != nil {
		return err
	}
	var srv *issuer.Server
	mgr := authority.NewManager(authority.ManagerOptions{
		Store:            store,
		Minter:           &authority.Minter{TrustDomain: cfg.TrustDomain, Policy: cfg.Policy, Upstream: upstream, KeyType: cfg.KeyType, Rand: rand.Reader},
		Marker:           fileMarker{path: filepath.Join(cfg.Directory, TrustBundleFile)},
		Clock:            opts.Clock,
		Logger:           log.With("component", "authority"),
		Registerer:       reg,
		AllowRebootstrap: cfg.AllowRebootstrap,
		Acks:             func() bool { return srv != nil && srv.AllAgentsCurrent() },
	})
	if err := mgr.Load(ctx); err != nil {
		// Not ready: keep serving health so the operator sees why.
		log.Error("CA state could not be loaded; the CA does not issue until this is fixed", "error", err)
	}
	srv, err = issuer.New(issuer.Config{
		TrustDomain:        cfg.TrustDomain,
		Authority:          mgr,
		Attestor:           hostnodes.Attestor{Tokens: hostnodes.NewJoinTokens(cfg.Directory, opts.Clock.Now)},
		Authorizer:         hostnodes.NewAuthorizer(cfg.TrustDomain, cfg.Nodes),
		AgentTTL:           cfg.AgentTTL,
		MinWorkloadTTL:     cfg.MinWorkloadTTL,
		DefaultWorkloadTTL: cfg.DefaultWorkloadTTL,
		MaxWorkloadTTL:     cfg.MaxWorkloadTTL,
		ServerDNSNames:     cfg.ServerDNSNames,
		NodeRate:           rate.Limit(cfg.NodeRateLimit),
		NodeBurst:          cfg.NodeBurst,
		AttestRate:         rate.Limit(cfg.Attestation.RateLimit),
		AttestBurst:        cfg.Attestation.Burst,
		AttestPeerRate:     rate.Limit(cfg.Attestation.PeerRateLimit),
		AttestPeerBurst:    cfg.Attestation.PeerBurst,
		OnAck:              mgr.Kick,
		Now:                opts.Clock.Now,
		Rand:               rand.Reader,
		Logger:             log.With("component", "issuer"),
		Registerer:         reg,
	})
	if err != nil {
		return err
	}
	g, ctx := errgroup.WithContext(ctx)
	serveIssuer(ctx, g, cfg, opts, srv)
	serveHealth(ctx, g, cfg, reg, mgr.Ready, func() Status { return statusOf(cfg, mgr, srv) }, log)
	g.Go(func() error { return mgr.Rotate(ctx) })
	g.Go(func() error { return reloadLoop(ctx, mgr, opts.Clock, 10*time.Second) })
	return g.Wait()
}

// reloadLoop picks up rotations written by another process on the same
// store, and recovers from a state that was fixed by the operator.
func reloadLoop(ctx context.Context, mgr *authority.Manager, clock rotate.Clock, every time.Duration) error {
	for {
		t := clock.NewTimer(every)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C():
		}
		if mgr.Ready() != nil {
			_ = mgr.Load(ctx)
		} else {
			_ = mgr.Reload(ctx)
		}
	}
}

func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

func serveIssuer(ctx context.Context, g *errgroup.Group, cfg *Config, opts Options, srv *issuer.Server) {
	gs := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(srv.TLSConfig())),
		grpc.MaxRecvMsgSize(8<<20),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: time.Minute, Timeout: 20 * time.Second}),
	)
	issuerv1.RegisterIssuerServer(gs, srv)
	g.Go(func() error {
		lis := opts.Listener
		if lis == nil {
			var err error
			if lis, err = net.Listen("tcp", cfg.ListenAddress); err != nil {
				return fmt.Errorf("listenAddress: %w", err)
			}
		}
		opts.Logger.Info("issuer API listening", "address", lis.Addr().String(), "trust_domain", cfg.TrustDomain.String())
		if opts.Ready != nil {
			opts.Ready(lis.Addr().String())
		}
		if err := gs.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("issuer API: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		stopped := make(chan struct{})
		go func() { gs.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(5 * time.Second):
			gs.Stop()
		}
		return nil
	})
}

func serveHealth(ctx context.Context, g *errgroup.Group, cfg *Config, reg *prometheus.Registry, ready func() error, status func() Status, log *slog.Logger) {
	if cfg.StatusSocket != "" {
		// The status names every CA certificate: on a 0600 unix socket
		// for root and the CA's user, not on the TCP health port.
		// A status socket that cannot be made does not stop the CA.
		st := &cli.StatusServer{Path: cfg.StatusSocket, Status: func() any { return status() }, Logger: log}
		g.Go(func() error {
			if err := st.Start(ctx); err != nil {
				log.Error("`ca status` will not work", "error", err)
			}
			return nil
		})
	}
	if cfg.HealthAddress == "" {
		return
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := ready(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	hs := &http.Server{Addr: cfg.HealthAddress, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	g.Go(func() error {
		log.Info("health and metrics listening", "address", cfg.HealthAddress)
		if err := hs.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("healthAddress: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return hs.Shutdown(sctx) //nolint:contextcheck // the run context is already done
	})
}

// fileMarker is the standalone authority.Marker: the trust bundle file.
type fileMarker struct{ path string }

func (f fileMarker) Marked(context.Context) (bool, error) {
	_, err := os.Stat(f.path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}

func (f fileMarker) Mark(_ context.Context, bundlePEM []byte) error {
	tmp := f.path + ".tmp"
	if err := os.WriteFile(tmp, bundlePEM, 0o644); err != nil { //nolint:gosec // a trust bundle is public
		return err
	}
	return os.Rename(tmp, f.path)
}
