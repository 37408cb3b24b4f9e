package authority

import (
	"context"
	"time"
)

// ReloadEvery re-reads the store every interval until ctx is done, on the
// Manager's clock: it picks up rotations written by another process on the
// same store, and recovers (Load) from a state the operator fixed.
func (m *Manager) ReloadEvery(ctx context.Context, every time.Duration) error {
	for m.sleep(ctx, every) {
		if m.Ready() != nil {
			_ = m.Load(ctx)
		} else {
			_ = m.Reload(ctx)
		}
	}
	return nil
}

// sleep waits d on the Manager's clock; false when ctx is done first.
func (m *Manager) sleep(ctx context.Context, d time.Duration) bool {
	t := m.opts.Clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C():
		return true
	}
}
