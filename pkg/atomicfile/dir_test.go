package atomicfile

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func newDir(t *testing.T, opts DirOptions) *Dir {
	t.Helper()
	d, err := NewDir(filepath.Join(t.TempDir(), "out"), opts)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func write(t *testing.T, d *Dir, files ...File) bool {
	t.Helper()
	changed, err := d.Write(files)
	if err != nil {
		t.Fatal(err)
	}
	return changed
}

func stat(t *testing.T, path string) fs.FileInfo {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi
}

func gid(t *testing.T, path string) int64 {
	t.Helper()
	return int64(stat(t, path).Sys().(*syscall.Stat_t).Gid)
}

// current returns the version directory ..data points at.
func current(t *testing.T, d *Dir) string {
	t.Helper()
	v, err := os.Readlink(filepath.Join(d.Path(), dataDirName))
	if err != nil || !isVersionDir(v) {
		t.Fatalf("..data -> %q, %v; want a version directory", v, err)
	}
	return v
}

func versionDirs(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if isVersionDir(e.Name()) {
			out = append(out, e.Name())
		}
	}
	return out
}

func pair(cert, key string) []File {
	return []File{
		{Name: "tls.crt", Data: []byte(cert), Mode: 0o644},
		{Name: "tls.key", Data: []byte(key), Mode: 0o600, Group: true},
	}
}

func TestDirWritesNamedFilesWithModes(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	d := newDir(t, DirOptions{})
	if got := stat(t, d.Path()).Mode().Perm(); got != 0o700 {
		t.Errorf("created directory mode = %v, want 0700", got)
	}
	files := []File{
		{Name: "tls.crt", Data: []byte("chain"), Mode: 0o644},
		{Name: "tls.key", Data: []byte("key"), Mode: 0o600},
		{Name: "ca.crt", Data: []byte("bundle"), Mode: 0o644},
		{Name: "empty", Mode: 0o400},
	}
	if !write(t, d, files...) {
		t.Fatal("first write reported no change")
	}
	version := current(t, d)
	if got := stat(t, filepath.Join(d.Path(), version)).Mode().Perm(); got != 0o700 {
		t.Errorf("version directory mode = %v, want 0700", got)
	}
	for _, f := range files {
		path := filepath.Join(d.Path(), f.Name)
		if target, err := os.Readlink(path); err != nil || target != filepath.Join(dataDirName, f.Name) {
			t.Errorf("%s: link %q, %v; want ..data/%s", f.Name, target, err, f.Name)
		}
		if got := stat(t, path).Mode().Perm(); got != f.Mode {
			t.Errorf("%s: mode %v, want %v whatever the umask", f.Name, got, f.Mode)
		}
		if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, f.Data) {
			t.Errorf("%s: content %q, %v; want %q", f.Name, got, err, f.Data)
		}
	}
	got, err := d.Read("tls.key", "ca.crt")
	if err != nil || string(got[0]) != "key" || string(got[1]) != "bundle" {
		t.Fatalf("Read = %q, %v", got, err)
	}
}

func TestDirGroup(t *testing.T) {
	group := int64(os.Getgid())
	if os.Geteuid() == 0 {
		group = 4242 // root may give any group: one the files would not have otherwise
	}
	d := newDir(t, DirOptions{Group: &group})
	write(t, d, pair("chain", "key")...)
	version := filepath.Join(d.Path(), current(t, d))
	for _, dir := range []string{d.Path(), version} {
		if got := stat(t, dir).Mode().Perm(); got != 0o750 {
			t.Errorf("%s: mode %v, want 0750", dir, got)
		}
		if got := gid(t, dir); got != group {
			t.Errorf("%s: group %d, want %d", dir, got, group)
		}
	}
	if got := gid(t, filepath.Join(version, "tls.key")); got != group {
		t.Errorf("tls.key: group %d, want %d", got, group)
	}
	if write(t, d, pair("chain", "key")...) {
		t.Error("an unchanged write with a group was not skipped")
	}
}

