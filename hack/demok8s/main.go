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
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/mayfly-pki/mayfly/internal/app/agentapp"
	"github.com/mayfly-pki/mayfly/internal/app/caapp"
	"github.com/mayfly-pki/mayfly/internal/controller/bundle"
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

// demo holds what run starts, so that cleanup stops all of it.
type demo struct {
	opts     options
	work     string
	procRoot string
	kube     kubernetes.Interface
	rest     *rest.Config
	failures []string // "what: error" of components that stopped early
	mu       sync.Mutex
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

func run(ctx context.Context, o options) int {
	for _, b := range []string{"ca", "agent", "demo-server", "demo-client"} {
		if st, err := os.Stat(filepath.Join(o.bin, b)); err != nil || st.IsDir() {
			fmt.Fprintf(os.Stderr, "demo-k8s: %s missing; run 'make build' (make demo-k8s does)\n", filepath.Join(o.bin, b))
			return 2
		}
	}
	bin, err := filepath.Abs(o.bin)
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo-k8s: %v\n", err)
		return 2
	}
	o.bin = bin
	work, err := os.MkdirTemp("", "mayfly-demo-k8s.")
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo-k8s: %v\n", err)
		return 2
	}
	d := &demo{opts: o, work: work, procRoot: filepath.Join(work, "proc")}
	defer func() {
		if o.keep {
			say("kept %s", work)
			return
		}
		_ = os.RemoveAll(work)
	}()

	started := time.Now()
	say("starting envtest (kube-apiserver and etcd from %s)", os.Getenv("KUBEBUILDER_ASSETS"))
	env := &envtest.Environment{}
	cfg, err := env.Start()
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo-k8s: starting envtest: %v\n", err)
		return 1
	}
	defer func() {
		if err := env.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "demo-k8s: stopping envtest: %v\n", err)
		} else {
			say("envtest stopped")
		}
	}()
	say("envtest up in %s at %s", time.Since(started).Round(time.Millisecond), cfg.Host)
	d.rest = cfg
	if d.kube, err = kubernetes.NewForConfig(cfg); err != nil {
		fmt.Fprintf(os.Stderr, "demo-k8s: %v\n", err)
		return 1
	}

	code := d.demo(ctx)
	if code == 1 {
		d.printTails()
	}
	return code
}

