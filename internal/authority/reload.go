package authority

import (
	"context"
	"time"
)

// ReloadEvery re-reads the store every interval until ctx is done, on the
// Manager's clock: it picks up rotations written by another process on the
// same store, and recovers (Load) from a state the operator fixed.
func (m *Manager) ReloadEvery(ctx context.Context, every time.Duration) error {
	for {
		t := m.opts.Clock.NewTimer(every)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C():
		}
		if m.Ready() != nil {
			_ = m.Load(ctx)
		} else {
			_ = m.Reload(ctx)
		}
	}
}
