// Package notify is the one subscribe/notify fan-out of mayfly: a component
// whose state changes (the authority, the agent's bundle, one workload
// identity) signals every subscriber, coalescing signals a slow subscriber has
// not consumed yet. Subscribers then read the new state themselves, so a
// signal carries nothing and is never lost: at most one is pending.
//
// Set is the subscriber set behind Notifier, for a fan-out that must call
// each subscriber and hear back (the agent's bundle sinks).
package notify

import (
	"maps"
	"slices"
	"sync"
)

// Notifier fans a change signal out to its subscribers. The zero value is
// ready to use; it must not be copied after first use.
type Notifier struct {
	subs Set[chan struct{}]
}

// Subscribe returns a channel that receives a value after every Notify
// (coalesced), and a function that unsubscribes; calling it twice is safe.
func (n *Notifier) Subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	return ch, n.subs.Add(ch)
}

// Notify signals every subscriber without blocking.
func (n *Notifier) Notify() {
	n.subs.each(func(ch chan struct{}) {
		select {
		case ch <- struct{}{}:
		default: // a signal is already pending
		}
	})
}

// Len is the number of subscribers, for metrics and tests.
func (n *Notifier) Len() int { return n.subs.Len() }

// Set is a set of subscribers that may come and go concurrently: Add
// returns the function that removes what it added. The zero value is ready
// to use; it must not be copied after first use.
type Set[T comparable] struct {
	mu      sync.Mutex
	members map[T]struct{}
}

// Add adds v and returns the function that removes it; calling that twice
// is safe. Members are distinct values (channels, pointers): v added twice
// is one member, which either removal removes.
func (s *Set[T]) Add(v T) (remove func()) {
	s.mu.Lock()
	if s.members == nil {
		s.members = map[T]struct{}{}
	}
	s.members[v] = struct{}{}
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		delete(s.members, v)
		s.mu.Unlock()
	}
}

// All returns the members at the time of the call, in no particular
// order; the caller may take its time with them without holding up Add or
// a removal.
func (s *Set[T]) All() []T {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Collect(maps.Keys(s.members))
}

// Len is the number of members.
func (s *Set[T]) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.members)
}

// each calls f on every member with the set locked, so that no member is
// called after its removal returned; f must not block.
func (s *Set[T]) each(f func(T)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for v := range s.members {
		f(v)
	}
}
