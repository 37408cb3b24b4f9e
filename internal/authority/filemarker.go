package authority

import (
	"context"
	"errors"
	"os"

	"github.com/mayfly-pki/mayfly/pkg/atomicfile"
)

// FileMarker is the Marker of a CA whose state is in a directory: the trust
// bundle file next to the state, which agents also start from.
type FileMarker struct {
	// Path of the PEM trust bundle.
	Path string
}

// Marked reports whether the trust bundle file exists.
func (f FileMarker) Marked(context.Context) (bool, error) {
	_, err := os.Stat(f.Path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}

// Mark replaces the trust bundle file atomically; a trust bundle is
// public, so it is world-readable.
func (f FileMarker) Mark(_ context.Context, bundlePEM []byte) error {
	return atomicfile.WriteFile(f.Path, bundlePEM, 0o644)
}