// demo sets up the cluster objects, the CA, the agent and the workloads,
// and runs until ctx is done, the duration passed or something failed.
func (d *demo) demo(ctx context.Context) int {
	o := d.opts
	kube := d.kube
	caLog, closeCALog, err := fileLogger(filepath.Join(d.work, "ca.log"))
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo-k8s: %v\n", err)
		return 1
	}
	defer closeCALog()
	agLog, closeAgLog, err := fileLogger(filepath.Join(d.work, "agent.log"))
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo-k8s: %v\n", err)
		return 1
	}
	defer closeAgLog()
	// The CA and the agent run under their own context: they stop after
	// the final status report (and before their logs close), not at the
	// signal.
	cctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()

	agentPod, err := d.objects(ctx)
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo-k8s: creating cluster objects: %v\n", err)
		return 1
	}

	// The CA, Kubernetes mode, in this process.
	caCfg, err := caapp.Parse(fmt.Appendf(nil, `apiVersion: mayfly.dev/v1alpha1
kind: CAConfig
trustDomain: %s
healthAddress: %s
statusSocket: %s
kubernetes: {namespace: %s}
rotation: {rootTTL: 720h, intermediateTTL: 2h}
workloads: {minTTL: 10s, defaultTTL: %s, maxTTL: 1h}
`, trustDomain, o.caHealth, filepath.Join(d.work, "ca", "status.sock"), caNamespace, o.ttl))
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo-k8s: CA config: %v\n", err)
		return 1
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo-k8s: CA listener: %v\n", err)
		return 1
	}
	say("starting the CA on %s (logs: %s)", lis.Addr(), filepath.Join(d.work, "ca.log"))
	dead := make(chan struct{}, 4) // a component stopped before cctx was done
	wg.Go(func() {
		err := caapp.Run(cctx, caCfg, caapp.Options{Listener: lis, RestConfig: d.rest, Logger: caLog})
		if cctx.Err() == nil {
			if err == nil {
				err = errors.New("stopped")
			}
			d.fail("CA", err)
			dead <- struct{}{}
		}
	})

	var bundlePEM string
	if err := d.eventually(ctx, dead, "the trust bundle ConfigMap "+caNamespace+"/"+bundle.ConfigMapName, 60*time.Second, func() bool {
		cm, err := kube.CoreV1().ConfigMaps(caNamespace).Get(ctx, bundle.ConfigMapName, metav1.GetOptions{})
		if err != nil {
			return false
		}
		bundlePEM = cm.Data[bundle.ConfigMapKey]
		return bundlePEM != ""
	}); err != nil {
		fmt.Fprintf(os.Stderr, "demo-k8s: %v\n", err)
		return 1
	}
	bundleFile := filepath.Join(d.work, "ca.crt")
	tokenFile := filepath.Join(d.work, "token")
	if err := os.WriteFile(bundleFile, []byte(bundlePEM), 0o600); err != nil {
		fmt.Fprintf(os.Stderr, "demo-k8s: %v\n", err)
		return 1
	}
	// The projected token a DaemonSet pod would get: audience mayfly-ca,
	// bound to the agent pod (so it carries the node name).
	exp := int64(3600)
	tr, err := kube.CoreV1().ServiceAccounts(caNamespace).CreateToken(ctx, "mayfly-agent", &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences: []string{"mayfly-ca"}, ExpirationSeconds: &exp,
		BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: agentPod.Name, UID: agentPod.UID},
	}}, metav1.CreateOptions{})
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo-k8s: agent token: %v\n", err)
		return 1
	}
	if err := os.WriteFile(tokenFile, []byte(tr.Status.Token), 0o600); err != nil {
		fmt.Fprintf(os.Stderr, "demo-k8s: %v\n", err)
		return 1
	}

	// The agent, Kubernetes mode, attesting through the fake procfs.
	socket := filepath.Join(d.work, "run", "agent.sock")
	agCfg, err := agentapp.Parse(fmt.Appendf(nil, `apiVersion: mayfly.dev/v1alpha1
kind: AgentConfig
trustDomain: %s
server: {address: %s, trustBundleFile: %s}
nodeName: %s
socketPath: %s
dataDir: %s
healthAddress: %s
kubernetes: {tokenFile: %s}
workloads: {ttl: %s}
`, trustDomain, lis.Addr(), bundleFile, nodeName, socket, filepath.Join(d.work, "agent"), o.agentHealth, tokenFile, o.ttl))
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo-k8s: agent config: %v\n", err)
		return 1
	}
	if err := os.MkdirAll(d.procRoot, 0o700); err != nil {
		fmt.Fprintf(os.Stderr, "demo-k8s: %v\n", err)
		return 1
	}
	say("starting the agent for node %s (logs: %s)", nodeName, filepath.Join(d.work, "agent.log"))
	ready := make(chan struct{})
	wg.Go(func() {
		err := agentapp.Run(cctx, agCfg, agentapp.Options{RestConfig: d.rest, ProcRoot: d.procRoot, Logger: agLog, Ready: func(string) { close(ready) }})
		if cctx.Err() == nil {
			if err == nil {
				err = errors.New("stopped")
			}
			d.fail("agent", err)
			dead <- struct{}{}
		}
	})
	select {
	case <-ready:
	case <-dead:
		return 1
	case <-ctx.Done():
		return 130
	case <-time.After(60 * time.Second):
		fmt.Fprintln(os.Stderr, "demo-k8s: timed out waiting for the agent's socket")
		return 1
	}
	endpoint := "unix://" + socket
	fmt.Printf(`
  SPIFFE_ENDPOINT_SOCKET=%s

  Workloads are pods: demo/server-1 (sa server) and demo/client-1 (sa client)
  on node %s, played by bin/demo-server and bin/demo-client through a fake
  procfs (%s). Certificates live %s and rotate at about half-life.
  Status: %s/agent status --address %s   %s/ca status --address %s
  Metrics: http://%s/metrics  http://%s/metrics
  API server: %s (kubectl: --server %s, admin credentials are envtest's)

`, endpoint, nodeName, d.procRoot, o.ttl, o.bin, o.agentHealth, o.bin, o.caHealth, o.agentHealth, o.caHealth, d.rest.Host, d.rest.Host)

	childEnv := append(os.Environ(), "SPIFFE_ENDPOINT_SOCKET="+endpoint)
	serverOut, err := os.Create(filepath.Join(d.work, "server.log"))
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo-k8s: %v\n", err)
		return 1
	}
	defer func() { _ = serverOut.Close() }()
	server, err := d.startWorkload(ctx, "server-1", "server", filepath.Join(o.bin, "demo-server"),
		[]string{"--listen", o.serverAddr, "--id", serverID, "--client-id", clientID}, childEnv, serverOut)
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo-k8s: demo server: %v\n", err)
		return 1
	}
	defer server.stop()
	say("demo-server pid %d is pod %s/server-1 (logs: %s)", server.cmd.Process.Pid, demoNamespace, serverOut.Name())
	if err := d.eventually(ctx, merge(dead, server.done), "the demo server on "+o.serverAddr, 60*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", o.serverAddr, time.Second)
		if err != nil {
			return false
		}
		_ = c.Close()
		return true
	}); err != nil {
		fmt.Fprintf(os.Stderr, "demo-k8s: %v\n", err)
		return 1
	}

	clientFile, err := os.Create(filepath.Join(d.work, "client.out"))
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo-k8s: %v\n", err)
		return 1
	}
	defer func() { _ = clientFile.Close() }()
	pr, pw := io.Pipe()
	summary := make(chan string, 1)
	go func() {
		var last string
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			line := sc.Text()
			fmt.Println(line)
			_, _ = fmt.Fprintln(clientFile, line)
			if strings.HasPrefix(line, "demo-client: ") {
				last = line
			}
		}
		summary <- last
	}()
	client, err := d.startWorkload(ctx, "client-1", "client", filepath.Join(o.bin, "demo-client"),
		[]string{"--server", o.serverAddr, "--id", clientID, "--server-id", serverID}, childEnv, pw)
	if err != nil {
		_ = pw.Close()
		fmt.Fprintf(os.Stderr, "demo-k8s: demo client: %v\n", err)
		return 1
	}
	defer client.stop()
	say("demo-client pid %d is pod %s/client-1", client.cmd.Process.Pid, demoNamespace)

	var timeout <-chan time.Time
	if o.duration > 0 {
		timeout = time.After(o.duration)
	}
	interrupted := false
	select {
	case <-timeout:
	case <-ctx.Done():
		interrupted = true
	case <-client.done:
		d.fail("demo-client", client.exitError())
	case <-server.done:
		d.fail("demo-server", server.exitError())
	case <-dead:
	}
	client.terminate(10 * time.Second)
	_ = pw.Close()
	last := <-summary
	fmt.Println()
	d.status("ca", filepath.Join(d.work, "ca", "status.sock"))
	fmt.Println()
	d.status("agent", filepath.Join(d.work, "agent", "status.sock"))
	fmt.Println()
	rotations := countLines(filepath.Join(d.work, "agent.log"), `"msg":"SVID rotated"`)
	say("%d SVID rotations seen by the agent", rotations)
	for _, f := range d.failed() {
		fmt.Fprintf(os.Stderr, "demo-k8s: %s\n", f)
	}
	total, failed, ok := parseSummary(last)
	switch {
	case !ok:
		fmt.Fprintln(os.Stderr, "demo-k8s: FAILED (the client printed no summary)")
		return 1
	case failed != 0 || total == 0 || len(d.failed()) > 0:
		fmt.Fprintf(os.Stderr, "demo-k8s: FAILED (%d handshakes, %d failed)\n", total, failed)
		return 1
	case interrupted:
		say("interrupted (%d handshakes, 0 failed)", total)
		return 130
	}
	say("OK (%d handshakes, 0 failed)", total)
	return 0
}

