package deploytest

import (
	"strconv"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/mayfly-pki/mayfly/internal/memlimit"
)

// TestChartMemoryLimit checks that the CA and the agent get their
// container's memory limit through the downward API as memlimit.EnvVar,
// which their binaries turn into a Go memory limit of 90% of it, that
// nothing sets GOMEMLIMIT to the whole limit, and that a container without
// a memory limit gets no variable (the downward API would give the node's
// memory).
func TestChartMemoryLimit(t *testing.T) {
	for _, tc := range []struct {
		name      string
		set       []string
		ca, agent bool // container limit expected
	}{
		{name: "defaults", set: []string{"trustDomain=acme.internal"}, ca: true, agent: true},
		{name: "limits_raised", set: []string{"trustDomain=acme.internal", "ca.resources.limits.memory=2Gi", "agent.resources.limits.memory=1Gi"}, ca: true, agent: true},
		{name: "no_limits", set: []string{"trustDomain=acme.internal", "ca.resources.limits=null", "agent.resources.limits=null"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs := renderChart(t, "mayfly-system", tc.set...)
			var ca appsv1.Deployment
			var agent appsv1.DaemonSet
			convert(t, find(t, objs, "Deployment", "mayfly-ca"), &ca)
			convert(t, find(t, objs, "DaemonSet", "mayfly-agent"), &agent)
			checkMemoryLimitEnv(t, container(t, ca.Spec.Template.Spec, "ca"), tc.ca)
			checkMemoryLimitEnv(t, container(t, agent.Spec.Template.Spec, "agent"), tc.agent)
		})
	}
}

func container(t *testing.T, spec corev1.PodSpec, name string) corev1.Container {
	t.Helper()
	for _, c := range spec.Containers {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no container %q", name)
	return corev1.Container{}
}

func checkMemoryLimitEnv(t *testing.T, c corev1.Container, limited bool) {
	t.Helper()
	var found *corev1.EnvVar
	for i, e := range c.Env {
		switch e.Name {
		case "GOMEMLIMIT":
			t.Errorf("container %s sets GOMEMLIMIT (%+v): the runtime would collect only at the container's limit", c.Name, e)
		case memlimit.EnvVar:
			found = &c.Env[i]
		}
	}
	limit, hasLimit := c.Resources.Limits[corev1.ResourceMemory]
	if hasLimit != limited {
		t.Fatalf("container %s has a memory limit: %v, want %v", c.Name, hasLimit, limited)
	}
	if !limited {
		if found != nil {
			t.Errorf("container %s without a memory limit sets %s (the node's memory)", c.Name, memlimit.EnvVar)
		}
		return
	}
	if found == nil {
		t.Fatalf("container %s has a memory limit of %s and no %s", c.Name, limit.String(), memlimit.EnvVar)
	}
	ref := found.ValueFrom
	if ref == nil || ref.ResourceFieldRef == nil || ref.ResourceFieldRef.Resource != "limits.memory" ||
		(ref.ResourceFieldRef.ContainerName != "" && ref.ResourceFieldRef.ContainerName != c.Name) ||
		(!ref.ResourceFieldRef.Divisor.IsZero() && ref.ResourceFieldRef.Divisor.Value() != 1) {
		t.Fatalf("container %s: %s = %+v, want the container's limits.memory in bytes", c.Name, memlimit.EnvVar, found)
	}
	// What the kubelet puts there: the limit in bytes.
	got, err := memlimit.Parse(strconv.FormatInt(limit.Value(), 10))
	if err != nil {
		t.Fatalf("container %s: the binary refuses its limit %s: %v", c.Name, limit.String(), err)
	}
	if want := limit.Value() / 100 * 90; got != want {
		t.Errorf("container %s: Go memory limit %d for a container limit of %s, want %d", c.Name, got, limit.String(), want)
	}
}
