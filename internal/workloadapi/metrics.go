package workloadapi

import (
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/status"
)

type metrics struct {
	requests    *prometheus.CounterVec
	attestation prometheus.Histogram
	connections prometheus.Gauge
	rejected    *prometheus.CounterVec
	// rejectedBy holds the series of rejected by reason, looked up once:
	// a flood increments them for every connection.
	rejectedBy map[string]prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mayfly_agent_workload_api_requests_total",
			Help: "Workload API calls and streams by method and gRPC code, counted when they end.",
		}, []string{"method", "code"}),
		attestation: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "mayfly_agent_attestation_duration_seconds",
			Help:    "Time taken to attest a Workload API caller.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 8), // 100µs .. 1.6s
		}),
		connections: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mayfly_agent_workload_api_connections",
			Help: "Workload API connections open, accepted within the connection limits.",
		}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mayfly_agent_workload_api_rejected_connections_total",
			Help: "Workload API connections closed at accept, by reason: max_connections, max_connections_per_uid, peer_credentials.",
		}, []string{"reason"}),
	}
	m.rejectedBy = map[string]prometheus.Counter{}
	for _, r := range []string{RejectTotal, RejectPerUID, RejectPeerCredentials} {
		m.rejectedBy[r] = m.rejected.WithLabelValues(r)
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.requests, m.attestation, m.connections, m.rejected} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// countRequest counts one ended call of fullMethod.
func (m *metrics) countRequest(fullMethod string, err error) {
	m.requests.WithLabelValues(methodName(fullMethod), status.Code(err).String()).Inc()
}
