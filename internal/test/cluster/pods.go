package cluster

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// PodContainer is the name of the one container of a ScheduledPod.
const PodContainer = "app"

// ScheduledPod returns a pod of ServiceAccount sa in namespace, bound to
// node as the scheduler leaves it (spec.nodeName set) with one container
// (PodContainer). No kubelet runs against envtest: the pod stays Pending
// until a test sets its status.
func ScheduledPod(namespace, name, sa, node string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec: corev1.PodSpec{
			ServiceAccountName: sa,
			NodeName:           node,
			Containers:         []corev1.Container{{Name: PodContainer, Image: "example.invalid/" + sa}},
		},
	}
}

// CreatePod creates ScheduledPod(namespace, name, sa, node) through kube
// and returns it as the API server stored it (UID set).
func CreatePod(t testing.TB, kube kubernetes.Interface, namespace, name, sa, node string) *corev1.Pod {
	t.Helper()
	pod, err := kube.CoreV1().Pods(namespace).Create(t.Context(), ScheduledPod(namespace, name, sa, node), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s/%s: %v", namespace, name, err)
	}
	return pod
}
