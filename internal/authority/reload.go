package authority

import (
	"context"
	"time"

	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// ReloadEvery re-reads the store every interval until ctx is done, on the
// Manager's clock: it picks up rotations written by another process on the
// same store, and recovers (Load) from a state the operator fixed.
func (m *Manager) ReloadEvery(ctx context.Context, every time.Duration) error {
	for rotate.Sleep(ctx, m.opts.Clock, every, nil) {
		if m.Ready() != nil {
			_ = m.Load(ctx)
		} else {
			_ = m.Reload(ctx)
		}
	}
	return nil
}
