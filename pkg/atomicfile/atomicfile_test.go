package atomicfile

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestWriteFile(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")

	t.Run("creates with the mode asked, whatever the umask", func(t *testing.T) {
		if err := WriteFile(path, []byte("one"), 0o644); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o644 {
			t.Fatalf("mode %v, want 0644", fi.Mode().Perm())
		}
	})
	t.Run("replaces and leaves no temporary file", func(t *testing.T) {
		if err := WriteFile(path, []byte("two"), 0o600); err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(path)
		if string(got) != "two" {
			t.Fatalf("content %q", got)
		}
		entries, _ := os.ReadDir(dir)
		if len(entries) != 1 {
			t.Fatalf("entries %v, want only state.json", entries)
		}
	})
	t.Run("a missing directory fails naming the file and cleans up", func(t *testing.T) {
		err := WriteFile(filepath.Join(dir, "missing", "x"), []byte("secret-bytes"), 0o600)
		if err == nil || !strings.Contains(err.Error(), "missing/x") || strings.Contains(err.Error(), "secret-bytes") {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("unchanged content is not rewritten", func(t *testing.T) {
		before, _ := os.Stat(path)
		wrote, err := WriteFileIfChanged(path, []byte("two"), 0o600)
		if err != nil || wrote {
			t.Fatalf("wrote %v err %v", wrote, err)
		}
		after, _ := os.Stat(path)
		if !os.SameFile(before, after) {
			t.Fatal("file was replaced")
		}
		if wrote, err = WriteFileIfChanged(path, []byte("two"), 0o640); err != nil || !wrote {
			t.Fatalf("a mode change must rewrite: wrote %v err %v", wrote, err)
		}
		if wrote, err = WriteFileIfChanged(path, []byte("three"), 0o640); err != nil || !wrote {
			t.Fatalf("a content change must rewrite: wrote %v err %v", wrote, err)
		}
	})
}

// TestWriteFileGroup: the file has the group before it is in place, and a
// group outside the range of IDs is refused without a file.
func TestWriteFileGroup(t *testing.T) {
	path := filepath.Join(t.TempDir(), "jwt.token")
	gid := int64(os.Getgid()) // a group the writer is a member of
	if err := WriteFileGroup(path, []byte("token"), 0o640, &gid); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); int64(st.Gid) != gid || fi.Mode().Perm() != 0o640 {
		t.Fatalf("group %d mode %v, want %d 0640", st.Gid, fi.Mode().Perm(), gid)
	}
	bad := int64(-1)
	err = WriteFileGroup(filepath.Join(filepath.Dir(path), "other"), []byte("x"), 0o640, &bad)
	if err == nil || !strings.Contains(err.Error(), "group: must be in") {
		t.Fatalf("group -1: %v", err)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(path), "other")); !os.IsNotExist(err) {
		t.Fatalf("a file was written for a bad group: %v", err)
	}
}