func TestDirSkipsUnchangedWrites(t *testing.T) {
	d := newDir(t, DirOptions{})
	write(t, d, pair("chain", "key")...)
	version := current(t, d)
	before := stat(t, filepath.Join(d.Path(), version))

	t.Run("same files keep the version", func(t *testing.T) {
		if write(t, d, pair("chain", "key")...) {
			t.Fatal("Write reported a change")
		}
		if got := current(t, d); got != version {
			t.Fatalf("..data -> %s, want still %s", got, version)
		}
		if !os.SameFile(before, stat(t, filepath.Join(d.Path(), version))) {
			t.Fatal("version directory was replaced")
		}
	})
	t.Run("a lost user link is restored without a new version", func(t *testing.T) {
		if err := os.Remove(filepath.Join(d.Path(), "tls.crt")); err != nil {
			t.Fatal(err)
		}
		if write(t, d, pair("chain", "key")...) || current(t, d) != version {
			t.Fatal("Write made a new version")
		}
		if _, err := os.ReadFile(filepath.Join(d.Path(), "tls.crt")); err != nil {
			t.Fatal(err)
		}
	})
	for _, tt := range []struct {
		name  string
		files []File
	}{
		{"a content change writes", pair("chain", "key2")},
		{"a mode change writes", []File{{Name: "tls.crt", Data: []byte("chain"), Mode: 0o644}, {Name: "tls.key", Data: []byte("key2"), Mode: 0o640}}},
		{"a file less writes", []File{{Name: "tls.crt", Data: []byte("chain"), Mode: 0o644}}},
		{"a file more writes", append(pair("chain", "key"), File{Name: "ca.crt", Mode: 0o644})},
	} {
		t.Run(tt.name, func(t *testing.T) {
			prev := current(t, d)
			if !write(t, d, tt.files...) {
				t.Fatal("Write reported no change")
			}
			if got := current(t, d); got == prev {
				t.Fatalf("..data still -> %s", got)
			}
			if got := versionDirs(t, d.Path()); len(got) != 1 {
				t.Fatalf("version dirs %v, want only the current one", got)
			}
		})
	}
	t.Run("a damaged version is rewritten", func(t *testing.T) {
		prev := current(t, d)
		if err := os.Chmod(filepath.Join(d.Path(), prev, "tls.crt"), 0o600); err != nil {
			t.Fatal(err)
		}
		if !write(t, d, append(pair("chain", "key"), File{Name: "ca.crt", Mode: 0o644})...) {
			t.Fatal("Write kept a version whose file lost its mode")
		}
	})
}

func TestDirSweepsCrashLeftovers(t *testing.T) {
	dir := t.TempDir()
	// Leftovers of a crashed writer, and files that are not ours.
	stale := filepath.Join(dir, "..2020_01_01_00_00_00.12345")
	if err := os.MkdirAll(stale, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(stale, "tls.key"), []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, link := range []string{"..data_tmp", "..tls.crt.tmp"} {
		if err := os.Symlink(filepath.Base(stale), filepath.Join(dir, link)); err != nil {
			t.Fatal(err)
		}
	}
	for _, keep := range []string{"..keep", "README"} {
		if err := os.WriteFile(filepath.Join(dir, keep), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// A regular file from an older layout is replaced by the symlink.
	if err := os.WriteFile(filepath.Join(dir, "tls.crt"), []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}

	d, err := NewDir(dir, DirOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		write(t, d, pair(fmt.Sprint("chain", i), fmt.Sprint("key", i))...)
		if got, want := versionDirs(t, dir), current(t, d); len(got) != 1 || got[0] != want {
			t.Fatalf("version dirs = %v, want only the current %s", got, want)
		}
	}
	for _, gone := range []string{"..data_tmp", "..tls.crt.tmp"} {
		if _, err := os.Lstat(filepath.Join(dir, gone)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s left behind: %v", gone, err)
		}
	}
	for _, keep := range []string{"..keep", "README"} {
		if _, err := os.Stat(filepath.Join(dir, keep)); err != nil {
			t.Errorf("%s removed: %v", keep, err)
		}
	}
	if target, err := os.Readlink(filepath.Join(dir, "tls.crt")); err != nil || target != "..data/tls.crt" {
		t.Errorf("tls.crt -> %q, %v; want ..data/tls.crt", target, err)
	}

	t.Run("an unchanged write sweeps too", func(t *testing.T) {
		if err := os.Mkdir(stale, 0o700); err != nil {
			t.Fatal(err)
		}
		if write(t, d, pair("chain2", "key2")...) {
			t.Fatal("Write reported a change")
		}
		if _, err := os.Lstat(stale); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("stale version left behind: %v", err)
		}
	})
}

func TestDirRecreatesDeletedDir(t *testing.T) {
	d := newDir(t, DirOptions{})
	write(t, d, pair("chain", "key")...)
	if err := os.RemoveAll(d.Path()); err != nil {
		t.Fatal(err)
	}
	if !write(t, d, pair("chain", "key")...) {
		t.Fatal("Write into a deleted directory reported no change")
	}
	if _, err := d.Read("tls.crt", "tls.key"); err != nil {
		t.Fatal(err)
	}
}

func TestDirRejectsBadFiles(t *testing.T) {
	ok := File{Name: "tls.crt", Mode: 0o644}
	tests := []struct {
		name    string
		files   []File
		wantErr string
	}{
		{"no files", nil, "files: no file to write"},
		{"empty name", []File{ok, {Mode: 0o600}}, "files[1].name: must not be empty"},
		{"dot dot", []File{{Name: "..", Mode: 0o600}}, `files[0].name: ".." is not a file name`},
		{"path", []File{ok, {Name: "../x", Mode: 0o600}}, "files[1].name: must be a plain file name"},
		{"nested path", []File{{Name: "a/b", Mode: 0o600}}, "files[0].name: must be a plain file name"},
		{"backslash", []File{{Name: `a\b`, Mode: 0o600}}, "files[0].name: must be a plain file name"},
		{"only dots", []File{{Name: "...", Mode: 0o600}}, `files[0].name: "..." is not a file name`},
		{"reserved prefix", []File{{Name: "..data", Mode: 0o600}}, `files[0].name: must not start with ".."`},
		{"too long", []File{{Name: strings.Repeat("a", 256), Mode: 0o600}}, "files[0].name: name longer than 255 bytes"},
		{"duplicate", []File{ok, {Name: "ca.crt", Mode: 0o644}, ok}, `files[2].name: "tls.crt" is already used by files[0]`},
		{"not permission bits", []File{{Name: "x", Mode: fs.ModeSetuid | 0o755}}, "files[0].mode: must hold permission bits only"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newDir(t, DirOptions{})
			changed, err := d.Write(tt.files)
			if err == nil || changed || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Write() = %v, %v; want an error with %q", changed, err, tt.wantErr)
			}
			if entries, _ := os.ReadDir(d.Path()); len(entries) != 0 {
				t.Fatalf("refused write left %d entries", len(entries))
			}
		})
	}
}

