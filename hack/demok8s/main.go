// Command demok8s is `make demo-k8s`: the demo of `make demo` with the
// Kubernetes backends. It starts an envtest API server (kube-apiserver and
// etcd, no kubelet), runs the CA and a node agent in Kubernetes mode in this
// process, and starts bin/demo-server and bin/demo-client as child processes
// that play containers of the pods demo/server-1 and demo/client-1: a fake
// procfs gives each child's PID the pod's cgroup, and the pod status lists
// the container, as a kubelet would. Their SPIFFE IDs therefore come from
// their pods' ServiceAccounts (spiffe://example.org/ns/demo/sa/...).
//
// DEMO_DURATION (or --duration) stops the demo by itself, prints the CA's and
// the agent's status and exits 1 if a handshake failed; without it the demo
// runs until SIGINT/SIGTERM. Either way envtest is stopped, the children are
// killed and the temporary directory is removed.
//
// The demo is a list of steps (run); each returns an error and registers
// how to undo what it started, which runs in reverse order at the end.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/mayfly-pki/mayfly/internal/app/agentapp"
	"github.com/mayfly-pki/mayfly/internal/app/caapp"
	"github.com/mayfly-pki/mayfly/internal/controller/bundle"
	"github.com/mayfly-pki/mayfly/internal/issuer"
)

const (
	caNamespace   = "mayfly-system"
	demoNamespace = "demo"
	nodeName      = "demo-node"
	trustDomain   = "example.org"
	serverID      = "spiffe://example.org/ns/demo/sa/server"
	clientID      = "spiffe://example.org/ns/demo/sa/client"
)

type options struct {
	bin         string
	ttl         time.Duration
	duration    time.Duration
	caHealth    string
	agentHealth string
	serverAddr  string
	keep        bool
}

func main() {
	var o options
	flag.StringVar(&o.bin, "bin", "bin", "directory holding ca, agent, demo-server and demo-client (make build)")
	ttl := flag.String("ttl", envOr("DEMO_TTL", "2m"), "workload certificate lifetime (env DEMO_TTL)")
	duration := flag.String("duration", os.Getenv("DEMO_DURATION"), "stop after this long and report (env DEMO_DURATION); empty: run until Ctrl-C")
	flag.StringVar(&o.caHealth, "ca-health", "127.0.0.1:19543", "CA health, metrics and status address")
	flag.StringVar(&o.agentHealth, "agent-health", "127.0.0.1:19544", "agent health, metrics and status address")
	flag.StringVar(&o.serverAddr, "server", "127.0.0.1:18544", "address the demo server listens on")
	flag.BoolVar(&o.keep, "keep", false, "keep the temporary directory (logs) at exit")
	flag.Parse()
	var err error
	if o.ttl, err = time.ParseDuration(*ttl); err != nil {
		fatalf("--ttl / DEMO_TTL: %v", err)
	}
	if *duration != "" {
		if o.duration, err = time.ParseDuration(*duration); err != nil || o.duration <= 0 {
			fatalf("--duration / DEMO_DURATION %q: want a positive Go duration such as 90s", *duration)
		}
	}
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		fatalf("KUBEBUILDER_ASSETS is not set: run `make demo-k8s`, or export KUBEBUILDER_ASSETS=$(hack/setup-envtest.sh)")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, o)
	stop()
	os.Exit(code)
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "demo-k8s: "+format+"\n", args...)
	os.Exit(2)
}

func say(format string, args ...any) {
	fmt.Printf("demo-k8s: "+format+"\n", args...)
}

// errInterrupted: SIGINT or SIGTERM came before the demo finished (exit 130).
var errInterrupted = errors.New("interrupted")

// cannotStart is an error of a demo that cannot start here, e.g. a binary
// is missing (exit 2).
type cannotStart struct{ error }

// run runs the steps of the demo in order and returns the exit code: 0, 1
// when a step failed, 2 when the demo could not start, 130 when
// interrupted. What the steps started is stopped when run returns.
func run(ctx context.Context, o options) int {
	d := &demo{opts: o}
	defer d.cleanUp()
	for _, step := range []func(context.Context) error{
		d.checkBinaries,
		d.makeWorkDir,
		d.startAPIServer,
		d.createObjects,
		d.startCA,
		d.startAgent,
		d.startServer,
		d.startClient,
		d.waitForEnd,
		d.report,
	} {
		if err := step(ctx); err != nil {
			return d.exitCode(err)
		}
	}
	return 0
}

