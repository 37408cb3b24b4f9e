package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Limits of a WorkloadCertificate, shared by the CRD schema and the
// controller's own validation (docs/architecture.md, Identities).
const (
	// DefaultTTL is the lifetime of a certificate when spec.ttl is unset.
	DefaultTTL = "1h"
	// MaxDNSNames bounds spec.dnsNames.
	MaxDNSNames = 32
	// LabelWorkloadCertificate is set on every Secret the controller writes;
	// its value is the name of the WorkloadCertificate. secretTemplate may
	// not set it.
	LabelWorkloadCertificate = "mayfly.dev/workload-certificate"
)

// KeyType is the private key algorithm of a WorkloadCertificate.
// +kubebuilder:validation:Enum=ECDSAP256;ECDSAP384;Ed25519;RSA2048;RSA3072
type KeyType string

// The key types a WorkloadCertificate may request.
const (
	KeyTypeECDSAP256 KeyType = "ECDSAP256"
	KeyTypeECDSAP384 KeyType = "ECDSAP384"
	KeyTypeEd25519   KeyType = "Ed25519"
	KeyTypeRSA2048   KeyType = "RSA2048"
	KeyTypeRSA3072   KeyType = "RSA3072"
)

// Condition types of a WorkloadCertificate.
const (
	// ConditionReady is True while the Secret holds a valid certificate for
	// the current spec, signed by the current CA.
	ConditionReady = "Ready"
	// ConditionIssuing is True while a certificate is due but not yet
	// written (the CA is not ready, or the last attempt failed and is
	// retried).
	ConditionIssuing = "Issuing"
	// ConditionFailed is True when the controller cannot issue until the
	// user acts: the spec is invalid, the ServiceAccount is missing, or the
	// Secret belongs to someone else.
	ConditionFailed = "Failed"
)

// Condition reasons of a WorkloadCertificate.
const (
	// ReasonIssued: the Secret holds a certificate for the current spec.
	ReasonIssued = "Issued"
	// ReasonInvalidSpec: the spec fails validation; the message names the
	// field path.
	ReasonInvalidSpec = "InvalidSpec"
	// ReasonServiceAccountNotFound: spec.serviceAccountName does not exist
	// in the namespace.
	ReasonServiceAccountNotFound = "ServiceAccountNotFound"
	// ReasonSecretNotOwned: a Secret named spec.secretName exists and is not
	// controlled by this WorkloadCertificate; it is never overwritten.
	ReasonSecretNotOwned = "SecretNotOwned"
	// ReasonCANotReady: the CA holds no valid signing authority; retried.
	ReasonCANotReady = "CANotReady"
	// ReasonIssuanceFailed: signing or writing the Secret failed; retried.
	ReasonIssuanceFailed = "IssuanceFailed"
	// ReasonRenewing: a certificate is being issued (first issuance, renewal
	// or repair of the Secret).
	ReasonRenewing = "Renewing"
	// ReasonNamespaceNotEnabled: the CA does not write Secrets in this
	// namespace (its kubernetes.workloadCertificates.namespaces leaves it
	// out); an operator opts the namespace in.
	ReasonNamespaceNotEnabled = "NamespaceNotEnabled"
)

