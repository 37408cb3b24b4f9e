package agentapp

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"k8s.io/client-go/rest"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/agent"
	"github.com/mayfly-pki/mayfly/internal/csi"
	"github.com/mayfly-pki/mayfly/internal/workloadapi"
	"github.com/mayfly-pki/mayfly/internal/workloadattest"
	"github.com/mayfly-pki/mayfly/pkg/pki"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// Options are the parts of a run that tests and the demo replace.
type Options struct {
	Logger *slog.Logger
	Clock  rotate.Clock
	// Ready is called once the Workload API serves, with its socket path.
	Ready func(socket string)
	// RestConfig reaches the API server (Kubernetes mode; default in-cluster).
	RestConfig *rest.Config
	// ProcRoot overrides the procfs root (tests).
	ProcRoot string
}

// Run runs the agent until ctx is done.
func Run(ctx context.Context, cfg *Config, opts Options) error {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	}
	if opts.Clock == nil {
		opts.Clock = rotate.RealClock{}
	}
	log := opts.Logger
	rawBundle, err := os.ReadFile(cfg.TrustBundleFile)
	if err != nil {
		return fmt.Errorf("server.trustBundleFile: %w", err)
	}
	bundle, err := pki.DecodeCertificates(rawBundle, pki.PEMLimits{})
	if err != nil {
		return fmt.Errorf("server.trustBundleFile %s: %w", cfg.TrustBundleFile, err)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reachable := prometheus.NewGauge(prometheus.GaugeOpts{Name: "mayfly_agent_ca_reachable", Help: "1 when the last call to the CA got an answer, 0 when the CA was unreachable."})
	reg.MustRegister(reachable)

	credential, err := bootstrapCredential(cfg)
	if err != nil {
		return err
	}
	ca, err := agent.NewCAClient(agent.CAConfig{
		Address: cfg.ServerAddress, TrustDomain: cfg.TrustDomain, InitialBundle: bundle,
		Credential: credential, DataDir: cfg.DataDir, Clock: opts.Clock, Logger: log.With("component", "ca-client"),
		OnReachable: func(ok bool) {
			if ok {
				reachable.Set(1)
			} else {
				reachable.Set(0)
			}
		},
	})
	if err != nil {
		return err
	}
	batcher := &agent.Batcher{Signer: ca}
	mgr := agent.NewManager(agent.ManagerConfig{
		Batcher: batcher, Bundle: ca, TrustDomain: cfg.TrustDomain, Clock: opts.Clock,
		Logger: log.With("component", "identities"), Registerer: reg,
	})
	ca.OnSVID(mgr.SetAgentSVID)

	g, ctx := errgroup.WithContext(ctx)
	var att workloadattest.Attestor
	var resolve func(workloadattest.Selectors) []agent.Spec
	procRoot := opts.ProcRoot
	if cfg.Kubernetes != nil {
		if procRoot == "" {
			procRoot = cfg.Kubernetes.ProcRoot
		}
		rc := opts.RestConfig
		if rc == nil {
			if rc, err = rest.InClusterConfig(); err != nil {
				return fmt.Errorf("kubernetes: %w", err)
			}
		}
		lw, err := workloadattest.NodePods(rc, cfg.NodeName)
		if err != nil {
			return err
		}
		pods, err := workloadattest.NewPodResolver(lw, cfg.NodeName, 0)
		if err != nil {
			return err
		}
		g.Go(func() error { return pods.Start(ctx) })
		att = workloadattest.KubernetesAttestor{Proc: workloadattest.Proc{Root: procRoot}, Resolver: pods}
		resolve = kubernetesSpecs(cfg)
		if c := cfg.Kubernetes.CSI; c != nil {
			drv, err := csi.New(csi.Config{
				NodeName: cfg.NodeName, StateDir: c.StateDir, SocketDir: filepath.Dir(cfg.SocketPath),
				Identities: newCSIIdentities(mgr), Logger: log.With("component", "csi"), Registerer: reg,
			})
			if err != nil {
				return fmt.Errorf("kubernetes.csi: %w", err)
			}
			g.Go(func() error {
				// Volumes published before a restart rotate again before the
				// kubelet can reach the new socket.
				if err := drv.Resume(ctx); err != nil {
					log.Error("resuming CSI volumes", "error", err)
				}
				return drv.Serve(ctx, c.SocketPath)
			})
		}
	} else {
		watcher, err := workloadattest.NewRegistrationWatcher(cfg.RegistrationsFile, cfg.TrustDomain, 2*time.Second, opts.Clock)
		if err != nil {
			return fmt.Errorf("standalone.registrationsFile: %w", err)
		}
		sync := &registrationSync{cfg: cfg, mgr: mgr, log: log}
		if err := sync.apply(watcher.Registrations()); err != nil {
			return err
		}
		watcher.OnChange = func(regs []workloadattest.Registration) {
			log.Info("registrations reloaded", "count", len(regs))
			if err := sync.apply(regs); err != nil {
				log.Error("applying registrations", "error", err)
			}
		}
		watcher.OnError = func(err error) {
			log.Error("registrations file is invalid; keeping the last good set", "file", cfg.RegistrationsFile, "error", err)
		}
		g.Go(func() error { return watcher.Start(ctx) })
		att = workloadattest.UnixAttestor{Proc: workloadattest.Proc{Root: procRoot}}
		resolve = func(sel workloadattest.Selectors) []agent.Spec {
			var out []agent.Spec
			for _, r := range workloadattest.Match(watcher.Registrations(), sel) {
				out = append(out, registrationSpec(cfg, r, nil))
			}
			return out
		}
	}

	wapi, err := workloadapi.New(workloadapi.Config{
		Attestor:   workloadAttestor{att: att},
		Source:     &source{mgr: mgr, ca: ca, td: cfg.TrustDomain, resolve: resolve},
		Logger:     log.With("component", "workload-api"),
		Registerer: reg,
		Now:        opts.Clock.Now,
	})
	if err != nil {
		return err
	}
	gs := grpc.NewServer(grpc.Creds(workloadattest.NewCredentials()),
		grpc.ChainUnaryInterceptor(wapi.UnaryInterceptor()), grpc.ChainStreamInterceptor(wapi.StreamInterceptor()))
	wapi.Register(gs)
	lis, err := workloadapi.Listen(cfg.SocketPath, 0o666, 0o755)
	if err != nil {
		return fmt.Errorf("socketPath: %w", err)
	}

	g.Go(func() error { return ca.Start(ctx) })
	g.Go(func() error { return batcher.Start(ctx) })
	g.Go(func() error { return mgr.Start(ctx) })
	g.Go(func() error {
		log.Info("Workload API listening", "socket", cfg.SocketPath, "node", cfg.NodeName)
		if opts.Ready != nil {
			opts.Ready(cfg.SocketPath)
		}
		if err := gs.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return err
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		gs.Stop()
		return nil
	})
	if cfg.HealthAddress != "" {
		serveHealth(ctx, g, cfg.HealthAddress, reg, ca, mgr, log)
	}
	return g.Wait()
}