// demo holds what the steps started and what the later steps need.
type demo struct {
	opts     options
	work     string
	procRoot string
	rest     *rest.Config
	kube     kubernetes.Interface
	// undo holds what the steps started, stopped in reverse order by cleanUp.
	undo []func()
	// failedRun is set when the demo failed: cleanUp then prints the logs.
	failedRun bool

	// The components (the CA, the agent) run until cleanUp, after the
	// final status report, not until the signal.
	wg       sync.WaitGroup
	dead     chan struct{} // a component stopped before cleanUp
	mu       sync.Mutex
	failures []string // "what: error" of components that stopped early

	agentPod    *corev1.Pod
	caAddr      string
	socket      string
	server      *workload
	client      *workload
	clientLog   *clientLog
	interrupted bool
}

// onCleanUp registers f to run when the demo ends, before what was
// registered earlier.
func (d *demo) onCleanUp(f func()) { d.undo = append(d.undo, f) }

func (d *demo) cleanUp() {
	for i := len(d.undo) - 1; i >= 0; i-- {
		d.undo[i]()
	}
}

// exitCode prints err and returns the exit code it stands for.
func (d *demo) exitCode(err error) int {
	if err != errInterrupted { //nolint:errorlint // only the bare sentinel exits silently; a wrapped one says where
		fmt.Fprintf(os.Stderr, "demo-k8s: %v\n", err)
	}
	switch {
	case errors.Is(err, errInterrupted):
		return 130
	case errors.As(err, new(cannotStart)):
		return 2
	}
	d.failedRun = true
	return 1
}

func (d *demo) failed() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.failures...)
}

func (d *demo) fail(what string, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.failures = append(d.failures, fmt.Sprintf("%s: %v", what, err))
}

// checkBinaries finds the ca, agent, demo-server and demo-client binaries.
func (d *demo) checkBinaries(context.Context) error {
	for _, b := range []string{"ca", "agent", "demo-server", "demo-client"} {
		if st, err := os.Stat(filepath.Join(d.opts.bin, b)); err != nil || st.IsDir() {
			return cannotStart{fmt.Errorf("%s missing; run 'make build' (make demo-k8s does)", filepath.Join(d.opts.bin, b))}
		}
	}
	bin, err := filepath.Abs(d.opts.bin)
	if err != nil {
		return cannotStart{err}
	}
	d.opts.bin = bin
	return nil
}

// makeWorkDir creates the temporary directory of the logs, the fake procfs
// and the agent's files; at the end it shows the logs' tails if the demo
// failed, and removes the directory unless --keep.
func (d *demo) makeWorkDir(context.Context) error {
	work, err := os.MkdirTemp("", "mayfly-demo-k8s.")
	if err != nil {
		return cannotStart{err}
	}
	d.work, d.procRoot = work, filepath.Join(work, "proc")
	d.onCleanUp(func() {
		if d.failedRun {
			d.printTails()
		}
		if d.opts.keep {
			say("kept %s", work)
			return
		}
		_ = os.RemoveAll(work)
	})
	return nil
}

// startAPIServer starts envtest's kube-apiserver and etcd.
func (d *demo) startAPIServer(context.Context) error {
	started := time.Now()
	say("starting envtest (kube-apiserver and etcd from %s)", os.Getenv("KUBEBUILDER_ASSETS"))
	env := &envtest.Environment{}
	cfg, err := env.Start()
	if err != nil {
		return fmt.Errorf("starting envtest: %w", err)
	}
	d.onCleanUp(func() {
		if err := env.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "demo-k8s: stopping envtest: %v\n", err)
		} else {
			say("envtest stopped")
		}
	})
	say("envtest up in %s at %s", time.Since(started).Round(time.Millisecond), cfg.Host)
	d.rest = cfg
	d.kube, err = kubernetes.NewForConfig(cfg)
	return err
}

