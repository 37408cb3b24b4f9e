package readlimit_test

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/mayfly-pki/mayfly/pkg/readlimit"
)

const secret = "s3cr3t-content"

func TestFileReadsUpToTheLimit(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []int{0, 1, 15, 16} {
		path := filepath.Join(dir, "f")
		want := strings.Repeat("x", n)
		if err := os.WriteFile(path, []byte(want), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := readlimit.File(path, 16)
		if err != nil || string(got) != want {
			t.Fatalf("File(%d bytes) = %q, %v; want the content", n, got, err)
		}
	}
}

func TestFileFollowsSymlinks(t *testing.T) {
	// Kubernetes ConfigMap and Secret volumes are symlinks to the data.
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "data"), []byte("ok"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink("data", link); err != nil {
		t.Fatal(err)
	}
	if got, err := readlimit.File(link, 16); err != nil || string(got) != "ok" {
		t.Fatalf("File(symlink) = %q, %v", got, err)
	}
}

func TestFileRejectsBadInput(t *testing.T) {
	dir := t.TempDir()
	long := filepath.Join(dir, "long")
	if err := os.WriteFile(long, []byte(secret+strings.Repeat("x", 64)), 0o600); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	dangling := filepath.Join(dir, "dangling")
	if err := os.Symlink("nowhere", dangling); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		path    string
		wantIs  error
		wantSub string
	}{
		{"longer than the limit", long, readlimit.ErrTooLarge, long + ": longer than 16 bytes"},
		{"missing", filepath.Join(dir, "missing"), fs.ErrNotExist, "missing"},
		{"dangling symlink", dangling, fs.ErrNotExist, "dangling"},
		{"directory", dir, nil, dir + ": a directory, not a regular file"},
		{"named pipe without a writer does not block", fifo, nil, fifo + ": a named pipe, not a regular file"},
		{"socket", sock, nil, sock}, // open itself fails (ENXIO)
		{"device", os.DevNull, nil, os.DevNull + ": a device, not a regular file"},
	}
	for _, tt := range tests {
		t.Run(strings.ReplaceAll(tt.name, " ", "_"), func(t *testing.T) {
			got, err := readlimit.File(tt.path, 16)
			if err == nil {
				t.Fatalf("File = %q, want an error", got)
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("error %q does not wrap %v", err, tt.wantIs)
			}
			if !strings.Contains(err.Error(), tt.wantSub) {
				t.Errorf("error %q does not contain %q", err, tt.wantSub)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error %q holds the file's content", err)
			}
		})
	}
}

func TestFileCheckRunsBeforeReading(t *testing.T) {
	path := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(path, []byte(secret), 0o644); err != nil {
		t.Fatal(err)
	}
	refuse := errors.New("readable by others")
	var seen fs.FileMode
	_, err := readlimit.FileCheck(path, 1, func(fi fs.FileInfo) error {
		seen = fi.Mode()
		if fi.Mode().Perm()&0o077 != 0 {
			return refuse
		}
		return nil
	})
	// The check comes before the size: the refusal is the check's.
	if !errors.Is(err, refuse) || seen.Perm() != 0o644 {
		t.Fatalf("FileCheck = %v (mode seen %v), want the check's error", err, seen)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := readlimit.FileCheck(path, 64, func(fs.FileInfo) error { return nil }); err != nil || string(got) != secret {
		t.Fatalf("FileCheck(passing check) = %q, %v", got, err)
	}
}

func TestAll(t *testing.T) {
	if got, err := readlimit.All(strings.NewReader("abcd"), 4); err != nil || string(got) != "abcd" {
		t.Fatalf("All(at the limit) = %q, %v", got, err)
	}
	_, err := readlimit.All(strings.NewReader(secret), 4)
	if !errors.Is(err, readlimit.ErrTooLarge) || err.Error() != "longer than 4 bytes" {
		t.Fatalf("All(beyond the limit) = %v, want ErrTooLarge saying the limit", err)
	}
	if _, err := readlimit.All(strings.NewReader(""), -1); err == nil {
		t.Fatal("All(negative limit) succeeded")
	}
}