// objects creates the namespaces, the ServiceAccounts and the agent pod.
func (d *demo) objects(ctx context.Context) (*corev1.Pod, error) {
	core := d.kube.CoreV1()
	for _, ns := range []string{caNamespace, demoNamespace} {
		if _, err := core.Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			return nil, fmt.Errorf("namespace %s: %w", ns, err)
		}
	}
	for _, sa := range [][2]string{{caNamespace, "mayfly-agent"}, {demoNamespace, "server"}, {demoNamespace, "client"}} {
		if _, err := core.ServiceAccounts(sa[0]).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa[1]}}, metav1.CreateOptions{}); err != nil {
			return nil, fmt.Errorf("serviceaccount %s/%s: %w", sa[0], sa[1], err)
		}
	}
	pod, err := core.Pods(caNamespace).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "mayfly-agent-" + nodeName, Labels: map[string]string{"app.kubernetes.io/name": "mayfly-agent"}},
		Spec:       corev1.PodSpec{ServiceAccountName: "mayfly-agent", NodeName: nodeName, Containers: []corev1.Container{{Name: "agent", Image: "mayfly/agent"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("agent pod: %w", err)
	}
	return pod, nil
}

// workload is a child process playing a pod's container.
type workload struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when it exited; err is set then
	err  error
}

