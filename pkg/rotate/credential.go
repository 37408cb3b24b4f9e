package rotate

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// Credential is one X.509 identity: a certificate chain, its private key and
// the trust bundle to verify peers with. A Credential handed out by this
// package is shared; treat it as read-only.
type Credential struct {
	// Certificates is the chain, leaf first, then intermediates.
	Certificates []*x509.Certificate
	// Key is the private key of the leaf.
	Key crypto.Signer
	// Bundle holds the trust roots (and any other certificates the consumer
	// should trust).
	Bundle []*x509.Certificate
}

// ErrInvalidCredential is wrapped by the errors of [Credential.Validate].
var ErrInvalidCredential = errors.New("invalid credential")

// Leaf returns the first certificate, or nil.
func (c *Credential) Leaf() *x509.Certificate {
	if c == nil || len(c.Certificates) == 0 {
		return nil
	}
	return c.Certificates[0]
}

// Validity returns the validity window of the leaf, or the zero Validity when
// there is no leaf.
func (c *Credential) Validity() Validity {
	leaf := c.Leaf()
	if leaf == nil {
		return Validity{}
	}
	return Validity{NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter}
}

// Validate checks that the credential is usable: it has a leaf without nil
// entries in the chain, a private key, and that key belongs to the leaf.
// It does not check the validity window or the chain of trust.
func (c *Credential) Validate() error {
	if c == nil {
		return fmt.Errorf("%w: nil", ErrInvalidCredential)
	}
	if len(c.Certificates) == 0 {
		return fmt.Errorf("%w: no certificate", ErrInvalidCredential)
	}
	for i, cert := range c.Certificates {
		if cert == nil {
			return fmt.Errorf("%w: certificates[%d] is nil", ErrInvalidCredential, i)
		}
	}
	for i, cert := range c.Bundle {
		if cert == nil {
			return fmt.Errorf("%w: bundle[%d] is nil", ErrInvalidCredential, i)
		}
	}
	if c.Key == nil {
		return fmt.Errorf("%w: no private key", ErrInvalidCredential)
	}
	if !pki.KeyMatches(c.Certificates[0], c.Key) {
		return fmt.Errorf("%w: private key does not match the leaf certificate (serial %s)",
			ErrInvalidCredential, c.Certificates[0].SerialNumber)
	}
	return nil
}

// ObtainFunc obtains a fresh credential, typically by generating a key and
// having a CA sign it. It must return promptly once ctx is done.
type ObtainFunc func(ctx context.Context) (*Credential, error)

// Sink receives every new credential of an identity. Put may be called again
// with the same credential after a failure, so it must be idempotent. Put is
// never called concurrently by one [Rotator].
type Sink interface {
	Put(ctx context.Context, c *Credential) error
}

// SinkFunc adapts a function to [Sink].
type SinkFunc func(ctx context.Context, c *Credential) error

// Put calls f(ctx, c).
func (f SinkFunc) Put(ctx context.Context, c *Credential) error { return f(ctx, c) }

// MultiSink puts a credential to every sink in order, continuing past
// failures, and returns the failures joined. When one of its sinks fails, a
// [Rotator] retries the whole MultiSink, so its sinks must be idempotent.
type MultiSink []Sink

// Put puts c to every sink and joins their errors.
func (m MultiSink) Put(ctx context.Context, c *Credential) error {
	var errs []error
	for i, s := range m {
		if err := s.Put(ctx, c); err != nil {
			errs = append(errs, fmt.Errorf("sink %d: %w", i, err))
		}
	}
	return errors.Join(errs...)
}
