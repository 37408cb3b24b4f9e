package csi

import (
	"bufio"
	"cmp"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Mounter makes and removes the read-only bind mounts of socket mode.
type Mounter interface {
	// BindReadOnly bind-mounts the directory source onto target, read-only.
	BindReadOnly(source, target string) error
	// Unmount removes the topmost mount at target.
	Unmount(target string) error
	// IsMountPoint reports whether something is mounted at target.
	IsMountPoint(target string) (bool, error)
}

// LinuxMounter is the Mounter of a real node: mount(2) and
// /proc/self/mountinfo. It needs CAP_SYS_ADMIN in the mount namespace the
// kubelet sees (the agent's pod mounts the kubelet directory with
// mountPropagation: Bidirectional).
type LinuxMounter struct {
	// MountInfo is the mountinfo file to read; default /proc/self/mountinfo.
	MountInfo string
}

// BindReadOnly bind-mounts source onto target and remounts it read-only
// (a bind mount ignores MS_RDONLY on creation).
func (m LinuxMounter) BindReadOnly(source, target string) error {
	if err := unix.Mount(source, target, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind-mount %s on %s: %w", source, target, err)
	}
	if err := unix.Mount("", target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		_ = unix.Unmount(target, 0)
		return fmt.Errorf("remount %s read-only: %w", target, err)
	}
	return nil
}

// Unmount unmounts target.
func (m LinuxMounter) Unmount(target string) error {
	if err := unix.Unmount(target, 0); err != nil {
		return fmt.Errorf("unmount %s: %w", target, err)
	}
	return nil
}

// IsMountPoint looks target up in the mountinfo file. Comparing device
// numbers with the parent would miss bind mounts within one filesystem.
func (m LinuxMounter) IsMountPoint(target string) (bool, error) {
	path := cmp.Or(m.MountInfo, "/proc/self/mountinfo")
	f, err := os.Open(path)
	if err != nil {
		return false, fmt.Errorf("read mount table: %w", err)
	}
	defer f.Close()
	return mountInfoHas(f, filepath.Clean(target))
}

// mountInfoHas reports whether a line of a mountinfo table (proc(5)) has
// target as its mount point (field 5, octal-escaped).
func mountInfoHas(r io.Reader, target string) (bool, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		if unescapeMountPath(fields[4]) == target {
			return true, nil
		}
	}
	if err := sc.Err(); err != nil {
		return false, fmt.Errorf("read mount table: %w", err)
	}
	return false, nil
}

// unescapeMountPath undoes the \NNN octal escapes of mountinfo (space, tab,
// newline, backslash).
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// errStillMounted is returned when unmounting did not clear a target.
var errStillMounted = errors.New("still mounted after unmounting")
