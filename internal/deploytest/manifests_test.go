package deploytest

import (
	"net"
	"path"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/mayfly-pki/mayfly/internal/app/agentapp"
	"github.com/mayfly-pki/mayfly/internal/app/caapp"
)

const (
	namespace     = "mayfly-system"
	caSA          = "mayfly-ca"
	agentSA       = "mayfly-agent"
	csiDriverName = "csi.mayfly.dev"
)

// TestInstallTree checks the rendered deploy/k8s (base, ca, agent) against
// what the binaries expect: the configs parse with the binaries' own
// parsers, ports, paths and names agree across objects, and the security
// settings the design asks for are in place.
func TestInstallTree(t *testing.T) {
	objs := render(t, ".")

	for _, o := range objs {
		switch o.GetKind() {
		case "Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "CSIDriver":
		default:
			if o.GetNamespace() != namespace {
				t.Errorf("%s %s is in namespace %q, want %s", o.GetKind(), o.GetName(), o.GetNamespace(), namespace)
			}
		}
	}
	if find(t, objs, "CustomResourceDefinition", "workloadcertificates.mayfly.dev") == nil {
		t.Fatal("the WorkloadCertificate CRD is not part of the install")
	}

	var caDeploy appsv1.Deployment
	convert(t, find(t, objs, "Deployment", "mayfly-ca"), &caDeploy)
	var ds appsv1.DaemonSet
	convert(t, find(t, objs, "DaemonSet", "mayfly-agent"), &ds)

	// The configurations parse with the binaries' own strict parsers.
	var caCM, agentCM corev1.ConfigMap
	convert(t, find(t, objs, "ConfigMap", "mayfly-ca-config"), &caCM)
	convert(t, find(t, objs, "ConfigMap", "mayfly-agent-config"), &agentCM)
	caCfg, err := caapp.Parse([]byte(caCM.Data["ca.yaml"]))
	if err != nil {
		t.Fatalf("ca.yaml in ConfigMap %s: %v", caCM.Name, err)
	}
	t.Setenv("NODE_NAME", "node-a")
	agentCfg, err := agentapp.Parse([]byte(agentCM.Data["agent.yaml"]))
	if err != nil {
		t.Fatalf("agent.yaml in ConfigMap %s: %v", agentCM.Name, err)
	}
	if caCfg.Kubernetes == nil || agentCfg.Kubernetes == nil {
		t.Fatal("the CA and agent configs must both be in Kubernetes mode")
	}
	if caCfg.TrustDomain != agentCfg.TrustDomain {
		t.Errorf("trust domain: CA %q, agent %q", caCfg.TrustDomain, agentCfg.TrustDomain)
	}
	if got := caCfg.Kubernetes.Namespace; got != namespace {
		t.Errorf("CA kubernetes.namespace = %q, want %s", got, namespace)
	}
	if got := caCfg.Kubernetes.AgentServiceAccount; got != agentSA {
		t.Errorf("CA kubernetes.agentServiceAccount = %q, want %s", got, agentSA)
	}

	t.Run("ca", func(t *testing.T) {
		checkCA(t, objs, &caDeploy, &caCM, caCfg)
	})
	t.Run("agent", func(t *testing.T) {
		checkAgent(t, objs, &ds, &agentCM, agentCfg, caCfg)
	})
	t.Run("images", func(t *testing.T) {
		for _, spec := range []corev1.PodSpec{caDeploy.Spec.Template.Spec, ds.Spec.Template.Spec} {
			for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
				if msg := imageProblem(c.Image); msg != "" {
					t.Errorf("container %s: %s", c.Name, msg)
				}
			}
		}
	})
}

