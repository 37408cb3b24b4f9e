package agentapp

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"k8s.io/client-go/rest"

	"github.com/mayfly-pki/mayfly/internal/agent"
	"github.com/mayfly-pki/mayfly/internal/cli"
	"github.com/mayfly-pki/mayfly/internal/csi"
	"github.com/mayfly-pki/mayfly/internal/workloadapi"
	"github.com/mayfly-pki/mayfly/internal/workloadattest"
	"github.com/mayfly-pki/mayfly/pkg/pki"
	"github.com/mayfly-pki/mayfly/pkg/readlimit"
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
	rawBundle, err := readlimit.File(cfg.TrustBundleFile, pki.DefaultPEMMaxBytes)
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

	rejected := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mayfly_agent_svids_rejected_total",
		Help: "Certificates returned by the CA that the agent refused (wrong ID, wrong key, or not chaining to the trust bundle), by kind (agent, workload).",
	}, []string{"kind"})
	reg.MustRegister(rejected)
	rejected.WithLabelValues("agent")
	rejected.WithLabelValues("workload")

	credential, settle, err := bootstrapCredential(cfg)
	if err != nil {
		return err
	}
	ca, err := agent.NewCAClient(agent.CAConfig{
		Address: cfg.ServerAddress, TrustDomain: cfg.TrustDomain, InitialBundle: bundle, NodeName: cfg.NodeName,
		Credential: credential, RenewalToken: renewalToken(cfg), OnAttested: settle, DataDir: cfg.DataDir,
		OnRejected: func(error) { rejected.WithLabelValues("agent").Inc() }, Clock: opts.Clock, Logger: log.With("component", "ca-client"), Registerer: reg,
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
	batcher := &agent.Batcher{Signer: ca.Conn, Clock: opts.Clock}
	mgr := agent.NewManager(agent.ManagerConfig{
		Batcher: batcher, Bundle: ca.Bundles, TrustDomain: cfg.TrustDomain, Clock: opts.Clock,
		Logger: log.With("component", "identities"), Registerer: reg,
		OnRejected: func(error) { rejected.WithLabelValues("workload").Inc() },
	})
	ca.Store.OnChange(mgr.SetAgentSVID)

	// JWT-SVID requests of many workloads share SignJWTs calls, as
	// certificate requests share SignWorkloads calls.
	jwtBatcher := &agent.JWTBatcher{Signer: ca.Conn, Clock: opts.Clock}
	jwts, err := agent.NewJWTCache(jwtBatcher, opts.Clock, reg)
	if err != nil {
		return err
	}
	g, ctx := errgroup.WithContext(ctx)
	var att workloadattest.Attestor
	var entitlements agent.Entitlements
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
		cgroupRoot, err := kubeletCgroupRoot(cfg.Kubernetes.CgroupRoot)
		if err != nil {
			return err
		}
		log.Info("workload attestation reads pod cgroups under the kubelet's cgroup root", "cgroupRoot", cmp.Or(cgroupRoot, "(relative: the agent's cgroup namespace)"))
		att = workloadattest.KubernetesAttestor{Proc: workloadattest.Proc{Root: procRoot}, Resolver: pods, CgroupRoot: cgroupRoot}
		podIndex := &agent.PodIndex{Now: opts.Clock.Now}
		entitlements = &agent.PodIdentities{Pods: podIndex, TTL: cfg.WorkloadTTL, KeyType: cfg.KeyType}
		if c := cfg.Kubernetes.CSI; c != nil {
			var mounter csi.Mounter // nil: mount(2) in this process
			if c.MounterSocket != "" {
				mounter = csi.RemoteMounter{Socket: c.MounterSocket}
			}
			volumeJWTs := agent.NewJWTFiles(jwts, opts.Clock, nil, log.With("component", "csi-jwt-files"))
			g.Go(func() error {
				<-ctx.Done()
				volumeJWTs.Close()
				return nil
			})
			volumes := &agent.VolumeIdentities{Manager: mgr, Pods: podIndex, JWT: volumeJWTs}
			drv, err := csi.New(csi.Config{
				NodeName: cfg.NodeName, StateDir: c.StateDir, SocketDir: filepath.Dir(cfg.SocketPath), KubeletDir: c.KubeletDir, Clock: opts.Clock,
				Identities: volumes, Tokens: volumes, Logger: log.With("component", "csi"), Registerer: reg,
				Mounter: mounter,
			})
			if err != nil {
				return fmt.Errorf("kubernetes.csi: %w", err)
			}
			if c.RegistrationDir != "-" {
				registrar, err := csi.NewRegistrar(c.SocketPath, log.With("component", "csi"), reg)
				if err != nil {
					return err
				}
				g.Go(func() error {
					select {
					case <-drv.Listening():
					case <-ctx.Done():
						return nil
					}
					// Without the kubelet's directory the Workload API and
					// volumes already published keep working: say so, run on.
					if err := registrar.Serve(ctx, c.RegistrationDir); err != nil {
						log.Error("CSI driver not registered with the kubelet; pods with csi.mayfly.dev volumes will not start", "error", err)
					}
					return nil
				})
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
		regs := &agent.Registrations{Manager: mgr, DefaultTTL: cfg.WorkloadTTL, KeyType: cfg.KeyType, WriteDir: cfg.WriteDir, Logger: log}
		if len(cfg.WriteDirJWTAudience) > 0 {
			files := agent.NewJWTFiles(jwts, opts.Clock, cfg.WriteDirJWTAudience, log.With("component", "jwt-files"))
			regs.JWTFiles = files
			g.Go(func() error {
				<-ctx.Done()
				files.Close()
				return nil
			})
		}
		if err := regs.Apply(watcher.Registrations()); err != nil {
			return err
		}
		watcher.OnChange = func(rs []workloadattest.Registration) {
			log.Info("registrations reloaded", "count", len(rs))
			if err := regs.Apply(rs); err != nil {
				log.Error("applying registrations", "error", err)
			}
		}
		watcher.OnError = func(err error) {
			log.Error("registrations file is invalid; keeping the last good set", "file", cfg.RegistrationsFile, "error", err)
		}
		g.Go(func() error { return watcher.Start(ctx) })
		att = workloadattest.UnixAttestor{Proc: workloadattest.Proc{Root: procRoot}, PathSelectors: regs.UsesPath}
		entitlements = regs
	}

	limits, err := workloadAPILimits(cfg, log)
	if err != nil {
		return err
	}
	wsrc := &agent.WorkloadSource{Manager: mgr, Bundle: ca.Bundles, TrustDomain: cfg.TrustDomain, Entitlements: entitlements, JWT: jwts, JWTKeys: ca.Bundles}
	// A bundle is acknowledged to the CA once every file and stream has it.
	ca.Bundles.DeliverTo(mgr, wsrc)
	wapi, err := workloadapi.New(workloadapi.Config{
		Attestor:   workloadAttestor{att: att},
		Source:     wsrc,
		Logger:     log.With("component", "workload-api"),
		Registerer: reg,
		Now:        opts.Clock.Now,
		Limits:     limits,
	})
	if err != nil {
		return err
	}
	gs := grpc.NewServer(append(wapi.ServerOptions(), grpc.Creds(workloadattest.NewCredentials()),
		grpc.ChainUnaryInterceptor(wapi.UnaryInterceptor()), grpc.ChainStreamInterceptor(wapi.StreamInterceptor()))...)
	wapi.Register(gs)
	lis, err := workloadapi.Listen(cfg.SocketPath, 0o666, 0o755)
	if err != nil {
		return fmt.Errorf("socketPath: %w", err)
	}
	lis = wapi.LimitListener(lis)

	g.Go(func() error { return ca.Start(ctx) })
	g.Go(func() error { return batcher.Start(ctx) })
	g.Go(func() error { return jwtBatcher.Start(ctx) })
	g.Go(func() error { return mgr.Start(ctx) })
	// After a taint (ca taint), what chains to the tainted authority is
	// re-issued within the CA's window.
	reissuer := &agent.Reissuer{Bundle: ca.Bundles, Clock: opts.Clock, Logger: log.With("component", "reissuer"),
		Rotators: func() []*rotate.Rotator { return append(mgr.Rotators(), ca.Rotator()) }}
	g.Go(func() error { return reissuer.Start(ctx) })
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
		serveHealth(ctx, g, cfg.HealthAddress, reg, ca, log)
	}
	// The status names every identity and serial: on a 0600 unix socket
	// for root and the agent's user, not on the TCP health port.
	st := &cli.StatusServer{
		Path:   StatusSocket(cfg.DataDir),
		Status: func() any { return statusDoc{Agent: ca.Rotator().State(), Identities: mgr.Status()} },
		Logger: log,
	}
	g.Go(func() error {
		// A status socket that cannot be made does not stop the agent.
		if err := st.Start(ctx); err != nil {
			log.Error("`agent status` will not work", "error", err)
		}
		return nil
	})
	return g.Wait()
}

// bootstrapCredential returns how the agent attests, and what to tell of
// each attestation's outcome: a join token (single-use, standalone, kept
// while the CA is unreachable) or the projected ServiceAccount token
// (re-read at every attestation, Kubernetes).
func bootstrapCredential(cfg *Config) (agent.Credential, func(error), error) {
	if cfg.Kubernetes != nil {
		return agent.ServiceAccountToken(cfg.Kubernetes.TokenFile), nil, nil
	}
	token := cfg.JoinToken
	if token == "" && cfg.JoinTokenFile != "" {
		raw, err := readlimit.File(cfg.JoinTokenFile, agent.MaxTokenFileSize)
		if err != nil {
			return nil, nil, fmt.Errorf("standalone.joinTokenFile: %w", err)
		}
		token = strings.TrimSpace(string(raw))
	}
	jt := agent.NewJoinToken(token, cfg.NodeName)
	return jt.Credential, jt.Settle, nil
}

// renewalToken is the agent pod's token sent with each renewal in
// Kubernetes mode; standalone agents send none.
func renewalToken(cfg *Config) agent.RenewalToken {
	if cfg.Kubernetes == nil {
		return nil
	}
	return agent.ServiceAccountRenewalToken(cfg.Kubernetes.TokenFile)
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

// StatusSocket is the agent's status socket in its data directory.
func StatusSocket(dataDir string) string { return filepath.Join(dataDir, cli.StatusSocketName) }

func serveHealth(ctx context.Context, g *errgroup.Group, addr string, reg *prometheus.Registry, ca *agent.CAClient, log *slog.Logger) {
	ready := func() error {
		select {
		case <-ca.Ready():
			return nil
		default:
			return errors.New("no agent SVID yet")
		}
	}
	hs := &http.Server{Addr: addr, Handler: cli.HealthMux(reg, ready), ReadHeaderTimeout: 5 * time.Second}
	cli.ServeHTTP(ctx, g, hs, "healthAddress", 5*time.Second, func() { log.Info("health and metrics listening", "address", addr) })
}

// kubeletCgroupRoot is the configured kubernetes.cgroupRoot or, when empty,
// the one the agent's own cgroups show (the path above kubepods): pods of
// a kubelet with --cgroup-root=/kubelet are under /kubelet/kubepods. ""
// when the agent sees relative paths (its own cgroup namespace) or is in
// no pod.
func kubeletCgroupRoot(configured string) (string, error) {
	if configured != "" {
		return configured, nil
	}
	b, err := readlimit.File("/proc/self/cgroup", workloadattest.MaxCgroupFileSize)
	if err != nil {
		return "", fmt.Errorf("kubernetes.cgroupRoot: not set, and the agent's own cgroups: %w", err)
	}
	lines, err := workloadattest.ParseCgroups(b)
	if err != nil {
		return "", fmt.Errorf("kubernetes.cgroupRoot: not set, and the agent's own cgroups: %w", err)
	}
	root, err := workloadattest.CgroupRootOf(lines)
	if err != nil {
		return "", fmt.Errorf("kubernetes.cgroupRoot: not set, and the agent's own cgroups: %w", err)
	}
	return root, nil
}