// bootstrapCredential returns how the agent attests: a join token
// (single-use, standalone) or the projected ServiceAccount token (re-read at
// every attestation, Kubernetes).
func bootstrapCredential(cfg *Config) (agent.Credential, error) {
	if cfg.Kubernetes != nil {
		path := cfg.Kubernetes.TokenFile
		return func(context.Context) (*issuerv1.AttestAgentRequest, error) {
			tok, err := os.ReadFile(path)
			if err != nil {
				return nil, fmt.Errorf("kubernetes.tokenFile: %w", err)
			}
			return &issuerv1.AttestAgentRequest{Credential: &issuerv1.AttestAgentRequest_ServiceAccountToken{ServiceAccountToken: strings.TrimSpace(string(tok))}}, nil
		}, nil
	}
	token := cfg.JoinToken
	if token == "" && cfg.JoinTokenFile != "" {
		raw, err := os.ReadFile(cfg.JoinTokenFile)
		if err != nil {
			return nil, fmt.Errorf("standalone.joinTokenFile: %w", err)
		}
		token = strings.TrimSpace(string(raw))
	}
	var mu sync.Mutex
	return func(context.Context) (*issuerv1.AttestAgentRequest, error) {
		mu.Lock()
		defer mu.Unlock()
		if token == "" {
			return nil, errors.New("no join token, or it was used already: create one with `ca token create --node " + cfg.NodeName + "` and pass it with --join-token")
		}
		t := token
		token = "" // single use
		return &issuerv1.AttestAgentRequest{Credential: &issuerv1.AttestAgentRequest_JoinToken{JoinToken: t}}, nil
	}, nil
}