func checkCA(t *testing.T, objs []*unstructured.Unstructured, d *appsv1.Deployment, cm *corev1.ConfigMap, cfg *caapp.Config) {
	t.Helper()
	spec := d.Spec.Template.Spec
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
		t.Errorf("replicas = %v, want 2", d.Spec.Replicas)
	}
	if lf := cfg.Kubernetes.LeaderElection; lf != nil && !*lf {
		t.Error("leader election is off with 2 replicas")
	}
	if spec.ServiceAccountName != caSA {
		t.Errorf("serviceAccountName = %q, want %s", spec.ServiceAccountName, caSA)
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("want one container, got %d", len(spec.Containers))
	}
	c := spec.Containers[0]
	if want := []string{"run", "--config", "/etc/mayfly/ca.yaml"}; !slices.Equal(c.Args, want) {
		t.Errorf("args = %q, want %q", c.Args, want)
	}
	checkConfigMount(t, spec, c, cm.Name, "/etc/mayfly", "ca.yaml")
	if !hasFieldEnv(c, "POD_NAMESPACE", "metadata.namespace") {
		t.Error("env POD_NAMESPACE from metadata.namespace is missing")
	}

	grpc, health := port(t, cfg.ListenAddress), port(t, cfg.HealthAddress)
	if host, _, _ := net.SplitHostPort(cfg.ListenAddress); host != "0.0.0.0" {
		t.Errorf("listenAddress %s is not reachable from other pods", cfg.ListenAddress)
	}
	if got := containerPort(c, "grpc"); got != grpc {
		t.Errorf("container port grpc = %d, config listens on %d", got, grpc)
	}
	if got := containerPort(c, "health"); got != health {
		t.Errorf("container port health = %d, config serves health on %d", got, health)
	}
	checkProbe(t, "readiness", c.ReadinessProbe, "/readyz", c, health)
	checkProbe(t, "liveness", c.LivenessProbe, "/healthz", c, health)

	psc, sc := spec.SecurityContext, c.SecurityContext
	switch {
	case psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot:
		t.Error("pod securityContext.runAsNonRoot is not true")
	case psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault:
		t.Error("pod seccompProfile is not RuntimeDefault")
	case sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
		t.Error("container readOnlyRootFilesystem is not true")
	case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
		t.Error("container allowPrivilegeEscalation is not false")
	case sc.Privileged != nil && *sc.Privileged:
		t.Error("the CA container is privileged")
	case sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0:
		t.Errorf("capabilities = %+v, want drop [ALL] and nothing added", sc.Capabilities)
	}

	var svc corev1.Service
	convert(t, find(t, objs, "Service", "mayfly-ca"), &svc)
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != grpc || svc.Spec.Ports[0].TargetPort.String() != "grpc" {
		t.Errorf("Service ports = %+v, want %d -> grpc", svc.Spec.Ports, grpc)
	}
	if !selects(svc.Spec.Selector, d.Spec.Template.Labels) {
		t.Errorf("Service selector %v does not select the CA pods %v", svc.Spec.Selector, d.Spec.Template.Labels)
	}
	var pdb policyv1.PodDisruptionBudget
	convert(t, find(t, objs, "PodDisruptionBudget", "mayfly-ca"), &pdb)
	if pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntValue() != 1 || !selects(pdb.Spec.Selector.MatchLabels, d.Spec.Template.Labels) {
		t.Errorf("PDB = %+v, want minAvailable 1 over the CA pods", pdb.Spec)
	}

	var np networkingv1.NetworkPolicy
	convert(t, find(t, objs, "NetworkPolicy", "mayfly-ca"), &np)
	if !selects(np.Spec.PodSelector.MatchLabels, d.Spec.Template.Labels) {
		t.Error("the CA NetworkPolicy does not select the CA pods")
	}
	allowed := map[int32]string{}
	for _, rule := range np.Spec.Ingress {
		for _, p := range rule.Ports {
			for _, from := range rule.From {
				switch {
				case from.PodSelector != nil && from.PodSelector.MatchLabels["app.kubernetes.io/name"] == agentSA:
					allowed[p.Port.IntVal] += "agents "
				case from.NamespaceSelector != nil:
					allowed[p.Port.IntVal] += "monitoring "
				default:
					allowed[p.Port.IntVal] += "other "
				}
			}
		}
	}
	if allowed[grpc] != "agents " || allowed[health] != "monitoring " || len(allowed) != 2 {
		t.Errorf("CA ingress = %v, want %d from agents only and %d from monitoring only", allowed, grpc, health)
	}
}

