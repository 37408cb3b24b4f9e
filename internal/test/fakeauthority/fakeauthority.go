// Package fakeauthority is a CA authority for the controller, issuer and
// agent tests: it hands out a settable *authority.Loaded (or an error) and
// signals its subscribers when it changes, as authority.Manager does.
package fakeauthority

import (
	"crypto/x509"
	"sync"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/test/testca"
)

// Authority implements Current and Subscribe.
type Authority struct {
	mu     sync.Mutex
	loaded *authority.Loaded
	err    error
	subs   map[chan struct{}]struct{}
	calls  int
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
	return &Authority{loaded: l, err: err, subs: map[chan struct{}]struct{}{}}
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
	ch := make(chan struct{}, 1)
	a.mu.Lock()
	a.subs[ch] = struct{}{}
	a.mu.Unlock()
	return ch, func() {
		a.mu.Lock()
		delete(a.subs, ch)
		a.mu.Unlock()
	}
}

// Set changes the state in force and signals the subscribers.
func (a *Authority) Set(l *authority.Loaded, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.loaded, a.err = l, err
	for ch := range a.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// Calls counts the calls of Current.
func (a *Authority) Calls() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.calls
}

// Subscribers counts the open subscriptions.
func (a *Authority) Subscribers() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.subs)
}
