// Package v1alpha1 holds the mayfly.dev/v1alpha1 Kubernetes API: the
// WorkloadCertificate resource, from which the CA writes an X.509-SVID into a
// kubernetes.io/tls Secret (docs/delivery.md).
//
// zz_generated.deepcopy.go and the CRD in deploy/helm/mayfly/files/crds (rendered
// into deploy/k8s/base/crds by make manifests) are generated
// from the markers in this package; run `go generate ./api/mayfly/...` after
// changing a type (needs only the Go module proxy).
//
// +kubebuilder:object:generate=true
// +groupName=mayfly.dev
package v1alpha1

//go:generate go run sigs.k8s.io/controller-tools/cmd/controller-gen@v0.20.0 object paths=./ crd:crdVersions=v1 output:crd:dir=../../../deploy/helm/mayfly/files/crds
