package issuer

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	issued *prometheus.CounterVec
	// issuedOK holds issued's "issued" counter per kind, looked up once.
	issuedOK      map[string]prometheus.Counter
	signDuration  prometheus.Histogram
	connected     prometheus.GaugeFunc
	currentBundle prometheus.GaugeFunc
	notAcked      prometheus.GaugeFunc
	// attestThrottled counts AttestAgent calls refused by the rate limits,
	// by scope (peer, global).
	attestThrottled *prometheus.CounterVec
}

// newMetrics registers the issuer's metrics; the agent gauges are computed
// on scrape from counts (AgentCounts) and notAcked (NotAckedAgents).
func newMetrics(reg prometheus.Registerer, counts func() (connected, current int), notAcked func() float64) *metrics {
	m := &metrics{
		issued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mayfly_ca_certificates_issued_total",
			Help: "Certificate requests decided by the issuer API, by kind (agent, workload, jwt: JWT-SVIDs) and result (issued, denied, error).",
		}, []string{"kind", "result"}),
		signDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "mayfly_ca_sign_duration_seconds",
			Help:    "Time to check and sign one certificate request, authorization included.",
			Buckets: []float64{0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1},
		}),
		connected: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "mayfly_ca_agents_connected",
			Help: "Agents holding a WatchBundle stream to this replica.",
		}, func() float64 { c, _ := counts(); return float64(c) }),
		currentBundle: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "mayfly_ca_agents_with_current_bundle",
			Help: "Connected agents that acknowledged the current trust bundle.",
		}, func() float64 { _, c := counts(); return float64(c) }),
		notAcked: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "mayfly_ca_agents_not_acked",
			Help: "Connected agents that have not acknowledged the current trust bundle within the ack grace (1m) after it was sent; they hold a root activation back until rotation.rootAckWait (ca status names them).",
		}, notAcked),
		attestThrottled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mayfly_ca_attest_throttled_total",
			Help: "AttestAgent calls refused with ResourceExhausted by the attestation rate limits, by scope (peer: one client IP, global: the whole server).",
		}, []string{"scope"}),
	}
	if reg != nil {
		reg.MustRegister(m.issued, m.signDuration, m.connected, m.currentBundle, m.notAcked, m.attestThrottled)
	}
	m.attestThrottled.WithLabelValues("peer")
	m.attestThrottled.WithLabelValues("global")
	m.issuedOK = map[string]prometheus.Counter{}
	for _, kind := range []string{"agent", "workload", "jwt"} {
		for _, result := range []string{"issued", "denied", "error"} {
			m.issued.WithLabelValues(kind, result)
		}
		m.issuedOK[kind] = m.issued.WithLabelValues(kind, "issued")
	}
	return m
}

// issuedOf returns the counter of certificates of kind issued.
func (m *metrics) issuedOf(kind string) prometheus.Counter {
	if c, ok := m.issuedOK[kind]; ok {
		return c
	}
	return m.issued.WithLabelValues(kind, "issued")
}
