package csi

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/mayfly-pki/mayfly/pkg/atomicfile"
)

// TestTargetSymlinksAreRefused: no component of a target path below the
// kubelet directory may be a symbolic link; nothing is written, mounted or
// removed through one.
func TestTargetSymlinksAreRefused(t *testing.T) {
	e := newIssuedEnv(t)
	elsewhere := t.TempDir()
	if err := os.WriteFile(filepath.Join(elsewhere, "precious"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	podVolumes := filepath.Join(e.podsDir, testPodUID, "volumes", csiPluginDir)
	if err := os.MkdirAll(podVolumes, 0o750); err != nil {
		t.Fatal(err)
	}
	// The volume's directory is a link.
	if err := os.Symlink(elsewhere, filepath.Join(podVolumes, "linked")); err != nil {
		t.Fatal(err)
	}
	linkedDir := filepath.Join(podVolumes, "linked", "mount")
	// The target itself is a link.
	if err := os.MkdirAll(filepath.Join(podVolumes, "direct"), 0o750); err != nil {
		t.Fatal(err)
	}
	linkedTarget := filepath.Join(podVolumes, "direct", "mount")
	if err := os.Symlink(elsewhere, linkedTarget); err != nil {
		t.Fatal(err)
	}
	// A file where a directory belongs.
	if err := os.WriteFile(filepath.Join(podVolumes, "file"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	fileDir := filepath.Join(podVolumes, "file", "mount")

	for _, tc := range []struct {
		name, target, want string
	}{
		{"volume directory is a link", linkedDir, "is a symbolic link"},
		{"target is a link", linkedTarget, "is a symbolic link"},
		{"a component is a file", fileDir, "is not a directory"},
	} {
		t.Run("publish/"+tc.name, func(t *testing.T) {
			_, err := e.d.NodePublishVolume(context.Background(), publishRequest(volID, tc.target, podContext(nil)))
			wantCode(t, err, codes.InvalidArgument, tc.want)
		})
		t.Run("publish socket/"+tc.name, func(t *testing.T) {
			_, err := e.d.NodePublishVolume(context.Background(), publishRequest(volID, tc.target, podContext(map[string]string{attrMode: ModeSocket})))
			wantCode(t, err, codes.InvalidArgument, tc.want)
		})
		t.Run("unpublish/"+tc.name, func(t *testing.T) {
			_, err := e.d.NodeUnpublishVolume(context.Background(), &csipb.NodeUnpublishVolumeRequest{VolumeId: volID, TargetPath: tc.target})
			wantCode(t, err, codes.InvalidArgument, tc.want)
		})
	}
	entries, err := os.ReadDir(elsewhere)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != "precious" {
		t.Fatalf("the link's destination changed: %v", entries)
	}
	if n := e.ids.trackCalls(); n != 0 || len(e.mounter.mounts) != 0 {
		t.Fatalf("tracked %d identities, mounts %v, through links", n, e.mounter.mounts)
	}
	if _, err := os.Stat(filepath.Join(e.stateDir, volID+".json")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a record was written for a refused target: %v", err)
	}
}

// TestUnpublishUnknownRemovesOnlyOurs: a volume the driver has no record of
// is unpublished successfully (CSI idempotency), but only what the driver
// makes is removed.
func TestUnpublishUnknownRemovesOnlyOurs(t *testing.T) {
	e := newIssuedEnv(t)
	unpublish := func(id, target string) error {
		_, err := e.d.NodeUnpublishVolume(context.Background(), &csipb.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
		return err
	}
	// A volume of ours whose record is gone: the driver restarted with an
	// empty state directory.
	ours := e.target("ours")
	mustPublish(t, e.d, publishRequest("csi-ours", ours, podContext(nil)))
	if err := os.RemoveAll(e.stateDir); err != nil {
		t.Fatal(err)
	}
	d2 := e.newDriver(&fakeIdentities{})

	t.Run("the atomic writer's layout is removed", func(t *testing.T) {
		if _, err := d2.NodeUnpublishVolume(context.Background(), &csipb.NodeUnpublishVolumeRequest{VolumeId: "csi-ours", TargetPath: ours}); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(ours); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("our files were left: %v", err)
		}
	})
	t.Run("the atomic writer's layout with jwt.token is removed", func(t *testing.T) {
		dir := e.target("ours-jwt")
		mustPublish(t, e.d, publishRequest("csi-ours-jwt", dir, podContext(nil)))
		// The token file and a temporary one a crash left (atomicfile).
		for _, n := range []string{JWTFileName, "." + JWTFileName + ".tmp-123"} {
			if err := os.WriteFile(filepath.Join(dir, n), []byte("token"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if err := unpublish("csi-unknown-jwt", dir); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(dir); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("our files were left: %v", err)
		}
	})
	t.Run("an empty directory is removed", func(t *testing.T) {
		dir := e.target("empty")
		if err := os.Mkdir(dir, 0o750); err != nil {
			t.Fatal(err)
		}
		if err := unpublish("csi-x", dir); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(dir); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("empty directory left: %v", err)
		}
	})
	leftAlone := func(t *testing.T, dir string, setup func()) {
		t.Helper()
		setup()
		if err := unpublish("csi-unknown", dir); err != nil {
			t.Fatalf("unpublish of an unknown volume: %v", err)
		}
		if _, err := os.Lstat(dir); err != nil {
			t.Fatalf("the target was removed: %v", err)
		}
	}
	t.Run("our layout with a foreign file is left", func(t *testing.T) {
		dir := e.target("mixed")
		leftAlone(t, dir, func() {
			mustPublish(t, e.d, publishRequest("csi-mixed", dir, podContext(nil)))
			if err := os.WriteFile(filepath.Join(dir, "data.db"), []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
		})
		if _, err := os.Stat(filepath.Join(dir, "data.db")); err != nil {
			t.Fatalf("foreign file removed: %v", err)
		}
	})
	t.Run("a jwt.token that is a link is left", func(t *testing.T) {
		dir := e.target("jwt-link")
		leftAlone(t, dir, func() {
			if err := os.Mkdir(dir, 0o750); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink("/etc/passwd", filepath.Join(dir, JWTFileName)); err != nil {
				t.Fatal(err)
			}
		})
	})
	t.Run("a ..data link pointing out of the directory is left", func(t *testing.T) {
		dir := e.target("escape")
		leftAlone(t, dir, func() {
			if err := os.Mkdir(dir, 0o750); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink("/etc", filepath.Join(dir, "..data")); err != nil {
				t.Fatal(err)
			}
		})
	})
	t.Run("a foreign mount is neither unmounted nor removed", func(t *testing.T) {
		dir := e.target("foreign-mount")
		leftAlone(t, dir, func() {
			if err := os.Mkdir(dir, 0o750); err != nil {
				t.Fatal(err)
			}
			if err := e.mounter.BindReadOnly(t.TempDir(), dir); err != nil {
				t.Fatal(err)
			}
		})
		if mounted, _ := e.mounter.IsMountPoint(dir); !mounted {
			t.Fatal("a mount that is not ours was unmounted")
		}
	})
	t.Run("a file at the target is left", func(t *testing.T) {
		dir := e.target("file")
		leftAlone(t, dir, func() {
			if err := os.WriteFile(dir, []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
		})
	})
	t.Run("a known volume unpublished at another path is not stopped", func(t *testing.T) {
		known := e.target("known")
		mustPublish(t, e.d, publishRequest("csi-known", known, podContext(nil)))
		if err := unpublish("csi-known", e.target("not-known")); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(e.stateDir, "csi-known.json")); err != nil {
			t.Fatalf("the record of the volume published elsewhere was removed: %v", err)
		}
		if _, err := atomicfile.ReadAtomic(known, "tls.crt", "tls.key"); err != nil {
			t.Fatalf("the volume published elsewhere lost its files: %v", err)
		}
	})
}
