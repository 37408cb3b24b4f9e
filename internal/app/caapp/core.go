package caapp

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/cli"
	"github.com/mayfly-pki/mayfly/internal/eviction"
	"github.com/mayfly-pki/mayfly/internal/issuer"
	"github.com/mayfly-pki/mayfly/internal/keystore"
	"github.com/mayfly-pki/mayfly/internal/upstream"
)

// shutdownGrace bounds how long the issuer API and the health server drain
// before they are closed.
const shutdownGrace = 5 * time.Second

// modeParts are what a mode (standalone or Kubernetes) feeds the core: where
// the state lives, how a first start is told from lost state, how agents
// prove who they are and what they may obtain.
type modeParts struct {
	store      authority.Store
	marker     authority.Marker
	attestor   issuer.AgentAttestor
	authorizer issuer.WorkloadAuthorizer
	// nodes re-checks every call of an agent against the configured nodes
	// (standalone); renewal re-checks every RenewAgent (Kubernetes: the
	// agent's fresh ServiceAccount token); evictions refuses the agents of
	// evicted nodes.
	nodes     issuer.NodeChecker
	renewal   issuer.RenewalChecker
	evictions *eviction.Source
	// adoption counts which nodes hold a waiting root (every node's agent,
	// whichever replica it talks to).
	adoption *adoptionWiring
	// kubernetesIDs: workload IDs are ns/<namespace>/sa/<serviceaccount>.
	kubernetesIDs bool
	// gates hold a new root back besides the agents' acknowledgements
	// (Kubernetes: the delivery objects and the kubelet's propagation).
	gates []func() bool
	// decorate adds the mode's own parts to the status, when set.
	decorate func(Status) Status
}

// core is what both modes run: the metrics registry, the authority manager
// and the issuer API, and the listeners that serve them.
type core struct {
	parts     modeParts
	cfg       *Config
	opts      Options
	registry  *prometheus.Registry
	authority *authority.Manager
	issuer    *issuer.Server
}