// startWorkload creates pod demo/<pod> with ServiceAccount sa on the demo
// node and starts bin as its container. The child starts as a shell that
// waits for a line on stdin: meanwhile its PID gets the pod's cgroup in the
// fake procfs and the pod status lists the container; then the shell execs
// bin under the same PID, which the agent attests as the pod.
func (d *demo) startWorkload(ctx context.Context, pod, sa, bin string, args, env []string, out io.Writer) (*workload, error) {
	pods := d.kube.CoreV1().Pods(demoNamespace)
	p, err := pods.Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: pod},
		Spec:       corev1.PodSpec{ServiceAccountName: sa, NodeName: nodeName, Containers: []corev1.Container{{Name: sa, Image: "mayfly/demo-" + sa}}},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("pod %s/%s: %w", demoNamespace, pod, err)
	}
	cmd := exec.Command("/bin/sh", append([]string{"-c", `read _ && exec "$0" "$@"`, bin}, args...)...) //nolint:gosec // our own binaries from bin/
	cmd.Env = env
	cmd.Stdout = out
	cmd.Stderr = out
	// Its own process group: a Ctrl-C reaches this process only, which
	// stops the children in order. If this process dies without cleaning
	// up, the child goes too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	w := &workload{cmd: cmd, done: make(chan struct{})}
	go func() {
		w.err = cmd.Wait()
		close(w.done)
	}()
	release := func() error {
		var id [32]byte
		if _, err := rand.Read(id[:]); err != nil {
			return err
		}
		containerID := hex.EncodeToString(id[:])
		pidDir := filepath.Join(d.procRoot, strconv.Itoa(cmd.Process.Pid))
		if err := os.MkdirAll(pidDir, 0o700); err != nil {
			return err
		}
		cgroup := fmt.Sprintf("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod%s.slice/cri-containerd-%s.scope\n",
			strings.ReplaceAll(string(p.UID), "-", "_"), containerID)
		if err := os.WriteFile(filepath.Join(pidDir, "cgroup"), []byte(cgroup), 0o600); err != nil {
			return err
		}
		now := metav1.Now()
		p.Status = corev1.PodStatus{Phase: corev1.PodRunning, StartTime: &now, ContainerStatuses: []corev1.ContainerStatus{{
			Name: sa, Image: p.Spec.Containers[0].Image, ContainerID: "containerd://" + containerID, Ready: true, Started: ptr.To(true),
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		}}}
		if _, err := pods.UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("pod %s/%s status: %w", demoNamespace, pod, err)
		}
		if _, err := io.WriteString(stdin, "\n"); err != nil {
			return err
		}
		return stdin.Close()
	}
	if err := release(); err != nil {
		w.stop()
		return nil, err
	}
	return w, nil
}

// exitError says why a workload that should still run is gone.
func (w *workload) exitError() error {
	if w.err == nil {
		return errors.New("exited by itself with status 0")
	}
	return fmt.Errorf("exited by itself: %w", w.err)
}

// terminate sends SIGTERM and waits up to grace, then kills.
func (w *workload) terminate(grace time.Duration) {
	select {
	case <-w.done:
		return
	default:
	}
	_ = w.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-w.done:
	case <-time.After(grace):
		_ = w.cmd.Process.Kill()
		<-w.done
	}
}

func (w *workload) stop() { w.terminate(5 * time.Second) }

// status prints `bin/<name> status --socket socket`.
func (d *demo) status(name, socket string) {
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(sctx, filepath.Join(d.opts.bin, name), "status", "--socket", socket) //nolint:gosec // our own binary from bin/
	cmd.Stdout = os.Stdout
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "demo-k8s: %s status: %v\n", name, err)
	}
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
			return fmt.Errorf("interrupted while waiting for %s", what)
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

func fileLogger(path string) (*slog.Logger, func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, nil, err
	}
	return slog.New(slog.NewJSONHandler(f, nil)), func() { _ = f.Close() }, nil
}

var summaryRE = regexp.MustCompile(`^demo-client: (\d+) handshakes, (\d+) failed$`)

func parseSummary(line string) (total, failed int, ok bool) {
	m := summaryRE.FindStringSubmatch(line)
	if m == nil {
		return 0, 0, false
	}
	total, _ = strconv.Atoi(m[1])
	failed, _ = strconv.Atoi(m[2])
	return total, failed, true
}

func countLines(path, substr string) int {
	raw, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	return strings.Count(string(raw), substr)
}

// printTails shows the end of every log, for a failed run.
func (d *demo) printTails() {
	for _, name := range []string{"ca.log", "agent.log", "server.log", "client.out"} {
		path := filepath.Join(d.work, name)
		raw, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(raw), "\n"), "\n")
		if len(lines) > 20 {
			lines = lines[len(lines)-20:]
		}
		fmt.Fprintf(os.Stderr, "\n==> %s (last %d lines) <==\n%s\n", path, len(lines), strings.Join(lines, "\n"))
	}
}
