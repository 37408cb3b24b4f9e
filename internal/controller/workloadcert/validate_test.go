package workloadcert

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	mayflyv1alpha1 "github.com/mayfly-pki/mayfly/api/mayfly/v1alpha1"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// services is a lookup holding the Services of namespace app.
type services []string

func (s services) serviceExists(_ context.Context, ns, name string) (bool, error) {
	if name == "broken" {
		return false, errors.New("cache not synced")
	}
	return ns == "app" && slices.Contains(s, name), nil
}

func TestValidateSpec(t *testing.T) {
	valid := func() mayflyv1alpha1.WorkloadCertificateSpec {
		return mayflyv1alpha1.WorkloadCertificateSpec{ServiceAccountName: "web", SecretName: "web-tls"}
	}
	for _, tc := range []struct {
		name     string
		change   func(*mayflyv1alpha1.WorkloadCertificateSpec)
		wantErrs []string // substrings, one per field error, in order
		wantDNS  []string
	}{
		{name: "defaults", change: func(*mayflyv1alpha1.WorkloadCertificateSpec) {}},
		{name: "Service_names_of_own_namespace", change: func(s *mayflyv1alpha1.WorkloadCertificateSpec) {
			s.DNSNames = []string{"web.app.svc", "web.app.svc.cluster.local", "api.app.svc"}
		}, wantDNS: []string{"web.app.svc", "web.app.svc.cluster.local", "api.app.svc"}},
		{name: "other_namespace", change: func(s *mayflyv1alpha1.WorkloadCertificateSpec) {
			s.DNSNames = []string{"web.app.svc", "x.other-ns.svc"}
		}, wantErrs: []string{`spec.dnsNames[1]: policy: rule service-dns-name: dns name "x.other-ns.svc" is not a Service name of namespace app`}},
		{name: "other_cluster_domain", change: func(s *mayflyv1alpha1.WorkloadCertificateSpec) { s.DNSNames = []string{"web.app.svc.example.com"} },
			wantErrs: []string{`spec.dnsNames[0]: policy: rule service-dns-name: dns name "web.app.svc.example.com" is not a Service name`}},
		{name: "short_name", change: func(s *mayflyv1alpha1.WorkloadCertificateSpec) { s.DNSNames = []string{"web.app"} },
			wantErrs: []string{`spec.dnsNames[0]: policy: rule service-dns-name: dns name "web.app" is not a Service name`}},
		{name: "external_name", change: func(s *mayflyv1alpha1.WorkloadCertificateSpec) { s.DNSNames = []string{"example.com"} },
			wantErrs: []string{`spec.dnsNames[0]: policy: rule service-dns-name: dns name "example.com" is not a Service name`}},
		{name: "missing_Service", change: func(s *mayflyv1alpha1.WorkloadCertificateSpec) { s.DNSNames = []string{"db.app.svc"} },
			wantErrs: []string{`spec.dnsNames[0]: policy: rule service-dns-name: "db.app.svc" names Service "db", which does not exist in namespace app`}},
		{name: "wildcard", change: func(s *mayflyv1alpha1.WorkloadCertificateSpec) { s.DNSNames = []string{"*.app.svc"} },
			wantErrs: []string{`spec.dnsNames[0]: DNS name "*.app.svc" has invalid character`}},
		{name: "duplicate", change: func(s *mayflyv1alpha1.WorkloadCertificateSpec) { s.DNSNames = []string{"web.app.svc", "web.app.svc"} },
			wantErrs: []string{`spec.dnsNames[1]: "web.app.svc" is listed twice`}},
		{name: "too_many", change: func(s *mayflyv1alpha1.WorkloadCertificateSpec) { s.DNSNames = make([]string, 33) },
			wantErrs: []string{"spec.dnsNames: 33 names, at most 32 allowed"}},
		{name: "ttl_range", change: func(s *mayflyv1alpha1.WorkloadCertificateSpec) { s.TTL = &metav1.Duration{Duration: time.Minute} },
			wantErrs: []string{"spec.ttl: policy: rule ttl-bounds: ttl 1m0s is below the minimum 5m0s"}},
		{name: "key_type", change: func(s *mayflyv1alpha1.WorkloadCertificateSpec) { s.KeyType = "DSA" },
			wantErrs: []string{`spec.keyType: "DSA" is not one of ECDSAP256, ECDSAP384, Ed25519, RSA2048, RSA3072`}},
		{name: "secret_name", change: func(s *mayflyv1alpha1.WorkloadCertificateSpec) { s.SecretName = "Web_TLS" },
			wantErrs: []string{`spec.secretName: "Web_TLS": a lowercase RFC 1123 subdomain`}},
		{name: "reserved_label", change: func(s *mayflyv1alpha1.WorkloadCertificateSpec) {
			s.SecretTemplate = &mayflyv1alpha1.SecretTemplate{Labels: map[string]string{mayflyv1alpha1.LabelWorkloadCertificate: "x"}}
		}, wantErrs: []string{"spec.secretTemplate.labels[mayfly.dev/workload-certificate]: is set by the controller"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wc := &mayflyv1alpha1.WorkloadCertificate{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "web"}, Spec: valid()}
			tc.change(&wc.Spec)
			got, errs, err := validateSpec(context.Background(), wc, "cluster.local", services{"web", "api"})
			if err != nil {
				t.Fatal(err)
			}
			if len(errs) != len(tc.wantErrs) {
				t.Fatalf("errors %q, want %d matching %q", errs, len(tc.wantErrs), tc.wantErrs)
			}
			for i, want := range tc.wantErrs {
				if !strings.Contains(errs[i], want) {
					t.Errorf("error %d %q lacks %q", i, errs[i], want)
				}
			}
			if len(errs) == 0 {
				if got.keyType != pki.KeyTypeECDSAP256 || got.ttl != time.Hour || !slices.Equal(got.dnsNames, tc.wantDNS) {
					t.Errorf("spec %+v, want ECDSA P-256, 1h, %v", got, tc.wantDNS)
				}
			}
		})
	}
	t.Run("a_failed_lookup_is_an_error_not_a_denial", func(t *testing.T) {
		wc := &mayflyv1alpha1.WorkloadCertificate{ObjectMeta: metav1.ObjectMeta{Namespace: "app"}, Spec: valid()}
		wc.Spec.DNSNames = []string{"broken.app.svc"}
		if _, errs, err := validateSpec(context.Background(), wc, "cluster.local", services{}); err == nil || errs != nil {
			t.Errorf("errs %q, err %v; want an error", errs, err)
		}
	})
}
