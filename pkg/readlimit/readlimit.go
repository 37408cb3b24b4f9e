// Package readlimit reads files and streams from outside whole, up to a
// limit, failing instead of truncating when there is more. It is the one
// place mayfly bounds what it reads into memory: configuration files, PIN
// files, upstream certificates and keys, trust bundles, token files, CA
// state and backups, CSI volume records, registrations, a process's
// cgroups, and decompressed records.
//
// [File] opens only regular files (following symlinks, as Kubernetes
// ConfigMap and Secret volumes need), without blocking on a FIFO. Errors
// name the file and the limit, never the content.
package readlimit

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
)

// ErrTooLarge is wrapped by every error about input beyond its limit.
var ErrTooLarge = errors.New("input too large")

// tooLarge says the limit that was passed; it matches [ErrTooLarge].
type tooLarge int64

func (n tooLarge) Error() string      { return fmt.Sprintf("longer than %d bytes", int64(n)) }
func (tooLarge) Is(target error) bool { return target == ErrTooLarge }

// All reads r to its end, failing with an error wrapping [ErrTooLarge] when
// it holds more than limit bytes; it never reads more than limit+1.
func All(r io.Reader, limit int64) ([]byte, error) {
	if limit < 0 {
		return nil, fmt.Errorf("limit %d: must not be negative", limit)
	}
	raw, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(raw)) > limit {
		return nil, tooLarge(limit)
	}
	return raw, nil
}

// File reads the regular file at path, failing when it holds more than
// limit bytes (an error wrapping [ErrTooLarge]). A missing file gives an
// error wrapping [fs.ErrNotExist].
func File(path string, limit int64) ([]byte, error) {
	return FileCheck(path, limit, nil)
}

// FileCheck is [File] with check run on the opened file's information
// before anything is read, for example to refuse a key file that others
// may read. check's error is returned as it is; nil check checks nothing.
func FileCheck(path string, limit int64, check func(fs.FileInfo) error) ([]byte, error) {
	// O_NONBLOCK: opening a FIFO without a writer returns at once (and is
	// refused below) instead of waiting; it changes nothing for a regular file.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: %s, not a regular file", path, kind(fi.Mode()))
	}
	if check != nil {
		if err := check(fi); err != nil {
			return nil, err
		}
	}
	// The size is only a hint (files in /proc report 0): reject early when
	// it is already too large, and read in any case.
	if fi.Size() > limit {
		return nil, fmt.Errorf("%s: %w", path, tooLarge(limit))
	}
	raw, err := All(f, limit)
	if errors.Is(err, ErrTooLarge) {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return raw, err // a read error names the file already
}

// kind names what a non-regular file is.
func kind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeDevice != 0:
		return "a device"
	default:
		return "special"
	}
}
