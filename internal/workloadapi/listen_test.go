package workloadapi

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/mayfly-pki/mayfly/internal/test/filemode"
)

func TestListen(t *testing.T) {
	t.Run("modes_are_set_whatever_the_umask", func(t *testing.T) {
		old := syscall.Umask(0o077)
		defer syscall.Umask(old)
		dir := filepath.Join(t.TempDir(), "run", "mayfly")
		path := filepath.Join(dir, "api.sock")
		mustListen(t, path, 0, 0)
		filemode.Want(t, dir, os.ModeDir|0o755)
		filemode.Want(t, path, os.ModeSocket|0o666)
	})
	t.Run("explicit_modes", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "d")
		path := filepath.Join(dir, "api.sock")
		mustListen(t, path, 0o660, 0o750)
		filemode.Want(t, dir, os.ModeDir|0o750)
		filemode.Want(t, path, os.ModeSocket|0o660)
	})
	t.Run("existing_directory_is_left_alone", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.Chmod(dir, 0o711); err != nil {
			t.Fatal(err)
		}
		mustListen(t, filepath.Join(dir, "api.sock"), 0, 0)
		filemode.Want(t, dir, os.ModeDir|0o711)
	})
	t.Run("stale_socket_is_replaced", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "api.sock")
		stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		stale.SetUnlinkOnClose(false)
		_ = stale.Close()
		if _, err := os.Lstat(path); err != nil {
			t.Fatalf("stale socket not left behind: %v", err)
		}
		mustListen(t, path, 0, 0)
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatalf("dial the new socket: %v", err)
		}
		_ = c.Close()
	})
	t.Run("live_socket_is_not_taken_over", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "api.sock")
		mustListen(t, path, 0, 0)
		if _, err := Listen(path, 0, 0); !errors.Is(err, ErrSocketInUse) {
			t.Fatalf("got %v, want ErrSocketInUse", err)
		}
	})
	t.Run("regular_file_is_not_deleted", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "api.sock")
		if err := os.WriteFile(path, []byte("precious"), 0o600); err != nil {
			t.Fatal(err)
		}
		if l, err := Listen(path, 0, 0); err == nil {
			_ = l.Close()
			t.Fatal("Listen replaced a regular file")
		}
		if b, err := os.ReadFile(path); err != nil || string(b) != "precious" {
			t.Fatalf("regular file changed: %q %v", b, err)
		}
	})
	t.Run("socket_is_removed_on_close", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "api.sock")
		l, err := Listen(path, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		_ = l.Close()
		if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("socket left after Close: %v", err)
		}
	})
}

// mustListen is Listen for a test: it fails the test on an error and closes
// the listener when the test ends.
func mustListen(t *testing.T, path string, socketMode, dirMode os.FileMode) net.Listener {
	t.Helper()
	l, err := Listen(path, socketMode, dirMode)
	if err != nil {
		t.Fatalf("Listen(%s): %v", path, err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}
