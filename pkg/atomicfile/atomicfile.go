// Package atomicfile writes files so that a reader, or a crash, never sees a
// partial one. It is the one place mayfly writes files atomically.
//
// [WriteFile] replaces a single state file (CA state, join tokens, the
// agent's own SVID, CSI volume records): the data goes to a new file created
// exclusively next to the target, with its mode set explicitly (whatever the
// umask), synced, renamed over the target, and the directory synced.
//
// [Dir] writes several named files that must change together (a certificate
// and its key) as one version directory, swapped in through a symlink as the
// kubelet's atomic writer does; [ReadAtomic] reads several files of one
// version. pkg/rotate's FileSink maps a credential onto a Dir.
package atomicfile

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
)

// WriteFile replaces path with data, atomically, with mode. The temporary
// file is removed when anything fails. Errors name the file, never its
// contents.
func WriteFile(path string, data []byte, mode fs.FileMode) error {
	return WriteFileGroup(path, data, mode, nil)
}

// WriteFileGroup is WriteFile that, when group is set, gives the file to
// that group before it is renamed into place (a token file readable by a
// pod's fsGroup), so no reader sees it with another group. Changing the
// group needs CAP_CHOWN unless the writer is a member of the group.
func WriteFileGroup(path string, data []byte, mode fs.FileMode, group *int64) (err error) {
	if group != nil && (*group < 0 || *group > math.MaxInt32) {
		return fmt.Errorf("write %s: group: must be in [0, %d], got %d", path, math.MaxInt32, *group)
	}
	dir, name := filepath.Split(path)
	dir = cmp.Or(dir, ".")
	f, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
			err = fmt.Errorf("write %s: %w", path, err)
		}
	}()
	if group != nil {
		if err = f.Chown(-1, int(*group)); err != nil {
			return err
		}
	}
	if err = f.Chmod(mode); err != nil {
		return err
	}
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp, path); err != nil {
		return err
	}
	return SyncDir(dir)
}

// WriteFileIfChanged is WriteFile that leaves path alone when it already
// holds data with mode; it reports whether it wrote.
func WriteFileIfChanged(path string, data []byte, mode fs.FileMode) (bool, error) {
	if fi, err := os.Lstat(path); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm() == mode.Perm() && fi.Size() == int64(len(data)) {
		if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
			return false, nil
		}
	}
	if err := WriteFile(path, data, mode); err != nil {
		return false, err
	}
	return true, nil
}

// SyncDir flushes a directory's entries (a rename or a new file) to disk.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, fs.ErrInvalid) {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}
