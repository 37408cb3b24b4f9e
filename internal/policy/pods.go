package policy

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Names of the rules about the pod a Kubernetes request is for.
const (
	RulePodNode  = "pod-node"
	RulePodPhase = "pod-phase"
	RulePodToken = "pod-token"
)

// MirrorPodAnnotation marks a static pod's mirror (k8s.io/api core/v1
// MirrorPodAnnotationKey); the PodCertificateRequest signer refuses them.
const MirrorPodAnnotation = "kubernetes.io/config.mirror"

// Pod is what the CA knows of a pod: the fields its rules read, and
// nothing else. The CA's pod cache holds pods in this shape (a large
// cluster's pods cost a few hundred bytes each instead of kilobytes);
// PodOf makes one of a pod read from the API server.
type Pod struct {
	Namespace, Name string
	UID             types.UID
	// ServiceAccount is spec.serviceAccountName as set ("" when unset).
	ServiceAccount string
	// NodeName is spec.nodeName, "" while unscheduled.
	NodeName string
	Phase    corev1.PodPhase
	// Terminating is set with metadata.deletionTimestamp.
	Terminating bool
	// Mirror is set for a static pod's mirror (MirrorPodAnnotation).
	Mirror bool
}

// PodOf returns what the CA's rules read of pod.
func PodOf(pod *corev1.Pod) Pod {
	_, mirror := pod.Annotations[MirrorPodAnnotation]
	return Pod{
		Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID,
		ServiceAccount: pod.Spec.ServiceAccountName, NodeName: pod.Spec.NodeName,
		Phase: pod.Status.Phase, Terminating: pod.DeletionTimestamp != nil, Mirror: mirror,
	}
}

// PodOnNode requires pod to be scheduled on node: an agent (or a kubelet)
// obtains identities of its own node's pods only.
func PodOnNode(pod *Pod, node string) error {
	if pod.NodeName == "" || pod.NodeName != node {
		return Deny(RulePodNode, ClassForbidden, "pod %s/%s is scheduled on node %q, not on the requesting node %q", pod.Namespace, pod.Name, pod.NodeName, node)
	}
	return nil
}

// PodNotTerminated requires pod not to be deleting and not to have
// terminated (phase Succeeded or Failed): a pod that is done gets no new
// identity.
func PodNotTerminated(pod *Pod) error {
	switch {
	case pod.Terminating:
		return Deny(RulePodPhase, ClassForbidden, "pod %s/%s is terminating", pod.Namespace, pod.Name)
	case pod.Phase == corev1.PodSucceeded || pod.Phase == corev1.PodFailed:
		return Deny(RulePodPhase, ClassForbidden, "pod %s/%s has terminated (phase %s)", pod.Namespace, pod.Name, pod.Phase)
	}
	return nil
}

// PodActive is PodNotTerminated and more: the pod's phase must be Pending or
// Running, as the CA's own pod cache reports it (the issuer API, where the
// agent names the pod).
func PodActive(pod *Pod) error {
	if err := PodNotTerminated(pod); err != nil {
		return err
	}
	if pod.Phase != corev1.PodPending && pod.Phase != corev1.PodRunning {
		return Deny(RulePodPhase, ClassForbidden, "pod %s/%s is in phase %q, not Pending or Running", pod.Namespace, pod.Name, pod.Phase)
	}
	return nil
}
