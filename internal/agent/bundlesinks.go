package agent

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"sync"

	"github.com/mayfly-pki/mayfly/pkg/notify"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// BundleTarget is a part of the agent that hands the trust bundle to
// workloads (Manager: the file sinks; WorkloadSource: the Workload API
// streams). BundleWatcher acknowledges a bundle to the CA only once every
// target delivered it.
type BundleTarget interface {
	// DeliverBundle makes every place the target keeps hold roots, waiting
	// up to ctx for those it cannot write itself. It returns how many
	// places do not hold roots yet, and why.
	DeliverBundle(ctx context.Context, roots []*x509.Certificate) (pending int, err error)
}

// BundleSink is a sink that can replace the trust bundle it holds without
// a new credential (rotate.FileSink, a CSI volume). A sink that was never
// written to returns an error wrapping fs.ErrNotExist.
type BundleSink interface {
	PutBundle(ctx context.Context, roots []*x509.Certificate) error
}

// bundledSink wraps every sink of the Manager so that the trust bundle a
// file consumer reads follows the bundle in force, not the leaf rotations:
// Put writes a credential with the bundle in force when it writes (a
// credential carries the bundle of when it was obtained, which a bundle
// change since may have replaced), and putBundle replaces the bundle alone.
// Both hold mu, so whichever writes last writes the bundle in force.
type bundledSink struct {
	sink   rotate.Sink
	bundle BundleSource

	mu sync.Mutex
	// held is the bundle the sink last accepted, nil before that.
	held []*x509.Certificate
}

func (s *bundledSink) Put(ctx context.Context, c *rotate.Credential) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	roots, _ := s.bundle.Bundle()
	if !sameRoots(c.Bundle, roots) {
		withRoots := *c
		withRoots.Bundle = roots
		c = &withRoots
	}
	if err := s.sink.Put(ctx, c); err != nil {
		return err
	}
	s.held = roots
	return nil
}

// putBundle makes the sink hold roots. A sink without PutBundle, or one
// that holds no files (never written, or removed), has no bundle that
// could be stale: it gets roots with its next credential.
func (s *bundledSink) putBundle(ctx context.Context, roots []*x509.Certificate) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.held != nil && sameRoots(s.held, roots) {
		return nil
	}
	bs, ok := s.sink.(BundleSink)
	if !ok {
		return nil
	}
	if err := bs.PutBundle(ctx, roots); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	s.held = roots
	return nil
}

// sameRoots reports whether a and b hold the same certificates in the same
// order.
func sameRoots(a, b []*x509.Certificate) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] && !bytes.Equal(a[i].Raw, b[i].Raw) {
			return false
		}
	}
	return true
}

// sinkSet is the Manager's set of wrapped sinks.
type sinkSet struct {
	sinks notify.Set[*bundledSink]
}

// wrap returns s wrapped and registered, and the function that forgets it.
func (x *sinkSet) wrap(s rotate.Sink, bundle BundleSource) (*bundledSink, func()) {
	b := &bundledSink{sink: s, bundle: bundle}
	return b, x.sinks.Add(b)
}

// deliver puts roots to every sink, continuing past failures.
func (x *sinkSet) deliver(ctx context.Context, roots []*x509.Certificate) (int, error) {
	all := x.sinks.All()
	pending := 0
	var errs []error
	for _, s := range all {
		if err := s.putBundle(ctx, roots); err != nil {
			pending++
			errs = append(errs, err)
		}
	}
	if pending > 0 {
		return pending, fmt.Errorf("%d of %d certificate directories do not hold the trust bundle: %w", pending, len(all), errors.Join(errs...))
	}
	return 0, nil
}
