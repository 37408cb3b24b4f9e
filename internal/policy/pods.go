package policy

import (
	corev1 "k8s.io/api/core/v1"
)

// Names of the rules about the pod a Kubernetes request is for.
const (
	RulePodNode  = "pod-node"
	RulePodPhase = "pod-phase"
	RulePodToken = "pod-token"
)

// PodOnNode requires pod to be scheduled on node: an agent (or a kubelet)
// obtains identities of its own node's pods only.
func PodOnNode(pod *corev1.Pod, node string) error {
	if pod.Spec.NodeName == "" || pod.Spec.NodeName != node {
		return Deny(RulePodNode, ClassForbidden, "pod %s/%s is scheduled on node %q, not on the requesting node %q", pod.Namespace, pod.Name, pod.Spec.NodeName, node)
	}
	return nil
}

// PodNotTerminated requires pod not to be deleting and not to have
// terminated (phase Succeeded or Failed): a pod that is done gets no new
// identity.
func PodNotTerminated(pod *corev1.Pod) error {
	switch {
	case pod.DeletionTimestamp != nil:
		return Deny(RulePodPhase, ClassForbidden, "pod %s/%s is terminating", pod.Namespace, pod.Name)
	case pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed:
		return Deny(RulePodPhase, ClassForbidden, "pod %s/%s has terminated (phase %s)", pod.Namespace, pod.Name, pod.Status.Phase)
	}
	return nil
}

// PodActive is PodNotTerminated and more: the pod's phase must be Pending or
// Running, as the CA's own pod cache reports it (the issuer API, where the
// agent names the pod).
func PodActive(pod *corev1.Pod) error {
	if err := PodNotTerminated(pod); err != nil {
		return err
	}
	if pod.Status.Phase != corev1.PodPending && pod.Status.Phase != corev1.PodRunning {
		return Deny(RulePodPhase, ClassForbidden, "pod %s/%s is in phase %q, not Pending or Running", pod.Namespace, pod.Name, pod.Status.Phase)
	}
	return nil
}
