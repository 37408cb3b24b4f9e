package csi

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestMountInfoHas(t *testing.T) {
	table := strings.Join([]string{
		`22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw`,
		`36 22 0:30 /run/mayfly /var/lib/kubelet/pods/uid/volumes/kubernetes.io~csi/sock/mount ro,relatime shared:2 - tmpfs tmpfs rw`,
		`37 22 0:30 / /mnt/with\040space ro - tmpfs tmpfs rw`,
		`38 22 0:30 / /mnt/back\134slash ro - tmpfs tmpfs rw`,
		`short line`,
	}, "\n")
	tests := []struct {
		target string
		want   bool
	}{
		{"/var/lib/kubelet/pods/uid/volumes/kubernetes.io~csi/sock/mount", true},
		{"/var/lib/kubelet/pods/uid/volumes/kubernetes.io~csi/sock", false},
		{"/mnt/with space", true},
		{`/mnt/with\040space`, false},
		{`/mnt/back\slash`, true},
		{"/", true},
		{"/mnt", false},
	}
	for _, tt := range tests {
		got, err := mountInfoHas(strings.NewReader(table), tt.target)
		if err != nil || got != tt.want {
			t.Errorf("mountInfoHas(%q) = %v, %v; want %v", tt.target, got, err, tt.want)
		}
	}
}

// TestLinuxMounter makes a real read-only bind mount; it needs root
// (CAP_SYS_ADMIN) and is skipped otherwise.
func TestLinuxMounter(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("bind mounts need root")
	}
	dir := t.TempDir()
	src, target := filepath.Join(dir, "src"), filepath.Join(dir, "target")
	for _, d := range []string{src, target} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(src, "agent.sock"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	m := LinuxMounter{}
	if err := m.BindReadOnly(src, target); err != nil {
		if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
			t.Skipf("no permission to mount here: %v", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(target, unix.MNT_DETACH) })
	if ok, err := m.IsMountPoint(target); err != nil || !ok {
		t.Fatalf("IsMountPoint after mount = %v, %v", ok, err)
	}
	if _, err := os.Stat(filepath.Join(target, "agent.sock")); err != nil {
		t.Fatalf("source content not visible: %v", err)
	}
	if err := os.WriteFile(filepath.Join(target, "new"), nil, 0o644); !errors.Is(err, unix.EROFS) {
		t.Fatalf("write into the mount: %v, want EROFS", err)
	}
	if err := m.Unmount(target); err != nil {
		t.Fatal(err)
	}
	if ok, err := m.IsMountPoint(target); err != nil || ok {
		t.Fatalf("IsMountPoint after unmount = %v, %v", ok, err)
	}
}