// createObjects creates the namespaces, the ServiceAccounts and the agent
// pod.
func (d *demo) createObjects(ctx context.Context) error {
	core := d.kube.CoreV1()
	for _, ns := range []string{caNamespace, demoNamespace} {
		if _, err := core.Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("creating cluster objects: namespace %s: %w", ns, err)
		}
	}
	for _, sa := range [][2]string{{caNamespace, "mayfly-agent"}, {demoNamespace, "server"}, {demoNamespace, "client"}} {
		if _, err := core.ServiceAccounts(sa[0]).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa[1]}}, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("creating cluster objects: serviceaccount %s/%s: %w", sa[0], sa[1], err)
		}
	}
	pod, err := core.Pods(caNamespace).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "mayfly-agent-" + nodeName, Labels: map[string]string{"app.kubernetes.io/name": "mayfly-agent"}},
		Spec:       corev1.PodSpec{ServiceAccountName: "mayfly-agent", NodeName: nodeName, Containers: []corev1.Container{{Name: "agent", Image: "mayfly/agent"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("creating cluster objects: agent pod: %w", err)
	}
	d.agentPod = pod
	return nil
}

// startComponent runs a component (the CA, the agent) in this process
// until the demo ends, logging to log; stopping early is a failure.
func (d *demo) startComponent(what string, log *logFile, run func(context.Context) error) {
	if d.dead == nil {
		d.dead = make(chan struct{}, 4)
		d.onCleanUp(d.wg.Wait)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.onCleanUp(cancel)
	d.wg.Go(func() {
		defer log.close()
		err := run(ctx)
		if ctx.Err() == nil {
			if err == nil {
				err = errors.New("stopped")
			}
			d.fail(what, err)
			d.dead <- struct{}{}
		}
	})
}

// startCA runs the CA in Kubernetes mode and waits until it published the
// trust bundle ConfigMap.
func (d *demo) startCA(ctx context.Context) error {
	cfg, err := caapp.Parse(fmt.Appendf(nil, `apiVersion: mayfly.dev/v1alpha1
kind: CAConfig
trustDomain: %s
healthAddress: %s
statusSocket: %s
kubernetes: {namespace: %s}
rotation: {rootTTL: 720h, intermediateTTL: 2h}
workloads: {minTTL: 10s, defaultTTL: %s, maxTTL: 1h}
`, trustDomain, d.opts.caHealth, filepath.Join(d.work, "ca", "status.sock"), caNamespace, d.opts.ttl))
	if err != nil {
		return fmt.Errorf("CA config: %w", err)
	}
	log, err := openLog(filepath.Join(d.work, "ca.log"))
	if err != nil {
		return err
	}
	lis, err := issuer.Listen(ctx, "127.0.0.1:0")
	if err != nil {
		log.close()
		return fmt.Errorf("CA listener: %w", err)
	}
	d.caAddr = lis.Addr().String()
	say("starting the CA on %s (logs: %s)", lis.Addr(), log.path)
	d.startComponent("CA", log, func(ctx context.Context) error {
		return caapp.Run(ctx, cfg, caapp.Options{Listener: lis, RestConfig: d.rest, Logger: log.logger})
	})
	return d.eventually(ctx, d.dead, "the trust bundle ConfigMap "+caNamespace+"/"+bundle.ConfigMapName, 60*time.Second, func() bool {
		cm, err := d.kube.CoreV1().ConfigMaps(caNamespace).Get(ctx, bundle.ConfigMapName, metav1.GetOptions{})
		return err == nil && cm.Data[bundle.ConfigMapKey] != ""
	})
}

// startAgent gives the agent what a DaemonSet pod would have (the trust
// bundle, a projected token bound to its pod), runs it in Kubernetes mode
// attesting through the fake procfs, and waits for its socket.
func (d *demo) startAgent(ctx context.Context) error {
	bundleFile, tokenFile, err := d.agentFiles(ctx)
	if err != nil {
		return err
	}
	d.socket = filepath.Join(d.work, "run", "agent.sock")
	cfg, err := agentapp.Parse(fmt.Appendf(nil, `apiVersion: mayfly.dev/v1alpha1
kind: AgentConfig
trustDomain: %s
server: {address: %s, trustBundleFile: %s}
nodeName: %s
socketPath: %s
dataDir: %s
healthAddress: %s
kubernetes: {tokenFile: %s}
workloads: {ttl: %s}
`, trustDomain, d.caAddr, bundleFile, nodeName, d.socket, filepath.Join(d.work, "agent"), d.opts.agentHealth, tokenFile, d.opts.ttl))
	if err != nil {
		return fmt.Errorf("agent config: %w", err)
	}
	if err := os.MkdirAll(d.procRoot, 0o700); err != nil {
		return err
	}
	log, err := openLog(filepath.Join(d.work, "agent.log"))
	if err != nil {
		return err
	}
	say("starting the agent for node %s (logs: %s)", nodeName, log.path)
	ready := make(chan struct{})
	d.startComponent("agent", log, func(ctx context.Context) error {
		return agentapp.Run(ctx, cfg, agentapp.Options{RestConfig: d.rest, ProcRoot: d.procRoot, Logger: log.logger, Ready: func(string) { close(ready) }})
	})
	select {
	case <-ready:
	case <-d.dead:
		return fmt.Errorf("the agent did not start: %s", strings.Join(d.failed(), "; "))
	case <-ctx.Done():
		return errInterrupted
	case <-time.After(60 * time.Second):
		return errors.New("timed out waiting for the agent's socket")
	}
	d.printBanner()
	return nil
}

// agentFiles writes the trust bundle of the CA's ConfigMap and the agent's
// projected ServiceAccount token (audience mayfly-ca, bound to the agent
// pod, so it carries the node name).
func (d *demo) agentFiles(ctx context.Context) (bundleFile, tokenFile string, err error) {
	cm, err := d.kube.CoreV1().ConfigMaps(caNamespace).Get(ctx, bundle.ConfigMapName, metav1.GetOptions{})
	if err != nil {
		return "", "", fmt.Errorf("trust bundle: %w", err)
	}
	bundleFile = filepath.Join(d.work, "ca.crt")
	if err := os.WriteFile(bundleFile, []byte(cm.Data[bundle.ConfigMapKey]), 0o600); err != nil {
		return "", "", err
	}
	exp := int64(3600)
	tr, err := d.kube.CoreV1().ServiceAccounts(caNamespace).CreateToken(ctx, "mayfly-agent", &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences: []string{"mayfly-ca"}, ExpirationSeconds: &exp,
		BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: d.agentPod.Name, UID: d.agentPod.UID},
	}}, metav1.CreateOptions{})
	if err != nil {
		return "", "", fmt.Errorf("agent token: %w", err)
	}
	tokenFile = filepath.Join(d.work, "token")
	if err := os.WriteFile(tokenFile, []byte(tr.Status.Token), 0o600); err != nil {
		return "", "", err
	}
	return bundleFile, tokenFile, nil
}