// workloadAttestor adapts workloadattest.Attestor to the Workload API.
type workloadAttestor struct{ att workloadattest.Attestor }

func (w workloadAttestor) Attest(ctx context.Context) (workloadapi.Caller, error) {
	p, ok := workloadattest.PeerFromContext(ctx)
	if !ok {
		return nil, errors.New("no peer credentials on this connection")
	}
	return w.att.Attest(ctx, p)
}

func kubernetesSpecs(cfg *Config) func(workloadattest.Selectors) []agent.Spec {
	var mu sync.Mutex
	uids := map[string]map[string]bool{} // ns/sa -> pod UIDs seen on this node
	return func(sel workloadattest.Selectors) []agent.Spec {
		if sel.Namespace == "" || sel.ServiceAccount == "" {
			return nil
		}
		key := sel.Namespace + "/" + sel.ServiceAccount
		mu.Lock()
		if uids[key] == nil {
			uids[key] = map[string]bool{}
		}
		uids[key][sel.PodUID] = true
		mu.Unlock()
		return []agent.Spec{{
			Key: key, TTL: cfg.WorkloadTTL, KeyType: cfg.KeyType,
			PodUIDs: func() []string {
				mu.Lock()
				defer mu.Unlock()
				out := make([]string, 0, len(uids[key]))
				for u := range uids[key] {
					out = append(out, u)
				}
				return out
			},
		}}
	}
}

func registrationSpec(cfg *Config, r workloadattest.Registration, sinks []rotate.Sink) agent.Spec {
	ttl := r.TTLDuration
	if ttl == 0 {
		ttl = cfg.WorkloadTTL
	}
	return agent.Spec{Key: r.SPIFFEID.String(), SpiffeID: r.SPIFFEID.String(), DNSNames: r.DNSNames, TTL: ttl, KeyType: cfg.KeyType, Sinks: sinks, Pinned: true}
}

// registrationSync keeps one pinned identity per registration (so files in
// writeDir stay fresh and fetches are answered from memory).
type registrationSync struct {
	cfg     *Config
	mgr     *agent.Manager
	log     *slog.Logger
	mu      sync.Mutex
	current map[string]bool
}

func (s *registrationSync) apply(regs []workloadattest.Registration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := map[string]bool{}
	for _, r := range regs {
		var sinks []rotate.Sink
		if s.cfg.WriteDir != "" {
			dir := filepath.Join(s.cfg.WriteDir, dirName(r.SPIFFEID))
			fs, err := rotate.NewFileSink(dir, rotate.FileSinkOptions{})
			if err != nil {
				return fmt.Errorf("writeDir: %w", err)
			}
			sinks = append(sinks, fs)
		}
		spec := registrationSpec(s.cfg, r, sinks)
		if len(sinks) > 0 {
			spec.Path = agent.PathWriteDir
		}
		next[spec.Key] = true
		if !s.current[spec.Key] {
			s.mgr.Ensure(spec)
		}
	}
	for k := range s.current {
		if !next[k] {
			s.mgr.Remove(k)
			s.log.Info("registration removed; identity dropped", "spiffe_id", k)
		}
	}
	s.current = next
	return nil
}

