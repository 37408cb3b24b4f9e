package e2enode

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The node's addresses, inside its own network namespace: nothing here is
// visible from the host's network.
const (
	nodeName    = "node-0"
	nodeIP      = "10.199.0.2"
	nodeCIDR    = "10.199.0.2/24"
	nodeGateway = "10.199.0.1" // a route target only, nothing answers
	podCIDR     = "10.244.0.0/24"
	serviceCIDR = "10.96.0.0/16"
	apiServerIP = "10.96.0.1"
	// cgroupRoot is the node's cgroup (namespace root) under each
	// controller of the host's cgroup v1 hierarchy; removed at the end.
	cgroupRoot = "mayfly-e2enode"
	// kubeletCgroupRoot is the kubelet's --cgroup-root inside the node's
	// cgroup namespace: not "/", so that pods' cgroups are
	// /mayfly-kubelet/kubepods/..., as on nodes that nest the kubelet's
	// hierarchy (the agent derives the root from its own cgroup).
	kubeletCgroupRoot = "mayfly-kubelet"
)

// cgroupControllers are the v1 hierarchies the kubelet and runc use.
var cgroupControllers = []string{"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "systemd"}

// enterNamespaces re-executes the test binary inside new network, mount,
// PID and cgroup namespaces (unshare): every process the node starts is in
// the PID namespace and dies with it, every mount stays in the private mount
// namespace, every address and iptables rule in the network namespace, and
// every cgroup under /sys/fs/cgroup/<controller>/mayfly-e2enode, which the
// node sees as its root (so the kubelet's /kubepods paths are the usual
// ones). It returns the child's exit code and removes those cgroups.
func enterNamespaces() int {
	if err := joinCgroups(); err != nil {
		fmt.Fprintln(os.Stderr, "e2enode:", err)
		leaveCgroups()
		return 1
	}
	args := append([]string{"--net", "--mount", "--pid", "--cgroup", "--fork", "--mount-proc", "--propagation", "private", "--", os.Args[0]}, os.Args[1:]...)
	cmd := exec.Command("unshare", args...) //nolint:gosec // re-executes this test binary
	cmd.Env = append(os.Environ(), "MAYFLY_E2E_NODE_INSIDE=1")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	err := cmd.Run()
	leaveCgroups()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exit):
		return max(exit.ExitCode(), 1)
	default:
		fmt.Fprintln(os.Stderr, "e2enode: unshare:", err)
		return 1
	}
}

// joinCgroups creates /sys/fs/cgroup/<controller>/mayfly-e2enode and moves
// this process into it, so that the unshared child's cgroup namespace is
// rooted there.
func joinCgroups() error {
	for _, c := range cgroupControllers {
		dir := filepath.Join("/sys/fs/cgroup", c, ownCgroup(c), cgroupRoot)
		if err := os.MkdirAll(dir, 0o755); err != nil { //nolint:gosec // cgroupfs directories
			return fmt.Errorf("cgroup %s: %w", c, err)
		}
		if c == "cpuset" { // a cpuset child needs cpus and mems before any task
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				b, err := os.ReadFile(filepath.Join(filepath.Dir(dir), f))
				if err != nil {
					return err
				}
				if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil { //nolint:gosec // dir is this test's own cgroup under /sys/fs/cgroup
					return fmt.Errorf("cgroup cpuset %s: %w", f, err)
				}
			}
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
			return fmt.Errorf("join cgroup %s: %w", dir, err)
		}
	}
	return nil
}

// startCgroups are the cgroups the test started in, by controller: the
// node's cgroups nest under them (a memory limit on the test holds for the
// node too).
var startCgroups = map[string]string{}

// ownCgroup returns (and remembers) this process's cgroup path in the v1
// hierarchy of controller c.
func ownCgroup(c string) string {
	if p, ok := startCgroups[c]; ok {
		return p
	}
	b, _ := os.ReadFile("/proc/self/cgroup")
	want := c
	if c == "systemd" {
		want = "name=systemd"
	}
	p := "/"
	for line := range strings.SplitSeq(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) == 3 && slices.Contains(strings.Split(parts[1], ","), want) {
			p = parts[2]
		}
	}
	startCgroups[c] = p
	return p
}

// leaveCgroups moves this process back to the root cgroups and removes
// mayfly-e2enode, deepest first; every process in it died with the PID
// namespace.
func leaveCgroups() {
	for _, c := range cgroupControllers {
		parent := filepath.Join("/sys/fs/cgroup", c, startCgroups[c])
		_ = os.WriteFile(filepath.Join(parent, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0o600)
		root := filepath.Join(parent, cgroupRoot)
		var dirs []string
		_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			for try := 0; try < 100; try++ {
				if err := syscall.Rmdir(dirs[i]); err == nil || errors.Is(err, fs.ErrNotExist) {
					break
				}
				time.Sleep(100 * time.Millisecond) // a killed task leaves its cgroup asynchronously
			}
		}
		if _, err := os.Stat(root); err == nil {
			fmt.Fprintf(os.Stderr, "e2enode: could not remove %s\n", root)
		}
	}
}

