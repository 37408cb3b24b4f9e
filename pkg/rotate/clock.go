package rotate

import (
	"context"
	"time"
)

// Clock is the source of time of a [Rotator]. [RealClock] is the wall clock;
// [FakeClock] is driven by tests.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// NewTimer returns a timer that fires once after d.
	NewTimer(d time.Duration) Timer
}

// Timer is a one-shot timer created by a [Clock].
type Timer interface {
	// C returns the channel that receives the time when the timer fires.
	C() <-chan time.Time
	// Stop prevents the timer from firing; it reports whether it stopped it.
	Stop() bool
}

// NewTimerAt returns a timer of c that fires when c's time reaches at. A
// clock that can arm a timer at a deadline (as [FakeClock] does) is asked
// for one directly; otherwise the duration is taken from c.Now() at the
// call. Loops that decide on a deadline and then sleep use it: with a
// duration computed from an earlier Now, a test that moves a fake clock
// between the two would see the timer armed late.
func NewTimerAt(c Clock, at time.Time) Timer {
	if dc, ok := c.(interface{ NewTimerAt(time.Time) Timer }); ok {
		return dc.NewTimerAt(at)
	}
	return c.NewTimer(at.Sub(c.Now()))
}

// Sleep waits d on c, the wait of every loop that pauses between rounds or
// attempts. It returns early when wake receives (a nil wake never does),
// and reports false when ctx is done first: the caller stops.
func Sleep(ctx context.Context, c Clock, d time.Duration, wake <-chan struct{}) bool {
	t := c.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C():
	case <-wake:
	}
	return true
}

// RealClock is the [Clock] of package time.
type RealClock struct{}

// Now returns time.Now().
func (RealClock) Now() time.Time { return time.Now() }

// NewTimer returns a time.Timer wrapped as a [Timer].
func (RealClock) NewTimer(d time.Duration) Timer { return realTimer{time.NewTimer(d)} }

type realTimer struct{ t *time.Timer }

func (t realTimer) C() <-chan time.Time { return t.t.C }
func (t realTimer) Stop() bool          { return t.t.Stop() }
