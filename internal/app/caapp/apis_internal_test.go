package caapp

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	fakediscovery "k8s.io/client-go/discovery/fake"
	clienttesting "k8s.io/client-go/testing"

	"github.com/mayfly-pki/mayfly/internal/test/promtest"
)

func TestDiscoverAPIs(t *testing.T) {
	cases := []struct {
		name      string
		resources []*metav1.APIResourceList
		want      ClusterAPIs
	}{
		{"1.37: both served", []*metav1.APIResourceList{{GroupVersion: certificatesV1, APIResources: []metav1.APIResource{
			{Name: "certificatesigningrequests"}, {Name: "podcertificaterequests"}, {Name: "clustertrustbundles"},
		}}}, ClusterAPIs{PodCertificateRequests: true, ClusterTrustBundles: true}},
		{"1.35: only CSRs at v1", []*metav1.APIResourceList{{GroupVersion: certificatesV1, APIResources: []metav1.APIResource{
			{Name: "certificatesigningrequests"},
		}}, {GroupVersion: "certificates.k8s.io/v1beta1", APIResources: []metav1.APIResource{{Name: "clustertrustbundles"}}}}, ClusterAPIs{}},
		{"group version absent", nil, ClusterAPIs{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := &fakediscovery.FakeDiscovery{Fake: &clienttesting.Fake{Resources: c.resources}}
			got, err := discoverAPIs(d)
			if err != nil || got != c.want {
				t.Fatalf("discoverAPIs = %+v, %v; want %+v", got, err, c.want)
			}
		})
	}
}

func TestClusterAPIsReport(t *testing.T) {
	var logs bytes.Buffer
	reg := prometheus.NewRegistry()
	if err := (ClusterAPIs{ClusterTrustBundles: true}).report(slog.New(slog.NewTextHandler(&logs, nil)), reg); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "does not serve certificates.k8s.io/v1 PodCertificateRequest") || strings.Contains(logs.String(), "ClusterTrustBundle (") {
		t.Errorf("log = %s", logs.String())
	}
	if v, ok := promtest.Value(t, reg, "mayfly_ca_kubernetes_api_served", "api=podcertificaterequests"); !ok || v != 0 {
		t.Errorf("podcertificaterequests = %v, %v", v, ok)
	}
	if v, ok := promtest.Value(t, reg, "mayfly_ca_kubernetes_api_served", "api=clustertrustbundles"); !ok || v != 1 {
		t.Errorf("clustertrustbundles = %v, %v", v, ok)
	}
	var out bytes.Buffer
	st := Status{TrustDomain: "example.org", Ready: true, KubernetesAPIs: &ClusterAPIs{ClusterTrustBundles: true}}
	if err := printStatus(&out, st, time.Now()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "off: the cluster does not serve certificates.k8s.io/v1 PodCertificateRequest") {
		t.Errorf("ca status = %s", out.String())
	}
}
