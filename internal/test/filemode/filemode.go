// Package filemode checks the modes of files a test made the code write:
// keys 0600, directories 0700, sockets as configured.
package filemode

import (
	"io/fs"
	"os"
	"testing"
)

// Want reports an error unless path (links followed) has exactly the type
// and permission bits of want, such as fs.ModeDir|0o700 or 0o600 for a
// regular file.
func Want(t testing.TB, path string, want fs.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode() & (fs.ModeType | fs.ModePerm); got != want {
		t.Errorf("%s: mode %v, want %v", path, got, want)
	}
}
