package caapp

import (
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/discovery"
)

// certificatesV1 is the API group version of PodCertificateRequest and
// ClusterTrustBundle; Kubernetes 1.34 and 1.35 serve them only as alpha or
// beta (off by default), 1.36 onwards as v1.
const certificatesV1 = "certificates.k8s.io/v1"

// ClusterAPIs says which optional Kubernetes APIs the cluster serves; the
// CA turns off the delivery paths whose API is absent.
type ClusterAPIs struct {
	// PodCertificateRequests: the podCertificate projected volume signer.
	PodCertificateRequests bool `json:"podCertificateRequests"`
	// ClusterTrustBundles: the bundle published as a ClusterTrustBundle.
	ClusterTrustBundles bool `json:"clusterTrustBundles"`
}

// discoverAPIs asks the API server's discovery which of the optional APIs
// it serves at certificates.k8s.io/v1.
func discoverAPIs(d discovery.DiscoveryInterface) (ClusterAPIs, error) {
	var apis ClusterAPIs
	list, err := d.ServerResourcesForGroupVersion(certificatesV1)
	if apierrors.IsNotFound(err) {
		return apis, nil
	}
	if err != nil {
		return apis, fmt.Errorf("API discovery of %s: %w", certificatesV1, err)
	}
	for _, r := range list.APIResources {
		switch r.Name {
		case "podcertificaterequests":
			apis.PodCertificateRequests = true
		case "clustertrustbundles":
			apis.ClusterTrustBundles = true
		}
	}
	return apis, nil
}

// report logs what is off and exports mayfly_ca_kubernetes_api_served.
func (a ClusterAPIs) report(log *slog.Logger, reg prometheus.Registerer) error {
	if !a.PodCertificateRequests {
		log.Warn("the cluster does not serve " + certificatesV1 + " PodCertificateRequest (Kubernetes < 1.36, or the API is only beta): the podCertificate signer mayfly.dev/workload is off; CSI volumes, the Workload API and WorkloadCertificates work")
	}
	if !a.ClusterTrustBundles {
		log.Warn("the cluster does not serve " + certificatesV1 + " ClusterTrustBundle (Kubernetes < 1.36, or the API is only beta): the trust bundle is published in ConfigMaps only")
	}
	if reg == nil {
		return nil
	}
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "mayfly_ca_kubernetes_api_served",
		Help: "1 when the cluster serves the optional API the CA uses (certificates.k8s.io/v1 podcertificaterequests, clustertrustbundles), 0 when the delivery path is off.",
	}, []string{"api"})
	if err := reg.Register(g); err != nil {
		return fmt.Errorf("register metrics: %w", err)
	}
	g.WithLabelValues("podcertificaterequests").Set(b2f(a.PodCertificateRequests))
	g.WithLabelValues("clustertrustbundles").Set(b2f(a.ClusterTrustBundles))
	return nil
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// missing names the APIs the cluster does not serve.
func (a ClusterAPIs) missing() []string {
	var out []string
	if !a.PodCertificateRequests {
		out = append(out, "PodCertificateRequest (podCertificate volumes)")
	}
	if !a.ClusterTrustBundles {
		out = append(out, "ClusterTrustBundle (bundle in ConfigMaps only)")
	}
	return out
}
