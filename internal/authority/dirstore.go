package authority

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/mayfly-pki/mayfly/pkg/atomicfile"
	"github.com/mayfly-pki/mayfly/pkg/readlimit"
)

// StateFileName is the file of a DirStore that holds the whole state.
const StateFileName = "authority.json"

const maxStateFile = 4 << 20

// DirStore keeps the state in one file in a directory (standalone mode):
// the directory is 0700, the file 0600, written by rename so a reader never
// sees half a state, and Save holds an exclusive lock on the directory's lock
// file so two processes cannot interleave their compare-and-swap.
type DirStore struct {
	dir string
}

// NewDirStore creates dir (0700) if needed and returns its store.
func NewDirStore(dir string) (*DirStore, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating CA state directory: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil { //nolint:gosec // a directory needs x; 0700 is owner-only
		return nil, fmt.Errorf("setting mode of CA state directory: %w", err)
	}
	return &DirStore{dir: dir}, nil
}

// Describe returns the state file's path.
func (s *DirStore) Describe() string { return filepath.Join(s.dir, StateFileName) }

// Dir is the directory of the store.
func (s *DirStore) Dir() string { return s.dir }

// Load reads the state file.
func (s *DirStore) Load(_ context.Context) (*Snapshot, error) {
	raw, err := readState(s.Describe())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	var data map[string][]byte
	if err := json.Unmarshal(raw, &data); err != nil {
		return nil, fmt.Errorf("%w: %s is not valid JSON: %w", ErrCorrupt, s.Describe(), err)
	}
	return &Snapshot{Data: data, Version: version(raw)}, nil
}

// Save writes data if the file still has the given version.
func (s *DirStore) Save(_ context.Context, data map[string][]byte, prev string) (string, error) {
	unlock, err := s.lock()
	if err != nil {
		return "", err
	}
	defer unlock()

	cur, err := readState(s.Describe())
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if prev != "" {
			return "", fmt.Errorf("%w: %s was removed", ErrConflict, s.Describe())
		}
	case err != nil:
		return "", err
	case version(cur) != prev:
		return "", fmt.Errorf("%w: %s", ErrConflict, s.Describe())
	}

	raw, err := json.Marshal(data)
	if err != nil {
		return "", fmt.Errorf("encoding CA state: %w", err)
	}
	if err := atomicfile.WriteFile(s.Describe(), raw, 0o600); err != nil {
		return "", fmt.Errorf("writing CA state: %w", err)
	}
	return version(raw), nil
}

func (s *DirStore) lock() (func(), error) {
	f, err := os.OpenFile(filepath.Join(s.dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("locking CA state directory: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("locking CA state directory: %w", err)
	}
	return func() {
		_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
		f.Close()
	}, nil
}

// readState reads the state file, refusing one that group or others may
// read or that is larger than maxStateFile (ErrCorrupt).
func readState(path string) ([]byte, error) {
	raw, err := readlimit.FileCheck(path, maxStateFile, func(fi os.FileInfo) error {
		if perm := fi.Mode().Perm(); perm&0o077 != 0 {
			return fmt.Errorf("%s has mode %v: CA keys must not be readable by others; run chmod 600 on it", path, perm)
		}
		return nil
	})
	if errors.Is(err, readlimit.ErrTooLarge) {
		return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	return raw, err
}

func version(raw []byte) string {
	sum := sha256.Sum256(raw)
	return hex.EncodeToString(sum[:8])
}
