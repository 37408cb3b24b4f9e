// Package fakeauthority is a CA authority for the controller, issuer and
// agent tests: it hands out a settable *authority.Loaded (or an error) and
// signals its subscribers when it changes, as authority.Manager does.
package fakeauthority

import (
	"crypto/x509"
	"sync"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/test/testca"
	"github.com/mayfly-pki/mayfly/pkg/notify"
)

// Authority implements Current and Subscribe.
type Authority struct {
	mu      sync.Mutex
	loaded  *authority.Loaded
	err     error
	calls   int
	changed notify.Notifier
}

// Loaded is the state of an authority whose intermediate is tca's, with
// the bundle roots (tca's root when none are given) at version.
func Loaded(tca *testca.CA, version string, roots ...*x509.Certificate) *authority.Loaded {
	if len(roots) == 0 {
		roots = tca.Bundle()
	}
	return &authority.Loaded{Authority: tca.Authority(), Bundle: roots, BundleVersion: version}
}

// New returns an authority in force with l, or failing with err.
func New(l *authority.Loaded, err error) *Authority {
	return &Authority{loaded: l, err: err}
}

// Current returns the state set last.
func (a *Authority) Current() (*authority.Loaded, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls++
	return a.loaded, a.err
}

// Subscribe signals after every Set (coalesced).
func (a *Authority) Subscribe() (<-chan struct{}, func()) {
	return a.changed.Subscribe()
}

// Set changes the state in force and signals the subscribers.
func (a *Authority) Set(l *authority.Loaded, err error) {
	a.mu.Lock()
	a.loaded, a.err = l, err
	a.mu.Unlock()
	a.changed.Notify()
}

// Calls counts the calls of Current.
func (a *Authority) Calls() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.calls
}

// Subscribers counts the open subscriptions.
func (a *Authority) Subscribers() int { return a.changed.Len() }
