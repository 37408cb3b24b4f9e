package pcr

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/types"

	"github.com/mayfly-pki/mayfly/internal/policy"
)

// podCacheLag is how long a pod that the signer has just issued for may be
// missing from the pod cache (it was found through the API server) before
// its series are dropped.
const podCacheLag = time.Minute

// sweepEvery spaces the sweeps of pods that are gone when no scrape does
// it, so that memory stays bounded by the live pods without Prometheus.
const sweepEvery = time.Minute

// podCredentials remembers, per pod, the last certificate the signer issued
// for it and exports its notBefore, notAfter and the beginRefreshAt the
// signer set, while the pod may still use it:
//
//   - with a pod cache (synced): while the pod exists, is not terminating
//     (the signer denies terminating pods, so no refresh can come) and has
//     not finished (phase Succeeded or Failed); a pod not in the cache yet
//     is kept for podCacheLag after the signing;
//   - without one (or before it synced): until the certificate has been
//     expired for one more lifetime.
//
// Series are checked at every scrape and every sweepEvery at a signing.
// With several podCertificate volumes of this signer in one pod, the series
// describe the one signed last. Only the replica running the signer (the
// leader) knows what it signed: after a change of leader, a pod's series
// come back at its next refresh.
type podCredentials struct {
	pods PodSource // nil: none
	now  func() time.Time

	notBefore, notAfter, refresh *prometheus.Desc

	mu        sync.Mutex
	byPod     map[types.NamespacedName]podCredential
	lastSweep time.Time
}

type podCredential struct {
	uid                          types.UID
	notBefore, notAfter, refresh time.Time
	signedAt                     time.Time
}

func newPodCredentials(pods PodSource, now func() time.Time) *podCredentials {
	labels := []string{"namespace", "pod"}
	return &podCredentials{
		pods: pods,
		now:  now,
		notBefore: prometheus.NewDesc("mayfly_ca_podcertificate_issued_timestamp_seconds",
			"notBefore of the last podCertificate the signer issued for each pod, as a Unix timestamp (exported by the leader while the pod runs).", labels, nil),
		notAfter: prometheus.NewDesc("mayfly_ca_podcertificate_expiry_timestamp_seconds",
			"notAfter of the last podCertificate the signer issued for each pod, as a Unix timestamp (exported by the leader while the pod runs).", labels, nil),
		refresh: prometheus.NewDesc("mayfly_ca_podcertificate_refresh_timestamp_seconds",
			"beginRefreshAt the signer set on the last podCertificate of each pod: when the kubelet should ask for the next one, as a Unix timestamp.", labels, nil),
		byPod: map[types.NamespacedName]podCredential{},
	}
}

// record remembers a certificate issued for the pod of (namespace, name,
// uid), replacing the pod's previous one.
func (c *podCredentials) record(namespace, name string, uid types.UID, notBefore, notAfter, refresh time.Time) {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.byPod[types.NamespacedName{Namespace: namespace, Name: name}] = podCredential{
		uid: uid, notBefore: notBefore, notAfter: notAfter, refresh: refresh, signedAt: now,
	}
	if now.Sub(c.lastSweep) >= sweepEvery {
		c.sweepLocked(now)
	}
}

// sweepLocked forgets the pods that cannot use their certificate any more.
func (c *podCredentials) sweepLocked(now time.Time) {
	c.lastSweep = now
	for k, cred := range c.byPod {
		if !c.live(cred, now) {
			delete(c.byPod, k)
		}
	}
}

func (c *podCredentials) live(cred podCredential, now time.Time) bool {
	if c.pods != nil {
		s, ok := c.pods.(interface{ HasSynced() bool })
		if !ok || s.HasSynced() {
			pod, found := c.pods.ByUID(string(cred.uid))
			if !found {
				return now.Sub(cred.signedAt) < podCacheLag
			}
			return policy.PodNotTerminated(&pod) == nil
		}
	}
	return now.Before(cred.notAfter.Add(cred.notAfter.Sub(cred.notBefore)))
}

// Describe implements prometheus.Collector.
func (c *podCredentials) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.notBefore
	ch <- c.notAfter
	ch <- c.refresh
}

// Collect implements prometheus.Collector: it sweeps, then exports the
// pods left.
func (c *podCredentials) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sweepLocked(c.now())
	for k, cred := range c.byPod {
		for _, s := range []struct {
			desc *prometheus.Desc
			at   time.Time
		}{{c.notBefore, cred.notBefore}, {c.notAfter, cred.notAfter}, {c.refresh, cred.refresh}} {
			ch <- prometheus.MustNewConstMetric(s.desc, prometheus.GaugeValue, float64(s.at.Unix()), k.Namespace, k.Name)
		}
	}
}