// prepareHost sets up the namespaces the test runs in: the mounts the node's
// components expect at fixed paths (on tmpfs, private to this mount
// namespace), the kernel tunables the kubelet checks, and the node's network.
func prepareHost(dir string) error {
	// Private tmpfs over the directories with fixed paths the kubelet,
	// containerd, CNI and the DaemonSet's hostPaths use.
	for _, m := range []string{"/run", "/var/lib", "/var/log"} {
		if err := syscall.Mount("tmpfs", m, "tmpfs", 0, "mode=0755"); err != nil {
			return fmt.Errorf("mount tmpfs on %s: %w", m, err)
		}
	}
	for _, d := range []string{"/var/lib/kubelet", "/var/lib/kubelet/plugins_registry", "/var/lib/kubelet/pods"} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return err
		}
	}
	// The Workload API socket directory as the DaemonSet's hostPath
	// (DirectoryOrCreate) makes it: pods' users pass through it.
	if err := os.Mkdir("/run/mayfly", 0o755); err != nil { //nolint:gosec // a socket directory every pod user must traverse
		return err
	}
	// The kubelet sets vm.overcommit_memory, kernel.panic and
	// kernel.panic_on_oops (host-wide, not namespaced) unless they already
	// hold its values: it reads them here, in this mount namespace, from
	// files that say so, and the host keeps its own.
	for path, v := range map[string]string{
		"/proc/sys/vm/overcommit_memory": "1",
		"/proc/sys/kernel/panic":         "10",
		"/proc/sys/kernel/panic_on_oops": "1",
	} {
		f := filepath.Join(dir, "sysctl-"+filepath.Base(path))
		if err := os.WriteFile(f, []byte(v+"\n"), 0o400); err != nil {
			return err
		}
		if err := syscall.Mount(f, path, "", syscall.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s over %s: %w", f, path, err)
		}
		if err := syscall.Mount("", path, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("read-only %s: %w", path, err)
		}
	}
	// The cgroup hierarchies again, mounted in this cgroup namespace: the
	// kubelet and runc see mayfly-e2enode as the root.
	if err := syscall.Mount("tmpfs", "/sys/fs/cgroup", "tmpfs", 0, "mode=0755"); err != nil {
		return fmt.Errorf("mount tmpfs on /sys/fs/cgroup: %w", err)
	}
	for _, c := range cgroupControllers {
		dst := filepath.Join("/sys/fs/cgroup", c)
		if err := os.MkdirAll(dst, 0o750); err != nil {
			return err
		}
		opts := c
		if c == "systemd" {
			opts = "none,name=systemd"
		}
		if err := syscall.Mount("cgroup", dst, "cgroup", 0, opts); err != nil {
			return fmt.Errorf("mount cgroup %s: %w", c, err)
		}
	}
	// The kubelet's --cgroup-root (kubeletCgroupRoot) must exist in every
	// hierarchy; a cpuset child needs cpus and mems first.
	for _, c := range cgroupControllers {
		d := filepath.Join("/sys/fs/cgroup", c, kubeletCgroupRoot)
		if err := os.Mkdir(d, 0o755); err != nil { //nolint:gosec // cgroupfs directories
			return fmt.Errorf("cgroup %s: %w", d, err)
		}
		if c == "cpuset" {
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				b, err := os.ReadFile(filepath.Join("/sys/fs/cgroup", c, f))
				if err != nil {
					return err
				}
				if err := os.WriteFile(filepath.Join(d, f), b, 0o600); err != nil { //nolint:gosec // the node's own cgroup
					return fmt.Errorf("cgroup %s %s: %w", d, f, err)
				}
			}
		}
	}
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		// The node's interface: a veth pair whose both ends stay in this
		// namespace (this kernel has no dummy driver). The default route
		// only gives the kubelet and kube-proxy a node address; nothing
		// leaves the namespace.
		{"link", "add", "mfly0", "type", "veth", "peer", "name", "mfly1"},
		{"addr", "add", nodeCIDR, "dev", "mfly0"},
		{"link", "set", "mfly1", "up"},
		{"link", "set", "mfly0", "up"},
		{"route", "add", "default", "via", nodeGateway, "dev", "mfly0", "onlink"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil { //nolint:gosec // fixed arguments above
			return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, out)
		}
	}
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o600); err != nil {
		return fmt.Errorf("ip_forward in the node's network namespace: %w", err)
	}
	return nil
}

// process is one component of the node, logging to <dir>/logs/<name>.log.
type process struct {
	name string
	cmd  *exec.Cmd
	done chan error
}

func start(ctx context.Context, dir, name, bin string, args ...string) (*process, error) {
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o750); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(filepath.Join(dir, "logs", name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...) //nolint:gosec // the node's components from hack/setup-node.sh
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(bin)+":"+os.Getenv("PATH"))
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, done: make(chan error, 1)}
	go func() {
		p.done <- cmd.Wait()
		_ = logf.Close()
	}()
	return p, nil
}

// stop sends SIGTERM to the process group, then SIGKILL after grace.
func (p *process) stop(grace time.Duration) {
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	var err error
	select {
	case err = <-p.done:
	case <-time.After(grace):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		err = <-p.done
	}
	p.done <- err // exited still reports how it ended
}

// exited reports whether the process ended (and how).
func (p *process) exited() (bool, error) {
	select {
	case err := <-p.done:
		p.done <- err
		return true, err
	default:
		return false, nil
	}
}

// killEverything kills every process of the PID namespace but this one
// (containerd shims and containers included) and reaps them.
func killEverything() {
	_ = syscall.Kill(-1, syscall.SIGKILL)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		var ws syscall.WaitStatus
		if _, err := syscall.Wait4(-1, &ws, 0, nil); errors.Is(err, syscall.ECHILD) {
			return
		}
	}
}

// listening waits until addr accepts TCP connections.
func listening(ctx context.Context, addr string) error {
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			return c.Close()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s never listened: %w", addr, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
