package workloadcert

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	mayflyv1alpha1 "github.com/mayfly-pki/mayfly/api/mayfly/v1alpha1"
	"github.com/mayfly-pki/mayfly/internal/policy"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// lookup tells whether objects of the WorkloadCertificate's namespace exist.
type lookup interface {
	serviceExists(ctx context.Context, namespace, name string) (bool, error)
}

// issueSpec is a validated spec: what the controller issues.
type issueSpec struct {
	keyType  pki.KeyType
	ttl      time.Duration
	dnsNames []string
}

// fieldErrors collects "<field path>: <message>" lines.
type fieldErrors []string

func (e *fieldErrors) add(path, format string, args ...any) {
	*e = append(*e, path+": "+fmt.Sprintf(format, args...))
}

func (e fieldErrors) Error() string { return strings.Join(e, "; ") }

// ttlBounds is the lifetime rule of WorkloadCertificates: the spec is
// checked against it (with the field path), and signRules applies it again
// when signing.
var ttlBounds = policy.TTLBounds{Min: pki.MinWorkloadTTL, Max: pki.MaxWorkloadTTL}

// signRules is the signing policy of WorkloadCertificate leaves.
var signRules = policy.WorkloadRules(policy.WorkloadLimits{
	MinTTL: ttlBounds.Min, MaxTTL: ttlBounds.Max, MaxDNSNames: mayflyv1alpha1.MaxDNSNames, KubernetesIDs: true,
})

// keyTypes maps the API's key type names to pki's.
var keyTypes = map[mayflyv1alpha1.KeyType]pki.KeyType{
	mayflyv1alpha1.KeyTypeECDSAP256: pki.KeyTypeECDSAP256,
	mayflyv1alpha1.KeyTypeECDSAP384: pki.KeyTypeECDSAP384,
	mayflyv1alpha1.KeyTypeEd25519:   pki.KeyTypeEd25519,
	mayflyv1alpha1.KeyTypeRSA2048:   pki.KeyTypeRSA2048,
	mayflyv1alpha1.KeyTypeRSA3072:   pki.KeyTypeRSA3072,
}

// validateSpec checks what the CRD schema checks (objects may predate a
// schema change, or come from a cluster whose CRD was edited) and what it
// cannot: that every DNS name is the name of an existing Service of the
// object's own namespace. A nil fieldErrors and nil error mean valid; error
// is for failed lookups only.
func validateSpec(ctx context.Context, wc *mayflyv1alpha1.WorkloadCertificate, clusterDomain string, lk lookup) (issueSpec, fieldErrors, error) {
	var errs fieldErrors
	spec := wc.Spec
	ns := wc.Namespace
	out := issueSpec{keyType: pki.DefaultKeyType, ttl: time.Hour}

	for _, m := range validation.IsDNS1123Subdomain(spec.ServiceAccountName) {
		errs.add("spec.serviceAccountName", "%q: %s", spec.ServiceAccountName, m)
	}
	for _, m := range validation.IsDNS1123Subdomain(spec.SecretName) {
		errs.add("spec.secretName", "%q: %s", spec.SecretName, m)
	}
	if spec.TTL != nil {
		out.ttl = spec.TTL.Duration
		if err := ttlBounds.Check(out.ttl); err != nil {
			errs.add("spec.ttl", "%v", err)
		}
	}
	if spec.KeyType != "" {
		kt, ok := keyTypes[spec.KeyType]
		if !ok {
			errs.add("spec.keyType", "%q is not one of %s", spec.KeyType, keyTypeNames())
		}
		out.keyType = kt
	}
	if t := spec.SecretTemplate; t != nil {
		for k, v := range t.Labels {
			path := fmt.Sprintf("spec.secretTemplate.labels[%s]", k)
			if k == mayflyv1alpha1.LabelWorkloadCertificate {
				errs.add(path, "is set by the controller; remove it")
			}
			for _, m := range validation.IsQualifiedName(k) {
				errs.add(path, "key: %s", m)
			}
			for _, m := range validation.IsValidLabelValue(v) {
				errs.add(path, "%q: %s", v, m)
			}
		}
		for k := range t.Annotations {
			for _, m := range validation.IsQualifiedName(strings.ToLower(k)) {
				errs.add(fmt.Sprintf("spec.secretTemplate.annotations[%s]", k), "key: %s", m)
			}
		}
	}
	names := spec.DNSNames
	if len(names) > mayflyv1alpha1.MaxDNSNames {
		errs.add("spec.dnsNames", "%d names, at most %d allowed", len(names), mayflyv1alpha1.MaxDNSNames)
		names = nil // no lookups, and no message per name, for an oversized list
	}
	for i, name := range names {
		path := fmt.Sprintf("spec.dnsNames[%d]", i)
		if err := pki.CheckDNSName(name); err != nil {
			errs.add(path, "%v", err)
			continue
		}
		if slices.Contains(names[:i], name) {
			errs.add(path, "%q is listed twice", name)
			continue
		}
		svc, err := policy.ServiceDNSName(name, ns, clusterDomain)
		if err != nil {
			errs.add(path, "%v", err)
			continue
		}
		exists, err := lk.serviceExists(ctx, ns, svc)
		if err != nil {
			return out, nil, fmt.Errorf("looking up Service %s/%s: %w", ns, svc, err)
		}
		if !exists {
			errs.add(path, "%v", policy.Deny(policy.RuleServiceDNSName, policy.ClassForbidden, "%q names Service %q, which does not exist in namespace %s", name, svc, ns))
			continue
		}
		out.dnsNames = append(out.dnsNames, name)
	}
	return out, errs, nil
}

func keyTypeNames() string {
	names := make([]string, 0, len(keyTypes))
	for k := range keyTypes {
		names = append(names, string(k))
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}
