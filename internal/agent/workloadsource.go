package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mayfly-pki/mayfly/internal/workloadapi"
	"github.com/mayfly-pki/mayfly/internal/workloadattest"
	"github.com/mayfly-pki/mayfly/pkg/notify"
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
//
// It also follows which trust bundle each open stream was sent, so that
// the agent acknowledges a bundle to the CA only once every stream was
// sent it (DeliverBundle). A stream is known from its first Identities
// call that returned a bundle (by its context) until its context ends; it
// holds a bundle once the last bundle it read from Identities is that one
// and so is the last response it handed to gRPC Send (Sent). A stream
// still waiting for its first identity has read nothing and holds nothing
// back: it reads the bundle in force when its identity comes.
type WorkloadSource struct {
	Manager      *Manager
	Bundle       BundleFeed
	TrustDomain  spiffeid.TrustDomain
	Entitlements Entitlements
	// JWT obtains and caches JWT-SVIDs, and JWTKeys gives the JWT bundle
	// (BundleWatcher, whose changes Bundle signals); nil serves none
	// (Unimplemented).
	JWT     *JWTCache
	JWTKeys JWTKeySource

	mu sync.Mutex
	// streams by their context's Done channel, which is one per stream.
	streams map[<-chan struct{}]*streamBundles
	// synced signals every change of streams.
	synced notify.Notifier
}

// streamBundles is what one stream read and sent of the trust domain's
// bundle.
type streamBundles struct {
	read, sent []*x509.Certificate
}

var (
	_ workloadapi.Source       = (*WorkloadSource)(nil)
	_ workloadapi.SendObserver = (*WorkloadSource)(nil)
	_ BundleTarget             = (*WorkloadSource)(nil)
)

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
			s.record(ctx, func(b *streamBundles) { b.read = roots })
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

// Sent records that the stream of ctx handed a response carrying bundles
// to gRPC Send.
func (s *WorkloadSource) Sent(ctx context.Context, bundles map[spiffeid.TrustDomain][]*x509.Certificate) {
	roots := bundles[s.TrustDomain]
	s.record(ctx, func(b *streamBundles) { b.sent = roots })
}

// record updates what the stream of ctx read or sent, starting to follow
// it if new. A context that never ends is no stream.
func (s *WorkloadSource) record(ctx context.Context, update func(*streamBundles)) {
	key := ctx.Done()
	if key == nil {
		return
	}
	s.mu.Lock()
	b, ok := s.streams[key]
	if !ok {
		if s.streams == nil {
			s.streams = map[<-chan struct{}]*streamBundles{}
		}
		b = &streamBundles{}
		s.streams[key] = b
		context.AfterFunc(ctx, func() {
			s.mu.Lock()
			delete(s.streams, key)
			s.mu.Unlock()
			s.synced.Notify()
		})
	}
	update(b)
	s.mu.Unlock()
	s.synced.Notify()
}

// DeliverBundle waits up to ctx until every open stream was sent roots
// (the streams are signalled by the bundle change itself, Subscribe). It
// returns how many streams were not, when ctx ends first.
func (s *WorkloadSource) DeliverBundle(ctx context.Context, roots []*x509.Certificate) (int, error) {
	for {
		changed, unsubscribe := s.synced.Subscribe()
		behind, total := s.behind(roots)
		if behind == 0 {
			unsubscribe()
			return 0, nil
		}
		select {
		case <-changed:
			unsubscribe()
		case <-ctx.Done():
			unsubscribe()
			return behind, fmt.Errorf("%d of %d Workload API streams were not sent the trust bundle yet", behind, total)
		}
	}
}

// behind counts the streams that do not hold roots, of total.
func (s *WorkloadSource) behind(roots []*x509.Certificate) (behind, total int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, b := range s.streams {
		if !sameRoots(b.read, roots) || (b.sent != nil && !sameRoots(b.sent, roots)) {
			behind++
		}
	}
	return behind, len(s.streams)
}
