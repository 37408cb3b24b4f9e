package agent

import (
	"context"
	"crypto/x509"
	"errors"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mayfly-pki/mayfly/internal/workloadapi"
	"github.com/mayfly-pki/mayfly/internal/workloadattest"
)

// Entitlements say which identities an attested process gets
// (Registrations standalone, PodIdentities in Kubernetes).
type Entitlements interface {
	// Hold returns the identities of the process sel and a release func:
	// the process counts as running on this node until release.
	Hold(sel workloadattest.Selectors) (specs []Spec, release func())
}

// BundleFeed gives the trust bundle in force and signals its changes
// (BundleWatcher).
type BundleFeed interface {
	BundleSource
	SubscribeBundle() (<-chan struct{}, func())
}

// WorkloadSource is the Workload API's view of the Manager: a caller's
// identities, obtained directly on its first request, and their changes.
type WorkloadSource struct {
	Manager      *Manager
	Bundle       BundleFeed
	TrustDomain  spiffeid.TrustDomain
	Entitlements Entitlements
}

var _ workloadapi.Source = (*WorkloadSource)(nil)

func (s *WorkloadSource) hold(c workloadapi.Caller) ([]Spec, func()) {
	sel, ok := c.(workloadattest.Selectors)
	if !ok {
		return nil, func() {}
	}
	return s.Entitlements.Hold(sel)
}

// Identities returns the caller's identities that are issued once each had
// its first attempt: one the CA refuses does not hold up the others (it is
// in the log, and pushed on the open streams if it comes later). When none
// is issued yet (a new pod the CA has not seen, the CA down) it waits for
// the first while the agent retries.
func (s *WorkloadSource) Identities(ctx context.Context, c workloadapi.Caller) ([]workloadapi.Identity, map[spiffeid.TrustDomain][]*x509.Certificate, error) {
	specs, release := s.hold(c)
	defer release()
	for {
		creds, err := s.Manager.ObtainAll(ctx, specs)
		if err != nil {
			return nil, nil, err
		}
		if len(creds) > 0 || len(specs) == 0 {
			out := make([]workloadapi.Identity, 0, len(creds))
			for _, cred := range creds {
				leaf := cred.Leaf()
				if len(leaf.URIs) != 1 {
					return nil, nil, errors.New("an issued SVID has no single URI SAN")
				}
				id, err := spiffeid.FromURI(leaf.URIs[0])
				if err != nil {
					return nil, nil, err
				}
				out = append(out, workloadapi.Identity{ID: id, Chain: cred.Certificates, Key: cred.Key})
			}
			roots, _ := s.Bundle.Bundle()
			return out, map[spiffeid.TrustDomain][]*x509.Certificate{s.TrustDomain: roots}, nil
		}
		if err := s.Manager.WaitAnyReady(ctx, specs); err != nil {
			return nil, nil, err
		}
	}
}

// Subscribe signals after each change of the caller's identities or the
// bundle; the caller holds its identities until cancel.
func (s *WorkloadSource) Subscribe(c workloadapi.Caller) (<-chan struct{}, func()) {
	out := make(chan struct{}, 1)
	done := make(chan struct{})
	forward := func(ch <-chan struct{}) {
		for {
			select {
			case <-done:
				return
			case <-ch:
				select {
				case out <- struct{}{}:
				default:
				}
			}
		}
	}
	specs, release := s.hold(c)
	cancels := []func(){release}
	for _, spec := range specs {
		// Identities are created on first use: make sure the one
		// subscribed to exists, or its rotations are never pushed.
		s.Manager.Ensure(spec)
		ch, cancel := s.Manager.Subscribe(spec.Key)
		cancels = append(cancels, cancel)
		go forward(ch)
	}
	bch, bcancel := s.Bundle.SubscribeBundle()
	cancels = append(cancels, bcancel)
	go forward(bch)
	return out, func() {
		close(done)
		for _, cancel := range cancels {
			cancel()
		}
	}
}