func TestNewDirRejectsBadOptions(t *testing.T) {
	neg, big := int64(-1), int64(1)<<40
	for name, group := range map[string]*int64{"negative group": &neg, "group above 2^31": &big} {
		t.Run(name, func(t *testing.T) {
			if _, err := NewDir(t.TempDir(), DirOptions{Group: group}); err == nil || !strings.Contains(err.Error(), "group: must be in") {
				t.Fatalf("NewDir() = %v, want a group error", err)
			}
		})
	}
	t.Run("empty path", func(t *testing.T) {
		if _, err := NewDir("", DirOptions{}); err == nil || !strings.Contains(err.Error(), "path: must not be empty") {
			t.Fatalf("NewDir(\"\") = %v", err)
		}
	})
	t.Run("a file as the directory", func(t *testing.T) {
		f := filepath.Join(t.TempDir(), "file")
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := NewDir(f, DirOptions{}); err == nil || !strings.Contains(err.Error(), "not a directory") {
			t.Fatalf("NewDir(file) = %v", err)
		}
	})
}

// TestReadAtomicNeverSeesTwoVersions writes 100 versions from a goroutine
// while the test reads until the writer is done: ReadAtomic always returns
// files of one version, and a file opened through its user-visible symlink
// is always complete.
func TestReadAtomicNeverSeesTwoVersions(t *testing.T) {
	d := newDir(t, DirOptions{})
	content := func(name string, i int) string { return fmt.Sprintf("%s of version %03d\n", name, i) }
	version := func(i int) []File {
		return []File{
			{Name: "tls.crt", Data: []byte(content("tls.crt", i)), Mode: 0o644},
			{Name: "tls.key", Data: []byte(content("tls.key", i)), Mode: 0o600},
		}
	}
	write(t, d, version(0)...)
	writer := make(chan error, 1)
	go func() {
		for i := 1; i < 100; i++ {
			if _, err := d.Write(version(i)); err != nil {
				writer <- err
				return
			}
		}
		writer <- nil
	}()

	reads, failure := 0, error(nil)
	for failure == nil {
		select {
		case err := <-writer:
			if err != nil {
				t.Fatal(err)
			}
			if reads == 0 {
				t.Fatal("no read ran during the writes")
			}
			return
		default:
		}
		failure = readOneVersion(d.Path(), len(content("tls.key", 0)))
		reads++
	}
	<-writer // before the test's directory is removed
	t.Fatal(failure)
}

// readOneVersion reads tls.crt and tls.key of one version, which must be
// of the same version, and tls.key through its symlink, which must have
// size bytes.
func readOneVersion(dir string, size int) error {
	files, err := ReadAtomic(dir, "tls.crt", "tls.key")
	if err != nil {
		return err
	}
	if strings.TrimPrefix(string(files[0]), "tls.crt") != strings.TrimPrefix(string(files[1]), "tls.key") {
		return fmt.Errorf("ReadAtomic mixed versions: %q and %q", files[0], files[1])
	}
	b, err := os.ReadFile(filepath.Join(dir, "tls.key"))
	switch {
	case errors.Is(err, fs.ErrNotExist): // resolved a version just removed
	case err != nil:
		return err
	case len(b) != size:
		return fmt.Errorf("tls.key read incomplete: %q", b)
	}
	return nil
}

func TestReadAtomicRejectsBadNames(t *testing.T) {
	if _, err := ReadAtomic(t.TempDir(), "tls.crt", "../etc/passwd"); err == nil || !strings.Contains(err.Error(), "names[1]: must be a plain file name") {
		t.Fatalf("ReadAtomic(../etc/passwd) = %v, want an error naming names[1]", err)
	}
	if _, err := ReadAtomic(t.TempDir(), "tls.crt"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("ReadAtomic(empty dir) = %v, want ErrNotExist", err)
	}
	dir := t.TempDir()
	if err := os.Symlink("../elsewhere", filepath.Join(dir, dataDirName)); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadAtomic(dir, "tls.crt"); err == nil || !strings.Contains(err.Error(), "points outside") {
		t.Fatalf("ReadAtomic(..data -> ../elsewhere) = %v, want a refusal", err)
	}
}