func checkAgent(t *testing.T, objs []*unstructured.Unstructured, ds *appsv1.DaemonSet, cm *corev1.ConfigMap, cfg *agentapp.Config, caCfg *caapp.Config) {
	t.Helper()
	spec := ds.Spec.Template.Spec
	if !spec.HostPID {
		t.Error("hostPID is off: the agent cannot see the peer PIDs of other pods")
	}
	if spec.HostNetwork || spec.HostIPC {
		t.Error("the agent needs hostPID only, not hostNetwork or hostIPC")
	}
	if spec.ServiceAccountName != agentSA {
		t.Errorf("serviceAccountName = %q, want %s", spec.ServiceAccountName, agentSA)
	}
	// The agent registers its CSI driver with the kubelet itself: no
	// node-driver-registrar sidecar.
	var agentC, mounter *corev1.Container
	for i := range spec.Containers {
		switch spec.Containers[i].Name {
		case "agent":
			agentC = &spec.Containers[i]
		case "mounter":
			mounter = &spec.Containers[i]
		default:
			t.Errorf("unexpected container %s", spec.Containers[i].Name)
		}
	}
	if agentC == nil || mounter == nil {
		t.Fatal("want containers agent and mounter")
	}
	if want := []string{"run", "--config", "/etc/mayfly/config/agent.yaml"}; !slices.Equal(agentC.Args, want) {
		t.Errorf("agent args = %q, want %q", agentC.Args, want)
	}
	checkConfigMount(t, spec, *agentC, cm.Name, "/etc/mayfly/config", "agent.yaml")
	if !hasFieldEnv(*agentC, "NODE_NAME", "spec.nodeName") {
		t.Error("env NODE_NAME from spec.nodeName is missing")
	}

	// The agent reaches the CA Service and trusts the CA's bundle ConfigMap.
	host, p, err := net.SplitHostPort(cfg.ServerAddress)
	if err != nil {
		t.Fatal(err)
	}
	if want := "mayfly-ca." + namespace + ".svc"; host != want {
		t.Errorf("server.address host = %s, want %s", host, want)
	}
	if p != strconv.Itoa(int(port(t, caCfg.ListenAddress))) {
		t.Errorf("server.address port %s, the CA listens on %s", p, caCfg.ListenAddress)
	}
	vol := volumeAt(t, spec, *agentC, cfg.TrustBundleFile)
	if vol.ConfigMap == nil || vol.ConfigMap.Name != "mayfly-trust-bundle" {
		t.Errorf("server.trustBundleFile %s is not from the mayfly-trust-bundle ConfigMap: %+v", cfg.TrustBundleFile, vol.VolumeSource)
	}
	// The bootstrap token: projected, audience = the CA's, bounded life.
	vol = volumeAt(t, spec, *agentC, cfg.Kubernetes.TokenFile)
	tokenOK := false
	if vol.Projected != nil {
		for _, s := range vol.Projected.Sources {
			if sat := s.ServiceAccountToken; sat != nil && sat.Audience == caCfg.Kubernetes.Audience &&
				sat.ExpirationSeconds != nil && *sat.ExpirationSeconds == 3600 && strings.HasSuffix(cfg.Kubernetes.TokenFile, "/"+sat.Path) {
				tokenOK = true
			}
		}
	}
	if !tokenOK {
		t.Errorf("kubernetes.tokenFile %s is not a projected token with audience %s and expirationSeconds 3600: %+v", cfg.Kubernetes.TokenFile, caCfg.Kubernetes.Audience, vol.VolumeSource)
	}
	vol = volumeAt(t, spec, *agentC, cfg.SocketPath)
	if vol.HostPath == nil || vol.HostPath.Path != "/run/mayfly" || vol.HostPath.Type == nil || *vol.HostPath.Type != corev1.HostPathDirectoryOrCreate {
		t.Errorf("socketPath %s is not on the hostPath /run/mayfly (DirectoryOrCreate): %+v", cfg.SocketPath, vol.VolumeSource)
	}
	if cfg.Kubernetes.ProcRoot != "/proc" {
		t.Errorf("kubernetes.procRoot = %s, want /proc (hostPID)", cfg.Kubernetes.ProcRoot)
	}
	hp := port(t, cfg.HealthAddress)
	if got := containerPort(*agentC, "health"); got != hp {
		t.Errorf("agent container port health = %d, config serves on %d", got, hp)
	}
	checkProbe(t, "readiness", agentC.ReadinessProbe, "/readyz", *agentC, hp)
	checkProbe(t, "liveness", agentC.LivenessProbe, "/healthz", *agentC, hp)

	// CSI: the plugin dir and the kubelet's plugins_registry (where the
	// agent registers the driver) are the host's. The agent, which holds
	// the keys, makes no mount: it is not privileged and asks the mounter
	// container (privileged, pods dir Bidirectional, no keys) through the
	// socket they share.
	plugin := "/var/lib/kubelet/plugins/" + csiDriverName
	if v := volumeAt(t, spec, *agentC, plugin+"/csi.sock"); v.HostPath == nil || v.HostPath.Path != plugin {
		t.Errorf("%s is not the host's plugin directory: %+v", plugin, v.VolumeSource)
	}
	for _, m := range agentC.VolumeMounts {
		if m.MountPropagation != nil && *m.MountPropagation == corev1.MountPropagationBidirectional {
			t.Errorf("the agent container mounts %s with Bidirectional propagation: only the mounter may", m.MountPath)
		}
	}
	if sc := agentC.SecurityContext; sc == nil || (sc.Privileged != nil && *sc.Privileged) ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("the agent container (keys, Workload API) must not be privileged nor escalate privileges")
	}
	bidi := false
	for _, m := range mounter.VolumeMounts {
		switch {
		case m.MountPropagation != nil && *m.MountPropagation == corev1.MountPropagationBidirectional:
			if m.MountPath != "/var/lib/kubelet/pods" {
				t.Errorf("Bidirectional propagation on %s: only the kubelet pods dir needs it", m.MountPath)
			}
			bidi = true
		case m.Name == "ca-token" || m.Name == "data" || m.Name == "config":
			t.Errorf("the mounter mounts %s: it must hold no credential or key", m.Name)
		}
	}
	if !bidi {
		t.Error("the mounter does not mount /var/lib/kubelet/pods with Bidirectional propagation")
	}
	if mounter.SecurityContext == nil || mounter.SecurityContext.Privileged == nil || !*mounter.SecurityContext.Privileged {
		t.Error("the mounter container must be privileged for Bidirectional mount propagation")
	}
	csiCfg := cfg.Kubernetes.CSI
	if csiCfg == nil || csiCfg.MounterSocket == "" {
		t.Fatal("the agent's kubernetes.csi.mounterSocket is not set: it would mount itself")
	}
	wantArgs := []string{"mounter", "--socket=" + csiCfg.MounterSocket, "--source=" + path.Dir(cfg.SocketPath), "--kubelet-dir=" + csiCfg.KubeletDir}
	if !slices.Equal(mounter.Args, wantArgs) {
		t.Errorf("mounter args = %q, want %q", mounter.Args, wantArgs)
	}
	if a, m := volumeAt(t, spec, *agentC, csiCfg.MounterSocket), volumeAt(t, spec, *mounter, csiCfg.MounterSocket); a.Name != m.Name || a.EmptyDir == nil {
		t.Errorf("the mounter socket %s is not in one emptyDir of both containers: agent %s, mounter %s", csiCfg.MounterSocket, a.Name, m.Name)
	}
	if v := volumeAt(t, spec, *mounter, cfg.SocketPath); v.Name != volumeAt(t, spec, *agentC, cfg.SocketPath).Name {
		t.Errorf("the mounter does not see the agent's socket directory at %s", path.Dir(cfg.SocketPath))
	}
	if v := volumeAt(t, spec, *agentC, "/var/lib/kubelet/plugins_registry/"+csiDriverName+"-reg.sock"); v.HostPath == nil || v.HostPath.Path != "/var/lib/kubelet/plugins_registry" {
		t.Errorf("the kubelet's plugins_registry is not mounted from the host: %+v", v.VolumeSource)
	}

	var drv storagev1.CSIDriver
	convert(t, find(t, objs, "CSIDriver", csiDriverName), &drv)
	s := drv.Spec
	switch {
	case s.AttachRequired == nil || *s.AttachRequired:
		t.Error("CSIDriver attachRequired is not false")
	case s.PodInfoOnMount == nil || !*s.PodInfoOnMount:
		t.Error("CSIDriver podInfoOnMount is not true")
	case !slices.Equal(s.VolumeLifecycleModes, []storagev1.VolumeLifecycleMode{storagev1.VolumeLifecycleEphemeral}):
		t.Errorf("CSIDriver volumeLifecycleModes = %v, want [Ephemeral]", s.VolumeLifecycleModes)
	case len(s.TokenRequests) != 1 || s.TokenRequests[0].Audience != caCfg.Kubernetes.Audience:
		t.Errorf("CSIDriver tokenRequests = %+v, want one with audience %s", s.TokenRequests, caCfg.Kubernetes.Audience)
	case s.RequiresRepublish == nil || !*s.RequiresRepublish:
		t.Error("CSIDriver requiresRepublish is not true")
	}

	// The agent's RBAC: read pods, nothing else (the SAR test proves the
	// effect; this pins the objects).
	for _, o := range objs {
		if o.GetKind() != "ClusterRoleBinding" && o.GetKind() != "RoleBinding" {
			continue
		}
		var b rbacv1.ClusterRoleBinding
		convert(t, o, &b)
		for _, sub := range b.Subjects {
			if sub.Kind == "ServiceAccount" && sub.Name == agentSA && b.RoleRef.Name != "mayfly-agent" {
				t.Errorf("%s %s binds %s to the agent", o.GetKind(), o.GetName(), b.RoleRef.Name)
			}
		}
	}
	var cr rbacv1.ClusterRole
	convert(t, find(t, objs, "ClusterRole", "mayfly-agent"), &cr)
	want := []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}}}
	if len(cr.Rules) != 1 || !slices.Equal(cr.Rules[0].APIGroups, want[0].APIGroups) || !slices.Equal(cr.Rules[0].Resources, want[0].Resources) ||
		!slices.Equal(cr.Rules[0].Verbs, want[0].Verbs) || len(cr.Rules[0].ResourceNames) > 0 {
		t.Errorf("ClusterRole mayfly-agent rules = %+v, want %+v", cr.Rules, want)
	}
}

