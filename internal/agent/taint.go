package agent

import (
	"bytes"
	"context"
	"crypto/x509"
	"log/slog"
	"math/rand/v2"
	"time"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// maxTaintedKeyIDs bounds what a bundle may announce; a CA taints a
// handful of keys at most.
const maxTaintedKeyIDs = 64

// Taints are the authorities a bundle announces as tainted (ca taint): every
// credential chaining to one is re-issued within Window of receiving it.
type Taints struct {
	KeyIDs [][]byte
	Window time.Duration
}

// taintsOf reads the taint announcement of b, bounded.
func taintsOf(b *issuerv1.Bundle) Taints {
	var t Taints
	for _, id := range b.GetTaintedKeyIds() {
		if len(id) == 0 || len(id) > 64 || len(t.KeyIDs) == maxTaintedKeyIDs {
			continue
		}
		t.KeyIDs = append(t.KeyIDs, id)
	}
	if len(t.KeyIDs) > 0 {
		t.Window = max(time.Duration(min(b.GetReissueWindowSeconds(), int64(24*time.Hour/time.Second)))*time.Second, 0)
	}
	return t
}

// Chains reports whether chain holds a certificate of, or signed by, a
// tainted key.
func (t Taints) Chains(chain []*x509.Certificate) bool {
	for _, c := range chain {
		for _, id := range t.KeyIDs {
			if bytes.Equal(c.SubjectKeyId, id) || bytes.Equal(c.AuthorityKeyId, id) {
				return true
			}
		}
	}
	return false
}

// TaintSource gives the taints the bundle in force announces and signals
// each bundle change (BundleWatcher).
type TaintSource interface {
	Taints() Taints
	SubscribeBundle() (<-chan struct{}, func())
}

// Reissuer re-issues, after a bundle announced a taint, every identity of
// the node whose chain holds a tainted authority: each rotator is told to
// renew by a random point of the re-issue window (RenewBy), so that the
// nodes of a cluster do not all call the CA at once. It covers what the
// rotators hold: workload identities of the Manager (socket, CSI and
// writeDir alike) and the agent's own SVID.
type Reissuer struct {
	Bundle TaintSource
	// Rotators returns the rotators to check.
	Rotators func() []*rotate.Rotator
	Clock    rotate.Clock
	// Rand returns uniform numbers in [0,1) for the spread (nil:
	// math/rand/v2).
	Rand   func() float64
	Logger *slog.Logger
}

// Start checks the rotators after every bundle change until ctx is done.
func (r *Reissuer) Start(ctx context.Context) error {
	changes, unsubscribe := r.Bundle.SubscribeBundle()
	defer unsubscribe()
	for {
		r.Check()
		select {
		case <-ctx.Done():
			return nil
		case <-changes:
		}
	}
}

// Check schedules the re-issue of every rotator whose current chain holds
// a tainted authority, and returns how many it scheduled.
func (r *Reissuer) Check() int {
	t := r.Bundle.Taints()
	if len(t.KeyIDs) == 0 {
		return 0
	}
	rnd := r.Rand
	if rnd == nil {
		rnd = rand.Float64
	}
	clock := r.Clock
	if clock == nil {
		clock = rotate.RealClock{}
	}
	now := clock.Now()
	n := 0
	for _, rot := range r.Rotators() {
		cur := rot.Current()
		if cur == nil || !t.Chains(cur.Certificates) {
			continue
		}
		rot.RenewBy(now.Add(time.Duration(rnd() * float64(t.Window))))
		n++
	}
	if n > 0 && r.Logger != nil {
		r.Logger.Warn("re-issuing identities that chain to a tainted authority", "identities", n, "window", t.Window)
	}
	return n
}
