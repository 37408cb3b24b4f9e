package e2enode

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// cluster is the running one-node cluster.
type cluster struct {
	dir   string // everything the cluster writes (but cgroups)
	bin   string // hack/setup-node.sh's directory of binaries
	pki   *clusterPKI
	admin string // admin kubeconfig
	procs []*process
}

func (c *cluster) path(p ...string) string { return filepath.Join(append([]string{c.dir}, p...)...) }

func (c *cluster) run(ctx context.Context, name string, args ...string) (*process, error) {
	p, err := start(ctx, c.dir, name, filepath.Join(c.bin, name), args...)
	if err != nil {
		return nil, err
	}
	c.procs = append(c.procs, p)
	return p, nil
}

// stop ends the components in reverse order of start.
func (c *cluster) stop() {
	for i := len(c.procs) - 1; i >= 0; i-- {
		c.procs[i].stop(10 * time.Second)
	}
}

// dead returns the components that exited, with their log tails.
func (c *cluster) dead() error {
	var msgs []string
	for _, p := range c.procs {
		if done, err := p.exited(); done {
			msgs = append(msgs, fmt.Sprintf("%s exited (%v); log tail:\n%s", p.name, err, tail(c.path("logs", p.name+".log"), 20)))
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	return fmt.Errorf("%s", strings.Join(msgs, "\n"))
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func writeFile(path, content string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(content), 0o600)
}

// up starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
// containerd (with the images imported), the kubelet, kube-proxy and CoreDNS.
func (c *cluster) up(ctx context.Context, imageTars []string) error {
	pk, err := newClusterPKI(c.path("pki"))
	if err != nil {
		return err
	}
	c.pki = pk
	apiIPs := []net.IP{net.ParseIP(nodeIP), net.ParseIP(apiServerIP), net.ParseIP("127.0.0.1")}
	certs := []struct {
		name, cn string
		orgs     []string
		dns      []string
		ips      []net.IP
	}{
		{"apiserver", "kube-apiserver", nil, []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost"}, apiIPs},
		{"admin", "e2e-admin", []string{"system:masters"}, nil, nil},
		{"apiserver-kubelet-client", "kube-apiserver-kubelet-client", []string{"system:masters"}, nil, nil},
		{"controller-manager", "system:kube-controller-manager", nil, nil, nil},
		{"scheduler", "system:kube-scheduler", nil, nil, nil},
		{"kubelet", "system:node:" + nodeName, []string{"system:nodes"}, []string{nodeName}, []net.IP{net.ParseIP(nodeIP)}},
		{"kube-proxy", "system:kube-proxy", nil, nil, nil},
		// CoreDNS reads Services, EndpointSlices, Namespaces and Pods: the
		// admin identity keeps the harness short (it is not under test).
		{"coredns", "e2e-coredns", []string{"system:masters"}, nil, nil},
	}
	for _, ct := range certs {
		if err := pk.issue(ct.name, ct.cn, ct.orgs, ct.dns, ct.ips); err != nil {
			return err
		}
	}
	if err := pk.serviceAccountKey(); err != nil {
		return err
	}
	server := "https://" + nodeIP + ":6443"
	kc := map[string]string{}
	for _, n := range []string{"admin", "controller-manager", "scheduler", "kubelet", "kube-proxy", "coredns"} {
		if kc[n], err = pk.kubeconfig(n, server); err != nil {
			return err
		}
	}
	c.admin = kc["admin"]

	if _, err := c.run(ctx, "etcd", "--data-dir", c.path("etcd"), "--listen-client-urls", "http://127.0.0.1:2379",
		"--advertise-client-urls", "http://127.0.0.1:2379", "--listen-peer-urls", "http://127.0.0.1:2380",
		"--unsafe-no-fsync", "--quota-backend-bytes", "2147483648"); err != nil {
		return err
	}
	if err := listening(ctx, "127.0.0.1:2379"); err != nil {
		return err
	}
	if _, err := c.run(ctx, "kube-apiserver",
		"--etcd-servers", "http://127.0.0.1:2379",
		"--bind-address", "0.0.0.0", "--secure-port", "6443", "--advertise-address", nodeIP,
		"--service-cluster-ip-range", serviceCIDR,
		"--client-ca-file", pk.path("ca.crt"),
		"--tls-cert-file", pk.path("apiserver.crt"), "--tls-private-key-file", pk.path("apiserver.key"),
		"--kubelet-client-certificate", pk.path("apiserver-kubelet-client.crt"), "--kubelet-client-key", pk.path("apiserver-kubelet-client.key"),
		"--kubelet-certificate-authority", pk.path("ca.crt"),
		// Logs and exec reach the kubelet at its IP: the node's name is in
		// no DNS the apiserver asks.
		"--kubelet-preferred-address-types", "InternalIP",
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file", pk.path("sa.pub"), "--service-account-signing-key-file", pk.path("sa.key"),
		"--authorization-mode", "Node,RBAC", "--enable-admission-plugins", "NodeRestriction",
		"--allow-privileged", "--cert-dir", c.path("apiserver-certs"), "-v", "1"); err != nil {
		return err
	}
	if err := listening(ctx, nodeIP+":6443"); err != nil {
		return err
	}
	// The controllers read RBAC-protected objects at start: wait until the
	// API server bootstrapped its roles (readyz).
	rc, err := clientcmd.BuildConfigFromFlags("", c.admin)
	if err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	if err := waitFor(ctx, "kube-apiserver /readyz", func() bool {
		_, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err == nil
	}); err != nil {
		return err
	}
	if _, err := c.run(ctx, "kube-controller-manager", "--kubeconfig", kc["controller-manager"],
		"--authentication-kubeconfig", kc["controller-manager"], "--authorization-kubeconfig", kc["controller-manager"],
		"--service-account-private-key-file", pk.path("sa.key"), "--root-ca-file", pk.path("ca.crt"),
		"--use-service-account-credentials", "--leader-elect=false", "--bind-address", "127.0.0.1",
		"--controllers", "*,-nodeipam"); err != nil {
		return err
	}
	if _, err := c.run(ctx, "kube-scheduler", "--kubeconfig", kc["scheduler"],
		"--authentication-kubeconfig", kc["scheduler"], "--authorization-kubeconfig", kc["scheduler"],
		"--leader-elect=false", "--bind-address", "127.0.0.1"); err != nil {
		return err
	}

	// containerd with runc and the CNI plugins from Debian, cgroupfs, and
	// the pause image we built as the sandbox image.
	cniConf := c.path("cni", "net.d")
	containerdConf := fmt.Sprintf(`version = 3
root = %q
state = "/run/containerd"
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins.'io.containerd.cri.v1.runtime']
  enable_selinux = false
  # This machine drops CAP_SYS_RESOURCE: no process may lower its
  # oom_score_adj, and runc failed on the sandboxes' -998. Clamp it to
  # containerd's own instead.
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = %q
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = %q
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = %q
`, c.path("containerd"), runcPath(), cniConf, pauseImage)
	if err := writeFile(c.path("containerd.toml"), containerdConf); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(cniConf, "10-mayfly-e2e.conflist"), fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "mayfly-e2e",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": %q}]], "routes": [{"dst": "0.0.0.0/0"}], "dataDir": %q}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`, podCIDR, c.path("cni", "ipam"))); err != nil {
		return err
	}
	if _, err := c.run(ctx, "containerd", "--config", c.path("containerd.toml")); err != nil {
		return err
	}
	if err := waitFor(ctx, "containerd's socket", func() bool {
		_, err := os.Stat("/run/containerd/containerd.sock")
		return err == nil
	}); err != nil {
		return err
	}
	for _, tar := range imageTars {
		out, err := exec.CommandContext(ctx, filepath.Join(c.bin, "ctr"), //nolint:gosec // ctr from hack/setup-node.sh "--address", "/run/containerd/containerd.sock",
			"-n", "k8s.io", "images", "import", tar).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ctr images import %s: %w: %s", tar, err, out)
		}
	}

	if err := writeFile(c.path("resolv.conf"), "nameserver "+nodeIP+"\n"); err != nil {
		return err
	}
	kubeletConf := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: %q}
authorization: {mode: Webhook}
tlsCertFile: %q
tlsPrivateKeyFile: %q
cgroupDriver: cgroupfs
cgroupRoot: /%s
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
clusterDNS: [%q]
clusterDomain: cluster.local
resolvConf: %q
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "1Mi", nodefs.available: "1%%", imagefs.available: "1%%", nodefs.inodesFree: "1%%"}
serializeImagePulls: false
syncFrequency: 10s
fileCheckFrequency: 10s
`, pk.path("ca.crt"), pk.path("kubelet.crt"), pk.path("kubelet.key"), kubeletCgroupRoot, nodeIP, c.path("resolv.conf"))
	if err := writeFile(c.path("kubelet.yaml"), kubeletConf); err != nil {
		return err
	}
	if _, err := c.run(ctx, "kubelet", "--config", c.path("kubelet.yaml"), "--kubeconfig", kc["kubelet"],
		"--hostname-override", nodeName, "--node-ip", nodeIP, "--root-dir", "/var/lib/kubelet", "-v", "2"); err != nil {
		return err
	}

	proxyConf := fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: %q}
mode: iptables
clusterCIDR: %q
hostnameOverride: %s
bindAddress: %s
# Pods reach Services on the same bridge: masquerade so that replies come
# back through the node (no br_netfilter in this network namespace).
iptables: {masqueradeAll: true}
# conntrack limits are host-wide: leave them alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
`, kc["kube-proxy"], podCIDR, nodeName, nodeIP)
	if err := writeFile(c.path("kube-proxy.yaml"), proxyConf); err != nil {
		return err
	}
	if _, err := c.run(ctx, "kube-proxy", "--config", c.path("kube-proxy.yaml")); err != nil {
		return err
	}

	corefile := fmt.Sprintf(`.:53 {
    bind %s
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig %s e2e
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 5
}
`, nodeIP, kc["coredns"])
	if err := writeFile(c.path("Corefile"), corefile); err != nil {
		return err
	}
	_, err = c.run(ctx, "coredns", "-conf", c.path("Corefile"))
	return err
}

// pauseImage is the sandbox image `make images` builds (no registry here).
const pauseImage = "ghcr.io/mayfly-pki/pause:e2e-node"

func runcPath() string {
	if p := os.Getenv("MAYFLY_E2E_RUNC"); p != "" {
		return p // e.g. a wrapper adding --debug --log
	}
	for _, p := range []string{"/usr/sbin/runc", "/usr/bin/runc"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return "runc"
}

// waitFor polls cond until it holds or ctx ends.
func waitFor(ctx context.Context, what string, cond func() bool) error {
	for !cond() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
	return nil
}
