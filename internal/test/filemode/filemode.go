// Package filemode checks the modes of files a test made the code write:
// keys 0600, directories 0700, sockets as configured.
package filemode

import (
	"io/fs"
	"os"
	"testing"
)

// Perm returns the permission bits of path, following links; the test
// fails when path cannot be stat'ed.
func Perm(t testing.TB, path string) fs.FileMode {
	t.Helper()
	return stat(t, path).Perm()
}

// Want reports an error unless path (links followed) has exactly the type
// and permission bits of want, such as fs.ModeDir|0o700 or 0o600 for a
// regular file.
func Want(t testing.TB, path string, want fs.FileMode) {
	t.Helper()
	if got := stat(t, path) & (fs.ModeType | fs.ModePerm); got != want {
		t.Errorf("%s: mode %v, want %v", path, got, want)
	}
}

func stat(t testing.TB, path string) fs.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode()
}
