package workloadcert

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	mayflyv1alpha1 "github.com/mayfly-pki/mayfly/api/mayfly/v1alpha1"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// Secret keys (kubernetes.io/tls plus the trust bundle).
const (
	keyCert   = corev1.TLSCertKey       // tls.crt: leaf, then intermediates
	keyKey    = corev1.TLSPrivateKeyKey // tls.key: PKCS#8
	keyBundle = "ca.crt"                // trust bundle roots
	// annotationSpecHash records the hash of the issuance-relevant spec the
	// certificate in the Secret was issued for.
	annotationSpecHash = "mayfly.dev/spec-hash"
	// maxChainPEM bounds tls.crt; a leaf and a few intermediates fit easily.
	maxChainPEM = 64 << 10
)

// specHash identifies what a certificate depends on: identity, names, key
// type and lifetime. Secret metadata (secretTemplate) is not part of it:
// changing a label does not replace the key.
func specHash(id string, s issueSpec) string {
	b, _ := json.Marshal(struct {
		ID       string   `json:"id"`
		KeyType  string   `json:"keyType"`
		TTL      string   `json:"ttl"`
		DNSNames []string `json:"dnsNames"`
	}{id, string(s.keyType), s.ttl.String(), s.dnsNames})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:12])
}

// current is the parsed content of an existing Secret.
type current struct {
	leaf  *x509.Certificate
	chain []*x509.Certificate // intermediates after the leaf
}

// renewReason says why the certificate in the Secret must be replaced;
// empty when it need not.
type renewReason string

const (
	renewNone          renewReason = ""
	renewSecretMissing renewReason = "SecretMissing"
	renewSecretInvalid renewReason = "SecretInvalid"
	renewSpecChanged   renewReason = "SpecChanged"
	renewNotTrusted    renewReason = "NotTrusted"
	renewExpired       renewReason = "Expired"
	renewDue           renewReason = "RenewalDue"
)

// inspect decides whether the certificate in s can stay: it must parse,
// match its key, carry the wanted identity and spec hash, chain to roots
// and not be due for renewal. renewAt returns the renewal time of a leaf.
func inspect(s *corev1.Secret, wantID, wantHash string, roots []*x509.Certificate, now time.Time, renewAt func(*x509.Certificate) time.Time) (*current, renewReason, string) {
	if s == nil {
		return nil, renewSecretMissing, "the Secret does not exist"
	}
	certs, err := pki.DecodeCertificates(s.Data[keyCert], pki.PEMLimits{MaxBytes: maxChainPEM})
	if err != nil {
		return nil, renewSecretInvalid, fmt.Sprintf("%s: %v", keyCert, err)
	}
	key, err := pki.ParsePrivateKeyPEM(s.Data[keyKey])
	if err != nil {
		return nil, renewSecretInvalid, fmt.Sprintf("%s: %v", keyKey, err)
	}
	cur := &current{leaf: certs[0], chain: certs[1:]}
	if !pki.KeyMatches(cur.leaf, key) {
		return cur, renewSecretInvalid, fmt.Sprintf("%s does not match the certificate in %s", keyKey, keyCert)
	}
	if s.Annotations[annotationSpecHash] != wantHash {
		return cur, renewSpecChanged, "the spec changed"
	}
	if !now.Before(cur.leaf.NotAfter) {
		return cur, renewExpired, "the certificate expired at " + cur.leaf.NotAfter.UTC().Format(time.RFC3339)
	}
	id, err := pki.VerifyX509SVID(cur.leaf, cur.chain, roots, now, x509.ExtKeyUsageServerAuth)
	if err != nil {
		return cur, renewNotTrusted, fmt.Sprintf("the certificate does not verify against the current trust bundle: %v", err)
	}
	if id.String() != wantID {
		return cur, renewSecretInvalid, fmt.Sprintf("the certificate is for %s, not %s", id, wantID)
	}
	if at := renewAt(cur.leaf); !now.Before(at) {
		return cur, renewDue, "renewal time " + at.UTC().Format(time.RFC3339) + " passed"
	}
	return cur, renewNone, ""
}

// desiredSecret returns s (or a new Secret) changed to hold data with the
// labels, annotations and owner the WorkloadCertificate asks for. It reports
// whether anything changed. Labels and annotations that others added stay.
func desiredSecret(s *corev1.Secret, wc *mayflyv1alpha1.WorkloadCertificate, data map[string][]byte, hash string) (*corev1.Secret, bool) {
	if s == nil {
		s = &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: wc.Namespace, Name: wc.Spec.SecretName},
			Type:       corev1.SecretTypeTLS,
		}
	} else {
		s = s.DeepCopy()
	}
	changed := s.ResourceVersion == ""
	set := func(m *map[string]string, k, v string) {
		if *m == nil {
			*m = map[string]string{}
		}
		if old, ok := (*m)[k]; !ok || old != v {
			(*m)[k] = v
			changed = true
		}
	}
	if t := wc.Spec.SecretTemplate; t != nil {
		for _, k := range slices.Sorted(maps.Keys(t.Labels)) {
			set(&s.Labels, k, t.Labels[k])
		}
		for _, k := range slices.Sorted(maps.Keys(t.Annotations)) {
			set(&s.Annotations, k, t.Annotations[k])
		}
	}
	set(&s.Labels, mayflyv1alpha1.LabelWorkloadCertificate, wc.Name)
	set(&s.Annotations, annotationSpecHash, hash)

	ref := metav1.NewControllerRef(wc, mayflyv1alpha1.GroupVersion.WithKind("WorkloadCertificate"))
	if !slices.ContainsFunc(s.OwnerReferences, func(o metav1.OwnerReference) bool {
		return o.UID == ref.UID && o.Controller != nil && *o.Controller
	}) {
		s.OwnerReferences = append(slices.DeleteFunc(s.OwnerReferences, func(o metav1.OwnerReference) bool { return o.UID == ref.UID }), *ref)
		changed = true
	}
	if len(s.Data) != len(data) || len(s.StringData) > 0 {
		changed = true
	} else {
		for k, v := range data {
			if old, ok := s.Data[k]; !ok || !bytes.Equal(old, v) {
				changed = true
				break
			}
		}
	}
	s.Data = data
	s.StringData = nil
	return s, changed
}
