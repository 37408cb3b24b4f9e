package workloadcert

import (
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/types"

	mayflyv1alpha1 "github.com/mayfly-pki/mayfly/api/mayfly/v1alpha1"
)

// Results of mayfly_ca_workloadcertificates_issued_total.
const (
	resultIssued = "issued"
	resultDenied = "denied"
	resultError  = "error"
)

type metrics struct {
	issued *prometheus.CounterVec
	// notBefore and notAfter of the certificate each WorkloadCertificate's
	// Secret holds, by namespace and name of the WorkloadCertificate.
	notBefore, notAfter *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		issued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mayfly_ca_workloadcertificates_issued_total",
			Help: "Certificates the WorkloadCertificate controller decided on, by result: issued (written to the Secret), denied (invalid spec, missing ServiceAccount, Secret not owned), error (CA not ready, signing or writing failed).",
		}, []string{"result"}),
		notBefore: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mayfly_ca_workloadcertificate_issued_timestamp_seconds",
			Help: "notBefore of the certificate in each WorkloadCertificate's Secret, as a Unix timestamp (exported by the replica that reconciles: the leader).",
		}, []string{"namespace", "name"}),
		notAfter: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mayfly_ca_workloadcertificate_expiry_timestamp_seconds",
			Help: "notAfter of the certificate in each WorkloadCertificate's Secret, as a Unix timestamp (exported by the replica that reconciles: the leader).",
		}, []string{"namespace", "name"}),
	}
	for _, r := range []string{resultIssued, resultDenied, resultError} {
		m.issued.WithLabelValues(r)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.issued, m.notBefore, m.notAfter} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// observe exports the validity of the certificate wc's Secret holds, as
// its status records it: ready sets status.notBefore/notAfter from the
// certificate it found in or wrote to the Secret, and nothing else changes
// them, so on the other paths (invalid spec, CA not ready, ...) the status
// still describes the Secret, which the controller then leaves alone.
// Before a first certificate there is nothing to export.
func (m *metrics) observe(wc *mayflyv1alpha1.WorkloadCertificate) {
	st := &wc.Status
	if st.NotBefore == nil || st.NotAfter == nil {
		return
	}
	m.notBefore.WithLabelValues(wc.Namespace, wc.Name).Set(float64(st.NotBefore.Unix()))
	m.notAfter.WithLabelValues(wc.Namespace, wc.Name).Set(float64(st.NotAfter.Unix()))
}

// forget drops the series of a WorkloadCertificate that is gone or going.
func (m *metrics) forget(key types.NamespacedName) {
	m.notBefore.DeleteLabelValues(key.Namespace, key.Name)
	m.notAfter.DeleteLabelValues(key.Namespace, key.Name)
}
