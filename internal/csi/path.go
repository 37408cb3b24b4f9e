package csi

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// DefaultKubeletDir is the kubelet's root directory (kubelet --root-dir).
const DefaultKubeletDir = "/var/lib/kubelet"

// csiPluginDir is the directory of CSI volumes inside a pod's volumes
// directory.
const csiPluginDir = "kubernetes.io~csi"

// target is a validated target path:
// <kubelet dir>/pods/<pod uid>/volumes/kubernetes.io~csi/<volume name>/mount.
type target struct {
	path   string // clean and absolute
	podUID string
}

// checkTarget validates a target path the kubelet passed: clean, absolute,
// without "..", and laid out as the kubelet lays out the target of an
// inline CSI volume, <kubeletDir>/pods/<uid>/volumes/kubernetes.io~csi/<name>/mount.
// It does not look at the file system (see checkNoSymlinks).
func checkTarget(p, kubeletDir string) (target, error) {
	clean, err := checkTargetPath(p)
	if err != nil {
		return target{}, err
	}
	want := kubeletDir + "/pods/<pod uid>/volumes/" + csiPluginDir + "/<volume name>/mount"
	rel, err := filepath.Rel(kubeletDir, clean)
	if err != nil || rel == "." || strings.HasPrefix(rel, "..") {
		return target{}, invalidf("target_path %q: not under the kubelet directory %s; want %s", p, kubeletDir, want)
	}
	parts := strings.Split(rel, "/")
	if len(parts) != 6 || parts[0] != "pods" || parts[2] != "volumes" || parts[3] != csiPluginDir || parts[5] != "mount" {
		return target{}, invalidf("target_path %q: not the target of a CSI volume; want %s", p, want)
	}
	return target{path: clean, podUID: parts[1]}, nil
}

// checkNoSymlinks fails when a component of t below kubeletDir is a
// symbolic link, or one above the target is not a directory, so that the driver never writes,
// mounts or removes through a link. Components that do not exist yet end
// the walk (the driver creates the target itself). The kubelet directory
// itself may be a link (some distributions move it); nothing below it may.
func checkNoSymlinks(t target, kubeletDir string) error {
	rel, err := filepath.Rel(kubeletDir, t.path)
	if err != nil {
		return invalidf("target_path %q: %v", t.path, err)
	}
	dir := kubeletDir
	names := strings.Split(rel, "/")
	for i, name := range names {
		dir = filepath.Join(dir, name)
		fi, err := os.Lstat(dir)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("target_path %q: %w", t.path, err)
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			return invalidf("target_path %q: %s is a symbolic link; the driver does not follow links below the kubelet directory %s", t.path, dir, kubeletDir)
		case !fi.IsDir() && i < len(names)-1:
			return invalidf("target_path %q: %s is not a directory", t.path, dir)
		}
	}
	return nil
}
