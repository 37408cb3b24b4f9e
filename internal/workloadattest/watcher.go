package workloadattest

import (
	"context"
	"crypto/sha256"
	"fmt"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mayfly-pki/mayfly/pkg/readlimit"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// RegistrationWatcher keeps the registrations of a file current: it polls
// the file every Interval and reparses it when its content changed (its
// SHA-256 differs; size and mtime alone miss same-second edits). An invalid
// or unreadable file keeps the last good set in force and is reported
// through OnError and [RegistrationWatcher.LastError]; the next good file
// clears the error.
type RegistrationWatcher struct {
	path     string
	td       spiffeid.TrustDomain
	interval time.Duration
	clock    rotate.Clock

	// OnChange, when set, is called from the Start goroutine with each new
	// good set. OnError, when set, is called with each failed reload.
	OnChange func([]Registration)
	OnError  func(error)

	mu        sync.Mutex
	regs      []Registration
	seen      [sha256.Size]byte // content last parsed, good or bad
	seenValid bool
	lastErr   error
}

// NewRegistrationWatcher loads the file at path, and fails when the first
// load fails: the agent does not start without registrations. interval is
// the poll period; clock is rotate.RealClock{} outside tests.
func NewRegistrationWatcher(path string, td spiffeid.TrustDomain, interval time.Duration, clock rotate.Clock) (*RegistrationWatcher, error) {
	if interval <= 0 {
		return nil, fmt.Errorf("registrations watcher: interval %s must be positive", interval)
	}
	w := &RegistrationWatcher{path: path, td: td, interval: interval, clock: clock}
	data, err := readRegistrations(path)
	if err != nil {
		return nil, err
	}
	regs, err := ParseRegistrations(data, td)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	w.regs, w.seen, w.seenValid = regs, sha256.Sum256(data), true
	return w, nil
}

// Registrations returns the current good set. The caller must not modify it.
func (w *RegistrationWatcher) Registrations() []Registration {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.regs
}

// LastError returns the error of the last reload, nil when the file in force
// is the one on disk.
func (w *RegistrationWatcher) LastError() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lastErr
}

// Start polls the file until ctx is done.
func (w *RegistrationWatcher) Start(ctx context.Context) error {
	for rotate.Sleep(ctx, w.clock, w.interval, nil) {
		w.reload()
	}
	return nil
}

// reload checks the file once. Content already seen (good or bad) is not
// parsed or reported again; a read error is reported at every poll.
func (w *RegistrationWatcher) reload() {
	data, readErr := readRegistrations(w.path)
	err := readErr
	var regs []Registration
	sum := sha256.Sum256(data)
	if err == nil {
		w.mu.Lock()
		seen := w.seenValid && sum == w.seen
		w.mu.Unlock()
		if seen {
			return
		}
		regs, err = ParseRegistrations(data, w.td)
		if err != nil {
			err = fmt.Errorf("%s: %w (keeping the last good registrations)", w.path, err)
		}
	}
	w.mu.Lock()
	switch {
	case readErr != nil: // unreadable: read again next time
		w.seenValid, w.lastErr = false, err
	case err != nil:
		w.seen, w.seenValid, w.lastErr = sum, true, err
	default:
		w.regs, w.seen, w.seenValid, w.lastErr = regs, sum, true, nil
	}
	w.mu.Unlock()
	switch {
	case err != nil && w.OnError != nil:
		w.OnError(err)
	case err == nil && w.OnChange != nil:
		w.OnChange(regs)
	}
}

// readRegistrations reads the registrations file; errors name it.
func readRegistrations(path string) ([]byte, error) {
	data, err := readlimit.File(path, MaxRegistrationsFileSize)
	if err != nil {
		return nil, fmt.Errorf("registrations: %w", err)
	}
	return data, nil
}
