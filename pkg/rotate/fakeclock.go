package rotate

import (
	"context"
	"sync"
	"time"
)

// FakeClock is a [Clock] for tests: time moves only when the test calls
// [FakeClock.Advance] or [FakeClock.Set], and [FakeClock.BlockUntil] tells the
// test that the code under test is waiting on a timer, so no test needs to
// sleep. It is safe for concurrent use.
type FakeClock struct {
	mu      sync.Mutex
	now     time.Time
	timers  []*fakeTimer  // pending timers, in creation order
	changed chan struct{} // closed and replaced whenever timers changes
}

// NewFakeClock returns a FakeClock set to t.
func NewFakeClock(t time.Time) *FakeClock {
	return &FakeClock{now: t, changed: make(chan struct{})}
}

// Now returns the fake current time.
func (c *FakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// NewTimer returns a timer that fires when the fake time reaches Now()+d.
// A timer with d ≤ 0 fires at once.
func (c *FakeClock) NewTimer(d time.Duration) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.newTimerLocked(c.now.Add(d))
}

// NewTimerAt returns a timer that fires when the fake time reaches at
// (at once when it already has); see [NewTimerAt].
func (c *FakeClock) NewTimerAt(at time.Time) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.newTimerLocked(at)
}

func (c *FakeClock) newTimerLocked(at time.Time) Timer {
	t := &fakeTimer{clock: c, at: at, ch: make(chan time.Time, 1)}
	if !at.After(c.now) {
		t.ch <- c.now
		return t
	}
	c.timers = append(c.timers, t)
	c.notifyLocked()
	return t
}

// Advance moves the fake time forward by d and fires every timer that is due,
// in order of their deadlines.
func (c *FakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.setLocked(c.now.Add(d))
}

// Set moves the fake time to t (forward or backward) and fires every timer
// that is due.
func (c *FakeClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.setLocked(t)
}

// Waiters returns the number of timers that are pending (created, neither
// fired nor stopped).
func (c *FakeClock) Waiters() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

// NextDeadline returns the earliest deadline of the pending timers, and false
// when there is none.
func (c *FakeClock) NextDeadline() (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.timers) == 0 {
		return time.Time{}, false
	}
	first := c.timers[0].at
	for _, t := range c.timers[1:] {
		if t.at.Before(first) {
			first = t.at
		}
	}
	return first, true
}

// TimersAt returns how many pending timers fire at t: a test that waits
// for its loops to re-arm their timers asks for that deadline, whatever
// other loops on the same clock wait for.
func (c *FakeClock) TimersAt(t time.Time) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, ft := range c.timers {
		if ft.at.Equal(t) {
			n++
		}
	}
	return n
}

// BlockUntil blocks until at least n timers are pending.
func (c *FakeClock) BlockUntil(n int) {
	_ = c.BlockUntilContext(context.Background(), n)
}

// BlockUntilContext blocks until at least n timers are pending, or ctx is
// done, in which case it returns ctx.Err().
func (c *FakeClock) BlockUntilContext(ctx context.Context, n int) error {
	for {
		c.mu.Lock()
		if len(c.timers) >= n {
			c.mu.Unlock()
			return nil
		}
		changed := c.changed
		c.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (c *FakeClock) setLocked(t time.Time) {
	c.now = t
	for {
		// Fire the earliest due timer first, one at a time.
		idx := -1
		for i, tm := range c.timers {
			if !tm.at.After(t) && (idx < 0 || tm.at.Before(c.timers[idx].at)) {
				idx = i
			}
		}
		if idx < 0 {
			return
		}
		tm := c.timers[idx]
		c.removeLocked(idx)
		tm.ch <- t // buffered 1, and each timer fires at most once
	}
}

func (c *FakeClock) removeLocked(i int) {
	c.timers = append(c.timers[:i], c.timers[i+1:]...)
	c.notifyLocked()
}

func (c *FakeClock) notifyLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

type fakeTimer struct {
	clock *FakeClock
	at    time.Time
	ch    chan time.Time
}

func (t *fakeTimer) C() <-chan time.Time { return t.ch }

func (t *fakeTimer) Stop() bool {
	c := t.clock
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, tm := range c.timers {
		if tm == t {
			c.removeLocked(i)
			return true
		}
	}
	return false
}
