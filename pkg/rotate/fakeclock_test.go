package rotate

import (
	"context"
	"testing"
	"time"
)

func TestFakeClock(t *testing.T) {
	t.Run("fires_due_timers_in_deadline_order", func(t *testing.T) {
		c := NewFakeClock(t0)
		late, early := c.NewTimer(2*time.Second), c.NewTimer(time.Second)
		if c.Waiters() != 2 {
			t.Fatalf("Waiters() = %d, want 2", c.Waiters())
		}
		if at, ok := c.NextDeadline(); !ok || !at.Equal(t0.Add(time.Second)) {
			t.Fatalf("NextDeadline() = %v, %v", at, ok)
		}
		c.Advance(999 * time.Millisecond)
		select {
		case <-early.C():
			t.Fatal("timer fired early")
		default:
		}
		c.Advance(5 * time.Second)
		if got := <-early.C(); !got.Equal(t0.Add(5999 * time.Millisecond)) {
			t.Errorf("early fired with %v", got)
		}
		<-late.C()
		if c.Waiters() != 0 || late.Stop() {
			t.Error("fired timers must not stay pending nor be stoppable")
		}
	})
	t.Run("non_positive_duration_fires_at_once", func(t *testing.T) {
		c := NewFakeClock(t0)
		select {
		case <-c.NewTimer(0).C():
		default:
			t.Fatal("timer with d=0 did not fire")
		}
		if c.Waiters() != 0 {
			t.Fatal("fired timer pending")
		}
	})
	t.Run("stopped_timer_never_fires", func(t *testing.T) {
		c := NewFakeClock(t0)
		tm := c.NewTimer(time.Second)
		if !tm.Stop() || tm.Stop() {
			t.Fatal("Stop() must report true once")
		}
		c.Advance(time.Hour)
		select {
		case <-tm.C():
			t.Fatal("stopped timer fired")
		default:
		}
	})
	t.Run("block_until_returns_when_enough_timers_wait", func(t *testing.T) {
		c := NewFakeClock(t0)
		go func() {
			c.NewTimer(time.Second)
			c.NewTimer(time.Second)
		}()
		if err := c.BlockUntilContext(testContext(t), 2); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := c.BlockUntilContext(ctx, 3); err == nil {
			t.Fatal("BlockUntilContext(canceled, 3) = nil, want an error")
		}
	})
	t.Run("set_moves_backward_without_firing", func(t *testing.T) {
		c := NewFakeClock(t0)
		tm := c.NewTimer(time.Second)
		c.Set(t0.Add(-time.Hour))
		if !c.Now().Equal(t0.Add(-time.Hour)) || c.Waiters() != 1 {
			t.Fatal("Set backward must move time and keep the timer")
		}
		tm.Stop()
	})
}

func TestRealClock(t *testing.T) {
	var c Clock = RealClock{}
	tm := c.NewTimer(time.Hour)
	if !tm.Stop() {
		t.Fatal("Stop() = false for a pending timer")
	}
	if c.Now().IsZero() {
		t.Fatal("Now() is zero")
	}
}

// TestNewTimerAt: a deadline is kept even when the clock moved between the
// caller's decision and arming the timer (the race that left a rotator
// asleep past its deadline while a test waited for it).
func TestNewTimerAt(t *testing.T) {
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	clk := NewFakeClock(start)
	deadline := start.Add(5 * time.Second)
	clk.Set(deadline) // the test moves the clock after the decision
	select {
	case <-NewTimerAt(clk, deadline).C():
	default:
		t.Fatal("a timer armed at a deadline that has passed did not fire at once")
	}

	later := NewTimerAt(clk, deadline.Add(time.Second))
	clk.Advance(999 * time.Millisecond)
	select {
	case <-later.C():
		t.Fatal("fired before its deadline")
	default:
	}
	clk.Advance(time.Millisecond)
	select {
	case <-later.C():
	default:
		t.Fatal("did not fire at its deadline")
	}

	// A clock without NewTimerAt gets a duration from its own Now.
	wall := NewTimerAt(RealClock{}, time.Now().Add(-time.Second))
	select {
	case <-wall.C():
	case <-time.After(10 * time.Second):
		t.Fatal("a real timer at a past deadline did not fire")
	}
}

func TestSleep(t *testing.T) {
	// sleep runs Sleep on its own goroutine once the clock holds its timer.
	sleep := func(ctx context.Context, c *FakeClock, wake <-chan struct{}) <-chan bool {
		done := make(chan bool, 1)
		go func() { done <- Sleep(ctx, c, time.Minute, wake) }()
		if err := c.BlockUntilContext(testContext(t), 1); err != nil {
			t.Fatal("Sleep armed no timer")
		}
		return done
	}
	t.Run("returns_true_after_d", func(t *testing.T) {
		c := NewFakeClock(t0)
		done := sleep(t.Context(), c, nil)
		c.Advance(time.Minute - time.Nanosecond)
		select {
		case <-done:
			t.Fatal("Sleep returned before d")
		default:
		}
		c.Advance(time.Nanosecond)
		if !<-done {
			t.Error("Sleep = false, want true once d passed")
		}
	})
	t.Run("wake_ends_it_early_and_stops_the_timer", func(t *testing.T) {
		c := NewFakeClock(t0)
		wake := make(chan struct{}, 1)
		done := sleep(t.Context(), c, wake)
		wake <- struct{}{}
		if !<-done {
			t.Error("Sleep = false, want true on wake")
		}
		if c.Waiters() != 0 {
			t.Errorf("Waiters() = %d after a wake, want 0", c.Waiters())
		}
	})
	t.Run("done_context_returns_false", func(t *testing.T) {
		c := NewFakeClock(t0)
		ctx, cancel := context.WithCancel(t.Context())
		done := sleep(ctx, c, nil)
		cancel()
		if <-done {
			t.Error("Sleep = true, want false once ctx is done")
		}
		if c.Waiters() != 0 {
			t.Errorf("Waiters() = %d after ctx ended, want 0", c.Waiters())
		}
	})
}