func (d *demo) endpoint() string { return "unix://" + d.socket }

func (d *demo) printBanner() {
	o := d.opts
	fmt.Printf(`
  SPIFFE_ENDPOINT_SOCKET=%s

  Workloads are pods: demo/server-1 (sa server) and demo/client-1 (sa client)
  on node %s, played by bin/demo-server and bin/demo-client through a fake
  procfs (%s). Certificates live %s and rotate at about half-life.
  Status: %s/agent status --socket %s   %s/ca status --socket %s
  Metrics: http://%s/metrics  http://%s/metrics
  API server: %s (kubectl: --server %s, admin credentials are envtest's)

`, d.endpoint(), nodeName, d.procRoot, o.ttl, o.bin, filepath.Join(d.work, "agent", "status.sock"), o.bin, filepath.Join(d.work, "ca", "status.sock"), o.agentHealth, o.caHealth, d.rest.Host, d.rest.Host)
}

// startServer starts bin/demo-server as pod demo/server-1 and waits until
// it listens.
func (d *demo) startServer(ctx context.Context) error {
	out, err := os.Create(filepath.Join(d.work, "server.log"))
	if err != nil {
		return err
	}
	d.onCleanUp(func() { _ = out.Close() })
	d.server, err = d.startWorkload(ctx, "server-1", "server", "demo-server",
		[]string{"--listen", d.opts.serverAddr, "--id", serverID, "--client-id", clientID}, out)
	if err != nil {
		return fmt.Errorf("demo server: %w", err)
	}
	d.onCleanUp(d.server.stop)
	say("demo-server pid %d is pod %s/server-1 (logs: %s)", d.server.cmd.Process.Pid, demoNamespace, out.Name())
	return d.eventually(ctx, merge(d.dead, d.server.done), "the demo server on "+d.opts.serverAddr, 60*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", d.opts.serverAddr, time.Second)
		if err != nil {
			return false
		}
		_ = c.Close()
		return true
	})
}

