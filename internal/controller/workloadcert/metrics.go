package workloadcert

import "github.com/prometheus/client_golang/prometheus"

// Results of mayfly_ca_workloadcertificates_issued_total.
const (
	resultIssued = "issued"
	resultDenied = "denied"
	resultError  = "error"
)

type metrics struct {
	issued *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		issued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mayfly_ca_workloadcertificates_issued_total",
			Help: "Certificates the WorkloadCertificate controller decided on, by result: issued (written to the Secret), denied (invalid spec, missing ServiceAccount, Secret not owned), error (CA not ready, signing or writing failed).",
		}, []string{"result"}),
	}
	for _, r := range []string{resultIssued, resultDenied, resultError} {
		m.issued.WithLabelValues(r)
	}
	if reg != nil {
		if err := reg.Register(m.issued); err != nil {
			return nil, err
		}
	}
	return m, nil
}
