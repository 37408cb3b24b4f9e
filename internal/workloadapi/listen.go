package workloadapi

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// Default modes of Listen: every local user may connect, since the caller
// is identified by attestation and not by file permissions.
const (
	DefaultSocketMode os.FileMode = 0o666
	DefaultDirMode    os.FileMode = 0o755
)

// ErrSocketInUse is returned by Listen when another process serves the socket.
var ErrSocketInUse = errors.New("socket is in use by another process")

// Listen listens on the unix socket path. It creates the parent directory
// with dirMode (0 means DefaultDirMode) when it does not exist, replaces a
// stale socket left by a previous run (only a socket nobody listens on; any
// other file is an error) and sets the socket's mode to socketMode (0 means
// DefaultSocketMode) whatever the umask. The socket is removed when the
// listener is closed.
func Listen(path string, socketMode, dirMode os.FileMode) (net.Listener, error) {
	socketMode = cmp.Or(socketMode, DefaultSocketMode)
	dirMode = cmp.Or(dirMode, DefaultDirMode)
	if err := ensureDir(filepath.Dir(path), dirMode); err != nil {
		return nil, err
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	if err := os.Chmod(path, socketMode); err != nil {
		_ = l.Close()
		return nil, fmt.Errorf("setting the mode of socket %s: %w", path, err)
	}
	return l, nil
}

// ensureDir creates dir with mode, umask notwithstanding, if it is missing;
// an existing directory is left as it is.
func ensureDir(dir string, mode os.FileMode) error {
	fi, err := os.Stat(dir)
	switch {
	case err == nil && fi.IsDir():
		return nil
	case err == nil:
		return fmt.Errorf("socket directory %s exists and is not a directory", dir)
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("socket directory: %w", err)
	}
	if err := os.MkdirAll(dir, mode); err != nil {
		return fmt.Errorf("creating socket directory: %w", err)
	}
	if err := os.Chmod(dir, mode); err != nil {
		return fmt.Errorf("setting the mode of socket directory: %w", err)
	}
	return nil
}

// removeStaleSocket removes path if it is a socket nobody listens on.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("checking socket path: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket (%s), remove it or choose another path", path, fi.Mode().Type())
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		_ = c.Close()
		return fmt.Errorf("%s: %w", path, ErrSocketInUse)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("checking whether socket %s is in use: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing stale socket: %w", err)
	}
	return nil
}
