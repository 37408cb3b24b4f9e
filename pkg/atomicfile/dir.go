package atomicfile

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Names of the entries a [Dir] manages inside its directory, as in the
// kubelet's atomic writer.
const (
	dataDirName    = "..data"     // symlink to the current version directory
	newDataDirName = "..data_tmp" // symlink being swapped into dataDirName
	versionLayout  = "2006_01_02_15_04_05"
	versionPrefix  = ".."
)

// Modes of the directories of a [Dir].
const (
	dirMode          fs.FileMode = 0o700
	dirModeWithGroup fs.FileMode = 0o750
)

// maxReadAttempts bounds the retries of [ReadAtomic].
const maxReadAttempts = 20

// File is one file of a [Dir] version.
type File struct {
	// Name is a plain file name (see [CheckName]), unique in one write.
	Name string
	// Data is the content; Dir keeps no reference to it after Write.
	Data []byte
	// Mode holds the permission bits, set whatever the umask.
	Mode fs.FileMode
	// Group gives the file to [DirOptions.Group] (a key readable by a pod's
	// fsGroup); without a group it has no effect.
	Group bool
}

// DirOptions configure a [Dir]. Every field is optional.
type DirOptions struct {
	// Group, when set, owns the directories (mode 0750 instead of 0700) and
	// the files marked [File.Group], like a pod's securityContext.fsGroup.
	// Changing the group of a file needs CAP_CHOWN unless the writer is a
	// member of the group.
	Group *int64
	// Now names the version directories; nil means time.Now. Names are made
	// unique with a random suffix, so the clock only helps humans.
	Now func() time.Time
}

// Dir writes a set of named files that must change together, swapping them
// atomically through a directory symlink as the kubelet's atomic writer
// does:
//
//	<dir>/tls.crt -> ..data/tls.crt
//	<dir>/tls.key -> ..data/tls.key
//	<dir>/..data  -> ..2025_01_02_15_04_05.123456789
//	<dir>/..2025_01_02_15_04_05.123456789/{tls.crt,tls.key}
//
// Each [Dir.Write] that changes anything creates a new version directory,
// with every file created exclusively and synced, points ..data at it with
// one rename, syncs the directory, and removes older version directories
// (including ones left by a crash). A reader that opens one file always sees
// a complete file; a reader that needs several files of one version uses
// [ReadAtomic].
type Dir struct {
	path  string
	group *int64
	now   func() time.Time

	mu sync.Mutex // serializes writes
}

// NewDir returns a Dir writing into path, which it creates if missing (mode
// 0700, or 0750 with a group). An existing directory is left as it is.
func NewDir(path string, opts DirOptions) (*Dir, error) {
	if path == "" {
		return nil, errors.New("atomic directory: path: must not be empty")
	}
	d := &Dir{path: filepath.Clean(path), now: opts.Now}
	if opts.Group != nil {
		g := *opts.Group
		if g < 0 || g > math.MaxInt32 {
			return nil, fmt.Errorf("atomic directory %s: group: must be in [0, %d], got %d", d.path, math.MaxInt32, g)
		}
		d.group = &g
	}
	if d.now == nil {
		d.now = time.Now
	}
	if err := d.ensure(); err != nil {
		return nil, err
	}
	return d, nil
}

// Path returns the directory written into.
func (d *Dir) Path() string { return d.path }

// CheckName accepts plain file names that cannot collide with the entries a
// [Dir] manages: not empty, not only dots, no slash or backslash, not
// starting with "..", at most 255 bytes.
func CheckName(n string) error {
	switch {
	case n == "":
		return errors.New("must not be empty")
	case strings.Trim(n, ".") == "":
		return fmt.Errorf("%q is not a file name", n)
	case strings.ContainsAny(n, "/\\\x00"):
		return fmt.Errorf("must be a plain file name without slashes, got %q", n)
	case strings.HasPrefix(n, ".."):
		return fmt.Errorf("must not start with \"..\" (reserved for versions), got %q", n)
	case len(n) > 255:
		return errors.New("name longer than 255 bytes")
	}
	return nil
}