// dirName turns spiffe://td/a/b into "a-b" for a writeDir subdirectory.
func dirName(id spiffeid.ID) string {
	return strings.ReplaceAll(strings.TrimPrefix(id.Path(), "/"), "/", "-")
}

// source is the Workload API's view of the identity manager.
type source struct {
	mgr     *agent.Manager
	ca      *agent.CAClient
	td      spiffeid.TrustDomain
	resolve func(workloadattest.Selectors) []agent.Spec
}

func (s *source) specs(c workloadapi.Caller) []agent.Spec {
	sel, ok := c.(workloadattest.Selectors)
	if !ok {
		return nil
	}
	return s.resolve(sel)
}

func (s *source) Identities(ctx context.Context, c workloadapi.Caller) ([]workloadapi.Identity, map[spiffeid.TrustDomain][]*x509.Certificate, error) {
	specs := s.specs(c)
	for {
		out, err := s.issued(ctx, specs)
		if err != nil || len(out) > 0 || len(specs) == 0 {
			roots, _ := s.ca.Bundle()
			return out, map[spiffeid.TrustDomain][]*x509.Certificate{s.td: roots}, err
		}
		// None issued yet (a new pod the CA has not seen, the CA down):
		// wait for the first while the agent retries.
		if err := s.mgr.WaitAnyReady(ctx, specs); err != nil {
			return nil, nil, err
		}
	}
}

// issued returns the credentials of specs that have been issued, after
// each one's first attempt ended: an identity the CA refuses must not hold
// up the others of the same workload (it is reported in the log and pushed
// on the open streams if it comes later).
func (s *source) issued(ctx context.Context, specs []agent.Spec) ([]workloadapi.Identity, error) {
	out := make([]workloadapi.Identity, 0, len(specs))
	for _, spec := range specs {
		cred, err := s.mgr.Obtain(ctx, spec)
		if errors.Is(err, agent.ErrNotIssued) {
			continue
		}
		if err != nil {
			return nil, err
		}
		id, err := spiffeid.FromURI(cred.Leaf().URIs[0])
		if err != nil {
			return nil, err
		}
		out = append(out, workloadapi.Identity{ID: id, Chain: cred.Certificates, Key: cred.Key})
	}
	return out, nil
}

func (s *source) Subscribe(c workloadapi.Caller) (<-chan struct{}, func()) {
	out := make(chan struct{}, 1)
	var cancels []func()
	forward := func(ch <-chan struct{}, done <-chan struct{}) {
		for {
			select {
			case <-done:
				return
			case <-ch:
				select {
				case out <- struct{}{}:
				default:
				}
			}
		}
	}
	done := make(chan struct{})
	for _, spec := range s.specs(c) {
		// Kubernetes identities are created on first use: make sure the
		// one subscribed to exists, or its rotations are never pushed.
		s.mgr.Ensure(spec)
		ch, cancel := s.mgr.Subscribe(spec.Key)
		cancels = append(cancels, cancel)
		go forward(ch, done)
	}
	bch, bcancel := s.ca.SubscribeBundle()
	cancels = append(cancels, bcancel)
	go forward(bch, done)
	return out, func() {
		close(done)
		for _, c := range cancels {
			c()
		}
	}
}

func serveHealth(ctx context.Context, g *errgroup.Group, addr string, reg *prometheus.Registry, ca *agent.CAClient, mgr *agent.Manager, log *slog.Logger) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		select {
		case <-ca.Ready():
			_, _ = w.Write([]byte("ok\n"))
		default:
			http.Error(w, "no agent SVID yet", http.StatusServiceUnavailable)
		}
	})
	mux.HandleFunc("/status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(struct {
			Agent      rotate.State   `json:"agent"`
			Identities []agent.Status `json:"identities"`
		}{ca.Rotator().State(), mgr.Status()})
	})
	hs := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	g.Go(func() error {
		lis, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("healthAddress: %w", err)
		}
		log.Info("health, metrics and status listening", "address", addr)
		if err := hs.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return err
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
