// Package fleet makes the synthetic cluster of the fleet benchmark: pods
// shaped like those of a Deployment (containers, probes, volumes, status
// conditions, as the API server returns them) spread over many nodes, and
// the nodes themselves.
package fleet

import (
	"fmt"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// NodeName is the name of node i: cloud-style, as long as real ones.
func NodeName(i int) string {
	return fmt.Sprintf("ip-10-%d-%d-%d.eu-west-1.compute.internal", i/65536, i/256%256, i%256)
}

// Node returns node i, with its UID and creation time set (as read from
// the API server; Create ignores both).
func Node(i int) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name: NodeName(i), UID: types.UID(fmt.Sprintf("22222222-0000-4000-8000-%012d", i)),
		CreationTimestamp: metav1.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC),
		Labels:            map[string]string{"kubernetes.io/hostname": NodeName(i), "topology.kubernetes.io/zone": "eu-west-1" + string(rune('a'+i%3))},
	}}
}

// Namespace is the namespace of pod i (100 namespaces).
func Namespace(i int) string { return "team-" + strconv.Itoa(i%100) }

// Pod returns pod i of a cluster, scheduled on node, Running, with a
// spec and status of the size a typical Deployment's pod has. Its UID
// is set (so it can stand for a pod read from the API server); Create
// ignores it.
func Pod(i int, node string) *corev1.Pod {
	app := "app-" + strconv.Itoa(i%500)
	name := fmt.Sprintf("%s-7d9f8c6b5-%05d", app, i)
	labels := map[string]string{"app.kubernetes.io/name": app, "app.kubernetes.io/part-of": "shop", "pod-template-hash": "7d9f8c6b5", "tier": "backend"}
	ts := metav1.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	ctrl := true
	env := make([]corev1.EnvVar, 0, 6)
	for _, k := range []string{"LOG_LEVEL", "OTEL_EXPORTER_OTLP_ENDPOINT", "SERVICE_NAME", "REGION", "CACHE_TTL"} {
		env = append(env, corev1.EnvVar{Name: k, Value: "value-of-" + k})
	}
	env = append(env, corev1.EnvVar{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.name"}}})
	probe := &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(8080), Scheme: corev1.URISchemeHTTP}}, PeriodSeconds: 10, TimeoutSeconds: 1, SuccessThreshold: 1, FailureThreshold: 3}
	cond := func(t corev1.PodConditionType) corev1.PodCondition {
		return corev1.PodCondition{Type: t, Status: corev1.ConditionTrue, LastTransitionTime: ts}
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: Namespace(i), UID: types.UID(fmt.Sprintf("00000000-0000-4000-8000-%012d", i)),
			GenerateName: app + "-7d9f8c6b5-", Labels: labels,
			Annotations:       map[string]string{"kubectl.kubernetes.io/restartedAt": "2026-12-01T10:00:00Z", "prometheus.io/scrape": "true"},
			CreationTimestamp: ts,
			OwnerReferences:   []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: app + "-7d9f8c6b5", UID: types.UID("11111111-0000-4000-8000-" + fmt.Sprintf("%012d", i%500)), Controller: &ctrl, BlockOwnerDeletion: &ctrl}},
		},
		Spec: corev1.PodSpec{
			ServiceAccountName: app, NodeName: node,
			Containers: []corev1.Container{{
				Name: "app", Image: "registry.example.com/shop/" + app + ":v1.42.7", Env: env,
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}},
				Resources: corev1.ResourceRequirements{
					Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi")},
					Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
				},
				VolumeMounts: []corev1.VolumeMount{
					{Name: "config", MountPath: "/etc/app"},
					{Name: "kube-api-access", MountPath: "/var/run/secrets/kubernetes.io/serviceaccount", ReadOnly: true},
				},
				LivenessProbe: probe, ReadinessProbe: probe,
				TerminationMessagePath: "/dev/termination-log", TerminationMessagePolicy: corev1.TerminationMessageReadFile, ImagePullPolicy: corev1.PullIfNotPresent,
			}},
			Volumes: []corev1.Volume{
				{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: app + "-config"}}}},
				{Name: "kube-api-access", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
					{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token", ExpirationSeconds: ptr(int64(3607))}},
					{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "kube-root-ca.crt"}, Items: []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}}}},
				}}}},
			},
			RestartPolicy: corev1.RestartPolicyAlways, DNSPolicy: corev1.DNSClusterFirst, SchedulerName: "default-scheduler",
			TerminationGracePeriodSeconds: ptr(int64(30)),
			Tolerations: []corev1.Toleration{
				{Key: "node.kubernetes.io/not-ready", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr(int64(300))},
				{Key: "node.kubernetes.io/unreachable", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr(int64(300))},
			},
		},
		Status: corev1.PodStatus{
			Phase:      corev1.PodRunning,
			Conditions: []corev1.PodCondition{cond(corev1.PodInitialized), cond(corev1.PodReady), cond(corev1.ContainersReady), cond(corev1.PodScheduled)},
			HostIP:     "10.0.0.1", PodIP: fmt.Sprintf("10.1.%d.%d", i/256%256, i%256), StartTime: &ts,
			ContainerStatuses: []corev1.ContainerStatus{{
				Name: "app", Ready: true, Image: "registry.example.com/shop/" + app + ":v1.42.7",
				ImageID:     "registry.example.com/shop/" + app + "@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
				ContainerID: "containerd://" + fmt.Sprintf("%064d", i),
				State:       corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: ts}},
			}},
			QOSClass: corev1.PodQOSBurstable,
		},
	}
}

func ptr[T any](v T) *T { return &v }