// checkFiles validates a write, naming the field at fault.
func checkFiles(files []File) error {
	if len(files) == 0 {
		return errors.New("files: no file to write")
	}
	for i, f := range files {
		if err := CheckName(f.Name); err != nil {
			return fmt.Errorf("files[%d].name: %w", i, err)
		}
		if j := slices.IndexFunc(files[:i], func(o File) bool { return o.Name == f.Name }); j >= 0 {
			return fmt.Errorf("files[%d].name: %q is already used by files[%d]", i, f.Name, j)
		}
		if f.Mode&^fs.ModePerm != 0 {
			return fmt.Errorf("files[%d].mode: must hold permission bits only, got %v", i, f.Mode)
		}
	}
	return nil
}

// Write makes files the current version. When the current version already
// holds exactly these files, byte for byte and with the same modes (and
// group), it is kept: no new version, no swap; Write then reports false.
// Errors name files, never their contents.
func (d *Dir) Write(files []File) (changed bool, err error) {
	if err := checkFiles(files); err != nil {
		return false, fmt.Errorf("write %s: %w", d.path, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if changed, err = d.write(files); err != nil {
		return false, fmt.Errorf("write %s: %w", d.path, err)
	}
	return changed, nil
}

// write performs one update:
//  1. if the version ..data points at holds files, keep it;
//  2. otherwise create a new version directory ..<timestamp>.<random> and
//     write the files into it, synced;
//  3. point ..data_tmp at it and rename ..data_tmp over ..data (atomic);
//  4. create the user-visible symlinks <name> -> ..data/<name> if needed;
//  5. remove every other version directory and stale temporary link.
func (d *Dir) write(files []File) (bool, error) {
	if err := d.ensure(); err != nil {
		return false, err
	}
	if current, err := os.Readlink(filepath.Join(d.path, dataDirName)); err == nil && isVersionDir(current) && d.holds(current, files) {
		return false, d.finish(current, files, false)
	}
	version, err := d.newVersionDir()
	if err != nil {
		return false, err
	}
	versionPath := filepath.Join(d.path, version)
	committed := false
	defer func() {
		if !committed {
			_ = os.RemoveAll(versionPath)
		}
	}()
	for _, f := range files {
		if err := d.writeFile(filepath.Join(versionPath, f.Name), f); err != nil {
			return false, err
		}
	}
	if err := SyncDir(versionPath); err != nil {
		return false, err
	}

	tmpLink := filepath.Join(d.path, newDataDirName)
	if err := os.Remove(tmpLink); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("remove stale %s: %w", newDataDirName, err)
	}
	if err := os.Symlink(version, tmpLink); err != nil {
		return false, fmt.Errorf("link %s: %w", newDataDirName, err)
	}
	if err := os.Rename(tmpLink, filepath.Join(d.path, dataDirName)); err != nil {
		_ = os.Remove(tmpLink)
		return false, fmt.Errorf("swap %s: %w", dataDirName, err)
	}
	committed = true
	return true, d.finish(version, files, true)
}

// finish links the user-visible names, syncs the directory when it changed,
// and sweeps every version but current.
func (d *Dir) finish(current string, files []File, swapped bool) error {
	linked := false
	for _, f := range files {
		changed, err := d.ensureUserLink(f.Name)
		if err != nil {
			return err
		}
		linked = linked || changed
	}
	if swapped || linked {
		if err := SyncDir(d.path); err != nil {
			return err
		}
	}
	return d.removeOldVersions(current, files)
}

// holds reports whether the version directory holds exactly files, with
// their modes and group, and has the directory mode and group of d.
func (d *Dir) holds(version string, files []File) bool {
	path := filepath.Join(d.path, version)
	if fi, err := os.Lstat(path); err != nil || !fi.IsDir() || fi.Mode().Perm() != d.dirMode() || !d.hasGroup(fi, true) {
		return false
	}
	entries, err := os.ReadDir(path)
	if err != nil || len(entries) != len(files) {
		return false
	}
	for _, f := range files {
		if !d.fileHolds(filepath.Join(path, f.Name), f) {
			return false
		}
	}
	return true
}

// fileHolds reports whether path is a regular file with f's mode, group and
// data. The bytes read are cleared: they may be a private key.
func (d *Dir) fileHolds(path string, f File) bool {
	fi, err := os.Lstat(path)
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != f.Mode || fi.Size() != int64(len(f.Data)) || !d.hasGroup(fi, f.Group) {
		return false
	}
	old, err := os.ReadFile(path)
	defer clear(old)
	return err == nil && bytes.Equal(old, f.Data)
}

// hasGroup reports whether fi belongs to d's group, when it should.
func (d *Dir) hasGroup(fi fs.FileInfo, group bool) bool {
	if !group || d.group == nil {
		return true
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && int64(st.Gid) == *d.group
}

func (d *Dir) dirMode() fs.FileMode {
	if d.group != nil {
		return dirModeWithGroup
	}
	return dirMode
}

// ensure creates the directory when it is missing and gives it d's mode and
// group. An existing directory is left as it is.
func (d *Dir) ensure() error {
	fi, err := os.Stat(d.path)
	switch {
	case err == nil && fi.IsDir():
		return nil
	case err == nil:
		return fmt.Errorf("atomic directory %s: not a directory", d.path)
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("atomic directory %s: %w", d.path, err)
	}
	if err := os.MkdirAll(d.path, d.dirMode()); err != nil {
		return fmt.Errorf("atomic directory %s: create: %w", d.path, err)
	}
	if err := d.setMode(d.path, d.dirMode(), true); err != nil {
		return fmt.Errorf("atomic directory %s: %w", d.path, err)
	}
	return nil
}

// setMode sets mode (ignoring the umask) and, with a group, the group.
func (d *Dir) setMode(path string, mode fs.FileMode, group bool) error {
	if group && d.group != nil {
		if err := os.Lchown(path, -1, int(*d.group)); err != nil {
			return fmt.Errorf("set group of %s: %w", filepath.Base(path), err)
		}
	}
	if err := os.Chmod(path, mode); err != nil {
		return fmt.Errorf("set mode of %s: %w", filepath.Base(path), err)
	}
	return nil
}

// newVersionDir creates an empty version directory with d's mode and group.
func (d *Dir) newVersionDir() (string, error) {
	prefix := versionPrefix + d.now().UTC().Format(versionLayout) + "."
	path, err := os.MkdirTemp(d.path, prefix)
	if err != nil {
		return "", fmt.Errorf("create version directory: %w", err)
	}
	if err := d.setMode(path, d.dirMode(), true); err != nil {
		_ = os.RemoveAll(path)
		return "", err
	}
	return filepath.Base(path), nil
}

// writeFile creates path exclusively with f's mode and group, writes f's
// data and syncs it.
func (d *Dir) writeFile(path string, f File) (err error) {
	out, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", f.Name, err)
	}
	defer func() {
		if cerr := out.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("close %s: %w", f.Name, cerr)
		}
	}()
	if f.Group && d.group != nil {
		if err := out.Chown(-1, int(*d.group)); err != nil {
			return fmt.Errorf("set group of %s: %w", f.Name, err)
		}
	}
	if err := out.Chmod(f.Mode); err != nil {
		return fmt.Errorf("set mode of %s: %w", f.Name, err)
	}
	if _, err := out.Write(f.Data); err != nil {
		return fmt.Errorf("write %s: %w", f.Name, err)
	}
	if err := out.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", f.Name, err)
	}
	return nil
}