// checkConfigMount checks that file is in the ConfigMap cmName mounted at dir.
func checkConfigMount(t *testing.T, spec corev1.PodSpec, c corev1.Container, cmName, dir, file string) {
	t.Helper()
	v := volumeAt(t, spec, c, dir+"/"+file)
	if v.ConfigMap == nil || v.ConfigMap.Name != cmName {
		t.Errorf("%s/%s is not from ConfigMap %s: %+v", dir, file, cmName, v.VolumeSource)
	}
}

// volumeAt returns the volume that holds path in container c.
func volumeAt(t *testing.T, spec corev1.PodSpec, c corev1.Container, path string) corev1.Volume {
	t.Helper()
	best := ""
	var name string
	for _, m := range c.VolumeMounts {
		if (path == m.MountPath || strings.HasPrefix(path, strings.TrimSuffix(m.MountPath, "/")+"/")) && len(m.MountPath) > len(best) {
			best, name = m.MountPath, m.Name
		}
	}
	for _, v := range spec.Volumes {
		if name != "" && v.Name == name {
			return v
		}
	}
	t.Errorf("no volume of container %s holds %s", c.Name, path)
	return corev1.Volume{}
}

func hasFieldEnv(c corev1.Container, name, fieldPath string) bool {
	for _, e := range c.Env {
		if e.Name == name && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == fieldPath {
			return true
		}
	}
	return false
}

func containerPort(c corev1.Container, name string) int32 {
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort
		}
	}
	return 0
}

func port(t *testing.T, addr string) int32 {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	n, err := strconv.ParseInt(p, 10, 32)
	if err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	return int32(n)
}

func checkProbe(t *testing.T, what string, p *corev1.Probe, path string, c corev1.Container, want int32) {
	t.Helper()
	if p == nil || p.HTTPGet == nil {
		t.Errorf("container %s: no HTTP %s probe", c.Name, what)
		return
	}
	got := p.HTTPGet.Port.IntVal
	if p.HTTPGet.Port.StrVal != "" {
		got = containerPort(c, p.HTTPGet.Port.StrVal)
	}
	if p.HTTPGet.Path != path || got != want {
		t.Errorf("container %s: %s probe %s on port %d, want %s on %d", c.Name, what, p.HTTPGet.Path, got, path, want)
	}
}

func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}