// newCore builds the core on the parts of a mode and loads the CA state. A
// state that does not load is logged, not returned: the CA keeps serving
// health so the operator sees why it does not issue.
func newCore(ctx context.Context, cfg *Config, opts Options, parts modeParts) (*core, error) {
	c := &core{cfg: cfg, opts: opts, parts: parts, registry: newRegistry()}
	upstream, err := newUpstream(cfg, opts.Clock.Now)
	if err != nil {
		return nil, err
	}
	keys, err := openKeyStore(ctx, cfg)
	if err != nil {
		return nil, err
	}
	c.authority = authority.NewManager(authority.ManagerOptions{
		Store:            parts.store,
		Minter:           &authority.Minter{TrustDomain: cfg.TrustDomain, Policy: cfg.Policy, Upstream: upstream, KeyType: cfg.KeyType, Rand: rand.Reader, Keys: keys},
		Marker:           parts.marker,
		Clock:            opts.Clock,
		Logger:           opts.Logger.With("component", "authority"),
		Registerer:       c.registry,
		AllowRebootstrap: cfg.AllowRebootstrap,
		Acks:             authority.AllOf(append([]func() bool{parts.adoption.acks(&c.authority)}, parts.gates...)...),
	})
	parts.adoption.bind(c.authority, cfg.Policy, opts.Clock, c.registry)
	if err := c.authority.Load(ctx); err != nil {
		opts.Logger.Error("CA state could not be loaded; the CA does not issue until this is fixed", "error", err)
	}
	c.issuer, err = issuer.New(issuer.Config{
		TrustDomain:        cfg.TrustDomain,
		Authority:          c.authority,
		Attestor:           parts.attestor,
		Authorizer:         parts.authorizer,
		Nodes:              parts.nodes,
		Renewal:            parts.renewal,
		Evictions:          parts.evictions,
		AgentMaxAge:        cfg.AgentMaxAge,
		StandardSigning:    cfg.StandardSigning,
		AgentTTL:           cfg.AgentTTL,
		MinWorkloadTTL:     cfg.MinWorkloadTTL,
		DefaultWorkloadTTL: cfg.DefaultWorkloadTTL,
		MaxWorkloadTTL:     cfg.MaxWorkloadTTL,
		KubernetesIDs:      parts.kubernetesIDs,
		JWTIssuer:          cfg.JWT.Issuer,
		ServerDNSNames:     cfg.ServerDNSNames,
		NodeRate:           rate.Limit(cfg.NodeRateLimit),
		NodeBurst:          cfg.NodeBurst,
		AttestRate:         rate.Limit(cfg.Attestation.RateLimit),
		AttestBurst:        cfg.Attestation.Burst,
		AttestPeerRate:     rate.Limit(cfg.Attestation.PeerRateLimit),
		AttestPeerBurst:    cfg.Attestation.PeerBurst,
		OnAck:              c.authority.Kick,
		Acks:               parts.adoption.tracker,
		Now:                opts.Clock.Now,
		Rand:               rand.Reader,
		Logger:             opts.Logger.With("component", "issuer"),
		Registerer:         c.registry,
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// openKeyStore opens the configured PKCS#11 token, closed when ctx ends;
// nil without keys.pkcs11. A token that does not open stops the CA: it
// must not fall back to keys in memory.
func openKeyStore(ctx context.Context, cfg *Config) (authority.KeyStore, error) {
	if cfg.PKCS11 == nil {
		return nil, nil
	}
	k, err := keystore.OpenPKCS11(ctx, "keys.pkcs11", *cfg.PKCS11)
	if err != nil {
		return nil, err
	}
	context.AfterFunc(ctx, func() { _ = k.Close() })
	return k, nil
}

// newUpstream returns the configured upstream, or nil for a self-signed
// root. now is the CA's clock.
func newUpstream(cfg *Config, now func() time.Time) (authority.Upstream, error) {
	if cfg.Upstream == nil {
		return nil, nil
	}
	return upstream.New(cfg.Upstream, now)
}

// newEvictions returns the source of agent evictions in store, read once
// now: until a read succeeds, agents are refused (eviction.ErrNotLoaded).
func newEvictions(ctx context.Context, store eviction.Store, log *slog.Logger) *eviction.Source {
	src := eviction.NewSource(store, log.With("component", "evictions"))
	_ = src.Refresh(ctx)
	return src
}

func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// status is what /status and `ca status` show.
func (c *core) status() Status {
	st := statusOf(c.cfg, c.authority, c.issuer, c.parts.adoption)
	if c.parts.decorate != nil {
		st = c.parts.decorate(st)
	}
	return st
}

// serve runs the issuer API and the health server until ctx is done; ready
// answers /readyz.
func (c *core) serve(ctx context.Context, ready func() error) error {
	g, ctx := errgroup.WithContext(ctx)
	c.serveIssuer(ctx, g)
	c.serveHealth(ctx, g, ready)
	if err := c.serveOIDC(ctx, g); err != nil {
		return err
	}
	if c.cfg.StatusSocket != "" {
		// The status names every CA certificate: on a 0600 unix socket for
		// root and the CA's user, not on the TCP health port. A status
		// socket that cannot be made does not stop the CA.
		st := &cli.StatusServer{Path: c.cfg.StatusSocket, Status: func() any { return c.status() }, Logger: c.opts.Logger}
		g.Go(func() error {
			if err := st.Start(ctx); err != nil {
				c.opts.Logger.Error("`ca status` will not work", "error", err)
			}
			return nil
		})
	}
	return g.Wait()
}

func (c *core) serveIssuer(ctx context.Context, g *errgroup.Group) {
	gs := grpc.NewServer(append([]grpc.ServerOption{grpc.Creds(credentials.NewTLS(c.issuer.TLSConfig()))}, issuer.ServerOptions()...)...)
	issuerv1.RegisterIssuerServer(gs, c.issuer)
	g.Go(func() error {
		lis := c.opts.Listener
		if lis == nil {
			var err error
			if lis, err = issuer.Listen(ctx, c.cfg.ListenAddress); err != nil {
				return fmt.Errorf("listenAddress: %w", err)
			}
		}
		c.opts.Logger.Info("issuer API listening", "address", lis.Addr().String(), "trust_domain", c.cfg.TrustDomain.String())
		if c.opts.Ready != nil {
			c.opts.Ready(lis.Addr().String())
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
		t := c.opts.Clock.NewTimer(shutdownGrace)
		defer t.Stop()
		select {
		case <-stopped:
		case <-t.C():
			gs.Stop()
		}
		return nil
	})
}

func (c *core) serveHealth(ctx context.Context, g *errgroup.Group, ready func() error) {
	if c.cfg.HealthAddress == "" {
		return
	}
	hs := &http.Server{Addr: c.cfg.HealthAddress, Handler: cli.HealthMux(c.registry, ready), ReadHeaderTimeout: 5 * time.Second}
	cli.ServeHTTP(ctx, g, hs, "healthAddress", shutdownGrace, func() {
		c.opts.Logger.Info("health and metrics listening", "address", c.cfg.HealthAddress)
	})
}