// ensureUserLink makes <dir>/<name> a symlink to ..data/<name>, replacing
// whatever else is there (a regular file from an older layout) atomically.
// It reports whether it changed anything.
func (d *Dir) ensureUserLink(name string) (bool, error) {
	want := filepath.Join(dataDirName, name)
	path := filepath.Join(d.path, name)
	if got, err := os.Readlink(path); err == nil && got == want {
		return false, nil
	}
	tmp := filepath.Join(d.path, tempLinkName(name))
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("remove stale link for %s: %w", name, err)
	}
	if err := os.Symlink(want, tmp); err != nil {
		return false, fmt.Errorf("link %s: %w", name, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return false, fmt.Errorf("link %s: %w", name, err)
	}
	return true, nil
}

func tempLinkName(name string) string { return versionPrefix + name + ".tmp" }

// removeOldVersions removes every version directory except keep, and stale
// temporary links of files; these are left behind by earlier writes or by a
// crash.
func (d *Dir) removeOldVersions(keep string, files []File) error {
	entries, err := os.ReadDir(d.path)
	if err != nil {
		return fmt.Errorf("list %s: %w", d.path, err)
	}
	var errs []error
	for _, e := range entries {
		name := e.Name()
		link := e.Type()&fs.ModeSymlink != 0
		switch {
		case name == keep:
			continue
		case isVersionDir(name) && e.IsDir():
		case name == newDataDirName && link:
		case link && slices.ContainsFunc(files, func(f File) bool { return name == tempLinkName(f.Name) }):
		default:
			continue
		}
		if err := os.RemoveAll(filepath.Join(d.path, name)); err != nil {
			errs = append(errs, fmt.Errorf("remove old version %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// isVersionDir reports whether name has the form of a version directory:
// ..<timestamp>.<suffix>.
func isVersionDir(name string) bool {
	rest, ok := strings.CutPrefix(name, versionPrefix)
	if !ok || len(rest) < len(versionLayout)+1 || rest[len(versionLayout)] != '.' {
		return false
	}
	_, err := time.Parse(versionLayout, rest[:len(versionLayout)])
	return err == nil
}

// Read is [ReadAtomic] on d's directory.
func (d *Dir) Read(names ...string) ([][]byte, error) { return ReadAtomic(d.path, names...) }

// ReadAtomic reads the named files of one version of a directory written by
// a [Dir] (or by the kubelet's atomic writer), so that a chain and its key
// always match: it resolves ..data once and reads every file from that
// version directory, which is never modified once ..data points at it. When
// a swap removed that version while it read, it starts again, a few times.
// It returns the contents in the order of names; an error wrapping
// fs.ErrNotExist when nothing was written yet.
//
// Opening <dir>/tls.crt and then <dir>/tls.key separately gives each file
// complete, but a swap between the two opens yields files of two versions.
func ReadAtomic(dir string, names ...string) ([][]byte, error) {
	for i, n := range names {
		if err := CheckName(n); err != nil {
			return nil, fmt.Errorf("read %s: names[%d]: %w", dir, i, err)
		}
	}
	var err error
	for range maxReadAttempts {
		var out [][]byte
		if out, err = readVersion(dir, names); err == nil {
			return out, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			break
		}
	}
	return nil, fmt.Errorf("read %s: %w", dir, err)
}

func readVersion(dir string, names []string) ([][]byte, error) {
	version, err := os.Readlink(filepath.Join(dir, dataDirName))
	if err != nil {
		return nil, err
	}
	if strings.ContainsRune(version, '/') {
		return nil, fmt.Errorf("%s points outside the directory: %q", dataDirName, version)
	}
	out := make([][]byte, len(names))
	for i, n := range names {
		if out[i], err = os.ReadFile(filepath.Join(dir, version, n)); err != nil {
			for _, b := range out[:i] {
				clear(b)
			}
			return nil, err
		}
	}
	return out, nil
}