// startClient starts bin/demo-client as pod demo/client-1; its output is
// shown and kept in client.out.
func (d *demo) startClient(ctx context.Context) error {
	var err error
	if d.clientLog, err = newClientLog(filepath.Join(d.work, "client.out")); err != nil {
		return err
	}
	d.onCleanUp(d.clientLog.close)
	d.client, err = d.startWorkload(ctx, "client-1", "client", "demo-client",
		[]string{"--server", d.opts.serverAddr, "--id", clientID, "--server-id", serverID}, d.clientLog)
	if err != nil {
		return fmt.Errorf("demo client: %w", err)
	}
	d.onCleanUp(d.client.stop)
	say("demo-client pid %d is pod %s/client-1", d.client.cmd.Process.Pid, demoNamespace)
	return nil
}

// waitForEnd waits for the duration, a signal, or a part of the demo that
// stopped early.
func (d *demo) waitForEnd(ctx context.Context) error {
	var timeout <-chan time.Time
	if d.opts.duration > 0 {
		timeout = time.After(d.opts.duration)
	}
	select {
	case <-timeout:
	case <-ctx.Done():
		d.interrupted = true
	case <-d.client.done:
		d.fail("demo-client", d.client.exitError())
	case <-d.server.done:
		d.fail("demo-server", d.server.exitError())
	case <-d.dead:
	}
	return nil
}

// report stops the client, prints its summary, the CA's and the agent's
// status and the rotations seen, and fails unless every handshake
// succeeded.
func (d *demo) report(context.Context) error {
	d.client.terminate(10 * time.Second)
	last := d.clientLog.summary()
	fmt.Println()
	d.status("ca", filepath.Join(d.work, "ca", "status.sock"))
	fmt.Println()
	d.status("agent", filepath.Join(d.work, "agent", "status.sock"))
	fmt.Println()
	say("%d SVID rotations seen by the agent", countLines(filepath.Join(d.work, "agent.log"), `"msg":"SVID rotated"`))
	for _, f := range d.failed() {
		fmt.Fprintf(os.Stderr, "demo-k8s: %s\n", f)
	}
	total, failed, ok := parseSummary(last)
	switch {
	case !ok:
		return errors.New("FAILED (the client printed no summary)")
	case failed != 0 || total == 0 || len(d.failed()) > 0:
		return fmt.Errorf("FAILED (%d handshakes, %d failed)", total, failed)
	case d.interrupted:
		say("interrupted (%d handshakes, 0 failed)", total)
		return errInterrupted
	}
	say("OK (%d handshakes, 0 failed)", total)
	return nil
}

// eventually polls f until it holds, failing early when stop fires or ctx
// is done.
func (d *demo) eventually(ctx context.Context, stop <-chan struct{}, what string, limit time.Duration, f func() bool) error {
	deadline := time.Now().Add(limit)
	for !f() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s waiting for %s", limit, what)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w while waiting for %s", errInterrupted, what)
		case <-stop:
			return fmt.Errorf("a component stopped while waiting for %s: %s", what, strings.Join(d.failed(), "; "))
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

// merge returns a channel that fires when a fires (once) or b is closed.
func merge(a <-chan struct{}, b <-chan struct{}) <-chan struct{} {
	out := make(chan struct{})
	go func() {
		select {
		case <-a:
		case <-b:
		}
		close(out)
	}()
	return out
}
