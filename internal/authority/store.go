package authority

import (
	"context"
	"errors"
)

var (
	// ErrNotFound means the store holds no state: a first start, or state
	// that was deleted (the Manager tells the two apart by the published
	// bundle, see Manager.Load).
	ErrNotFound = errors.New("CA state not found")
	// ErrConflict means the state changed since it was read: another replica
	// wrote first. Reload and plan again.
	ErrConflict = errors.New("CA state changed concurrently")
)

// Snapshot is the stored state data and its version.
type Snapshot struct {
	Data    map[string][]byte
	Version string
}

// Store keeps the CA state. Save is a compare-and-swap on the version read
// by Load ("" creates), so two writers can never both rotate.
type Store interface {
	Load(ctx context.Context) (*Snapshot, error)
	Save(ctx context.Context, data map[string][]byte, version string) (newVersion string, err error)
	// Describe names the store for messages (a path, or namespace/name).
	Describe() string
}
