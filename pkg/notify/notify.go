// Package notify is the one subscribe/notify fan-out of mayfly: a component
// whose state changes (the authority, the agent's bundle, one workload
// identity) signals every subscriber, coalescing signals a slow subscriber has
// not consumed yet. Subscribers then read the new state themselves, so a
// signal carries nothing and is never lost: at most one is pending.
package notify

import "sync"

// Notifier fans a change signal out to its subscribers. The zero value is
// ready to use; it must not be copied after first use.
type Notifier struct {
	mu   sync.Mutex
	subs map[chan struct{}]struct{}
}

// Subscribe returns a channel that receives a value after every Notify
// (coalesced), and a function that unsubscribes; calling it twice is safe.
func (n *Notifier) Subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	n.mu.Lock()
	if n.subs == nil {
		n.subs = map[chan struct{}]struct{}{}
	}
	n.subs[ch] = struct{}{}
	n.mu.Unlock()
	return ch, func() {
		n.mu.Lock()
		delete(n.subs, ch)
		n.mu.Unlock()
	}
}

// Notify signals every subscriber without blocking.
func (n *Notifier) Notify() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for ch := range n.subs {
		select {
		case ch <- struct{}{}:
		default: // a signal is already pending
		}
	}
}

// Len is the number of subscribers, for metrics and tests.
func (n *Notifier) Len() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.subs)
}
