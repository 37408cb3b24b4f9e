package eviction

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"time"

	"github.com/mayfly-pki/mayfly/pkg/notify"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// DefaultPollInterval is how often a Source reads its store: an eviction
// takes effect on every replica within it.
const DefaultPollInterval = 10 * time.Second

// Source holds the eviction list of a store as last read, and tells
// subscribers when it changes.
type Source struct {
	store  Store
	logger *slog.Logger

	mu     sync.Mutex
	list   List
	loaded bool
	err    error
	notify notify.Notifier
}

// NewSource returns a source of store; List fails until the first
// successful Refresh.
func NewSource(store Store, logger *slog.Logger) *Source {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Source{store: store, logger: logger, list: List{}}
}

// List returns the list as last read. When the store could not be read, it
// keeps the last list read (an eviction once seen is never forgotten
// because of a read error); before the first successful read it fails, so
// that agents are refused rather than an eviction missed.
func (s *Source) List() (List, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.loaded {
		if s.err != nil {
			return nil, fmt.Errorf("%w: %w", ErrNotLoaded, s.err)
		}
		return nil, ErrNotLoaded
	}
	return s.list, nil
}

// ErrNotLoaded is returned by List before the store was read once.
var ErrNotLoaded = errors.New("the agent evictions have not been read yet; agents are refused until they are")

// Subscribe returns a channel signalled after every change of the list.
func (s *Source) Subscribe() (<-chan struct{}, func()) { return s.notify.Subscribe() }

// Refresh reads the store and notifies subscribers if the list changed.
func (s *Source) Refresh(ctx context.Context) error {
	l, err := s.store.Load(ctx)
	s.mu.Lock()
	prevErr, first := s.err, !s.loaded
	s.err = err
	changed := err == nil && (first || !maps.Equal(l, s.list))
	if changed {
		s.list, s.loaded = l, true
	}
	s.mu.Unlock()
	switch {
	case err != nil && (prevErr == nil || prevErr.Error() != err.Error()):
		s.logger.Error("cannot read the agent evictions; keeping the last list read", "store", s.store.Describe(), "error", err)
	case changed:
		if !first || len(l) > 0 {
			s.logger.Info("agent evictions changed", "store", s.store.Describe(), "evicted_nodes", len(l))
		}
		s.notify.Notify()
	}
	return err
}

// Run refreshes the list every interval until ctx is done.
func (s *Source) Run(ctx context.Context, clock rotate.Clock, interval time.Duration) error {
	for {
		_ = s.Refresh(ctx)
		if !rotate.Sleep(ctx, clock, interval, nil) {
			return nil
		}
	}
}
