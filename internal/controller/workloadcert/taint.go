package workloadcert

import (
	"bytes"
	"crypto/x509"
	"encoding/hex"
	"hash/fnv"
	"sync"
	"time"

	mayflyv1alpha1 "github.com/mayfly-pki/mayfly/api/mayfly/v1alpha1"
	"github.com/mayfly-pki/mayfly/internal/authority"
)

// renewTainted: the certificate chains to an authority the CA tainted (ca
// taint), and its point in the re-issue window passed.
const renewTainted renewReason = "AuthorityTainted"

// taintSeen remembers when this process first saw each announced taint:
// the re-issue window runs from then (per process; a restart only delays).
type taintSeen struct {
	mu   sync.Mutex
	seen map[string]time.Time
}

func (s *taintSeen) since(keyID []byte, now time.Time) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.seen == nil {
		s.seen = map[string]time.Time{}
	}
	k := hex.EncodeToString(keyID)
	t, ok := s.seen[k]
	if !ok {
		t = now
		s.seen[k] = t
	}
	return t
}

// taintDeadline returns when the Secret of wc, holding leaf and chain,
// must be re-issued because its chain holds a tainted authority, and false
// when it does not. Each object gets a fixed point of the window (a hash
// of its UID), so that the Secrets of a cluster are spread over it.
func (r *Reconciler) taintDeadline(l *authority.Loaded, wc *mayflyv1alpha1.WorkloadCertificate, leaf *x509.Certificate, chain []*x509.Certificate, now time.Time) (time.Time, bool) {
	var first time.Time
	found := false
	for _, t := range l.Taints {
		for _, c := range append([]*x509.Certificate{leaf}, chain...) {
			if bytes.Equal(c.AuthorityKeyId, t.SubjectKeyID) || bytes.Equal(c.SubjectKeyId, t.SubjectKeyID) {
				since := r.taints.since(t.SubjectKeyID, now)
				if !found || since.Before(first) {
					first = since
				}
				found = true
			}
		}
	}
	if !found {
		return time.Time{}, false
	}
	h := fnv.New64a()
	h.Write([]byte(wc.UID))
	h.Write([]byte(wc.Namespace + "/" + wc.Name))
	frac := float64(h.Sum64()>>11) / float64(1<<53)
	return first.Add(time.Duration(frac * float64(l.TaintReissueWindow))).Truncate(time.Second), true
}
