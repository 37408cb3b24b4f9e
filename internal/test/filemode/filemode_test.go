package filemode_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/mayfly-pki/mayfly/internal/test/filemode"
)

func TestWant(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "key.pem")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	filemode.Want(t, dir, fs.ModeDir|0o700)
	filemode.Want(t, path, 0o600)

	// A mode that differs in the type bits alone is a mismatch.
	var rec recorder
	filemode.Want(&rec, dir, 0o700)
	if !rec.failed {
		t.Error("Want accepted a directory for a regular file's mode")
	}
}

// recorder is a testing.TB that only notes a failure.
type recorder struct {
	testing.TB
	failed bool
}

func (r *recorder) Helper()               {}
func (r *recorder) Errorf(string, ...any) { r.failed = true }