// WorkloadCertificateSpec is what the user asks for.
type WorkloadCertificateSpec struct {
	// ServiceAccountName is the ServiceAccount, in the namespace of the
	// WorkloadCertificate, whose identity the certificate carries:
	// spiffe://<trust-domain>/ns/<namespace>/sa/<serviceAccountName>.
	// It must exist.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="!format.dns1123Subdomain().validate(self).hasValue()",message="must be a DNS-1123 subdomain (lowercase letters, digits, '-' and '.')"
	ServiceAccountName string `json:"serviceAccountName"`

	// SecretName is the kubernetes.io/tls Secret, in the same namespace,
	// that receives tls.crt, tls.key and ca.crt. A Secret of that name that
	// this WorkloadCertificate does not control is never overwritten.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="!format.dns1123Subdomain().validate(self).hasValue()",message="must be a DNS-1123 subdomain (lowercase letters, digits, '-' and '.')"
	SecretName string `json:"secretName"`

	// DNSNames are extra DNS SANs. Only names of Services of the same
	// namespace are allowed: <service>.<namespace>.svc or
	// <service>.<namespace>.svc.<cluster-domain>.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:MaxLength=253
	// +kubebuilder:validation:items:XValidation:rule="!format.dns1123Subdomain().validate(self).hasValue()",message="must be a lowercase DNS name"
	DNSNames []string `json:"dnsNames,omitempty"`

	// TTL is the lifetime of each certificate, between 5m and 24h (default
	// 1h). It is renewed at about half of it.
	// +optional
	// +kubebuilder:default="1h"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('5m') && duration(self) <= duration('24h')",message="must be between 5m and 24h"
	TTL *metav1.Duration `json:"ttl,omitempty"`

	// KeyType is the private key algorithm (default ECDSAP256).
	// +optional
	// +kubebuilder:default=ECDSAP256
	KeyType KeyType `json:"keyType,omitempty"`

	// SecretTemplate holds labels and annotations copied onto the Secret.
	// +optional
	SecretTemplate *SecretTemplate `json:"secretTemplate,omitempty"`
}

// SecretTemplate is metadata for the Secret.
type SecretTemplate struct {
	// Labels are added to the Secret; mayfly.dev/workload-certificate is
	// reserved.
	// +optional
	// +kubebuilder:validation:MaxProperties=64
	// +kubebuilder:validation:XValidation:rule="!('mayfly.dev/workload-certificate' in self)",message="the label mayfly.dev/workload-certificate is set by the controller"
	Labels map[string]string `json:"labels,omitempty"`
	// Annotations are added to the Secret.
	// +optional
	// +kubebuilder:validation:MaxProperties=64
	Annotations map[string]string `json:"annotations,omitempty"`
}

// WorkloadCertificateStatus is what the controller observed and did.
type WorkloadCertificateStatus struct {
	// NotBefore of the certificate in the Secret.
	// +optional
	NotBefore *metav1.Time `json:"notBefore,omitempty"`
	// NotAfter of the certificate in the Secret.
	// +optional
	NotAfter *metav1.Time `json:"notAfter,omitempty"`
	// RenewalTime is when the controller replaces the certificate: at half
	// of its life, ±10% jitter.
	// +optional
	RenewalTime *metav1.Time `json:"renewalTime,omitempty"`
	// SerialNumber of the certificate in the Secret, lowercase hex.
	// +optional
	SerialNumber string `json:"serialNumber,omitempty"`
	// SPIFFEID is the URI SAN of the certificate.
	// +optional
	SPIFFEID string `json:"spiffeID,omitempty"`
	// Conditions: Ready, Issuing, Failed.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// ObservedGeneration is the generation of the spec the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
}

// WorkloadCertificate asks the CA for an X.509-SVID of a ServiceAccount of
// its namespace, kept fresh in a kubernetes.io/tls Secret.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Namespaced,shortName=wcert,categories=mayfly
// +kubebuilder:printcolumn:name="Secret",type=string,JSONPath=`.spec.secretName`
// +kubebuilder:printcolumn:name="SPIFFE ID",type=string,JSONPath=`.status.spiffeID`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Not After",type=string,format=date-time,JSONPath=`.status.notAfter`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type WorkloadCertificate struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec WorkloadCertificateSpec `json:"spec"`
	// +optional
	Status WorkloadCertificateStatus `json:"status,omitempty"`
}

// WorkloadCertificateList is a list of WorkloadCertificates.
//
// +kubebuilder:object:root=true
type WorkloadCertificateList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []WorkloadCertificate `json:"items"`
}
