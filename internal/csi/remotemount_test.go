package csi

import (
	"context"
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"testing"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
)

// startMountServer serves e's fake mounter through a MountServer on a real
// unix socket, as the privileged mounter container does.
func startMountServer(t *testing.T, e *testEnv) string {
	t.Helper()
	dir := socketDir(t, "mnt")
	sock := filepath.Join(dir, "mounter.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- (&MountServer{Mounter: e.mounter, Source: e.sockDir, KubeletDir: e.kubelet}).Serve(ctx, lis)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("mount server: %v", err)
		}
	})
	return sock
}

// TestSocketModeThroughMountHelper: the driver of an unprivileged agent
// publishes and unpublishes socket-mode volumes through the mount helper.
func TestSocketModeThroughMountHelper(t *testing.T) {
	e := newEnv(t)
	sock := startMountServer(t, e)
	d, err := New(Config{NodeName: "node-1", StateDir: e.stateDir, SocketDir: e.sockDir, KubeletDir: e.kubelet, Clock: e.clock, Identities: e.ids, Mounter: RemoteMounter{Socket: sock}})
	if err != nil {
		t.Fatal(err)
	}
	target := e.target("pod-a")
	req := publishRequest(volID, target, podContext(map[string]string{attrMode: ModeSocket}))
	req.Readonly = true
	mustPublish(t, d, req)
	mustPublish(t, d, req) // idempotent: the helper answers isMountPoint
	if src := e.mounter.source(target); src != e.sockDir {
		t.Fatalf("mounted %q, want the socket directory %q", src, e.sockDir)
	}
	if n := len(e.mounter.mounts[target]); n != 1 {
		t.Fatalf("%d mounts at the target, want 1", n)
	}
	if _, err := d.NodeUnpublishVolume(context.Background(), &csipb.NodeUnpublishVolumeRequest{VolumeId: volID, TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	if ok, _ := e.mounter.IsMountPoint(target); ok {
		t.Fatal("still mounted after unpublish")
	}
}

// TestMountHelperRefuses: the helper mounts only the socket directory, and
// only onto CSI targets under the kubelet directory, whatever it is asked.
func TestMountHelperRefuses(t *testing.T) {
	e := newEnv(t)
	sock := startMountServer(t, e)
	m := RemoteMounter{Socket: sock}
	good := e.target("pod-a")
	for _, tc := range []struct {
		name, source, target, want string
	}{
		{"other_source", "/etc", good, "mounts only"},
		{"host_root", "/", good, "mounts only"},
		{"target_outside_kubelet", e.sockDir, "/etc/passwd", "not under the kubelet directory"},
		{"target_not_a_csi_volume", e.sockDir, filepath.Join(e.kubelet, "pods", "uid", "etc"), "not the target of a CSI volume"},
		{"relative_target", e.sockDir, "pods/uid/volumes/kubernetes.io~csi/v/mount", "target_path"},
		{"dot_dot", e.sockDir, e.kubelet + "/pods/../../etc/volumes/kubernetes.io~csi/v/mount", "target_path"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := m.BindReadOnly(tc.source, tc.target)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("BindReadOnly(%q, %q) = %v, want an error saying %q", tc.source, tc.target, err, tc.want)
			}
			if len(e.mounter.mounts) != 0 {
				t.Fatalf("something was mounted: %v", e.mounter.mounts)
			}
		})
	}
	raw := func(t *testing.T, payload string) mountAnswer {
		t.Helper()
		conn, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if _, err := conn.Write([]byte(payload)); err != nil {
			t.Fatal(err)
		}
		var a mountAnswer
		if err := json.NewDecoder(conn).Decode(&a); err != nil {
			t.Fatal(err)
		}
		return a
	}
	t.Run("unknown_op", func(t *testing.T) {
		b, _ := json.Marshal(mountRequest{Op: "format", Target: good})
		if a := raw(t, string(b)); !strings.Contains(a.Error, "want bind, unmount or isMountPoint") {
			t.Fatalf("answer %+v", a)
		}
	})
	t.Run("malformed", func(t *testing.T) {
		if a := raw(t, "{not json\n"); !strings.Contains(a.Error, "malformed request") {
			t.Fatalf("answer %+v", a)
		}
	})
	t.Run("oversized", func(t *testing.T) {
		if a := raw(t, `{"op":"bind","target":"`+strings.Repeat("a", 2*maxMountRequest)+`"}`); !strings.Contains(a.Error, "malformed request") {
			t.Fatalf("answer %+v", a)
		}
	})
	t.Run("helper_down", func(t *testing.T) {
		err := RemoteMounter{Socket: filepath.Join(t.TempDir(), "none.sock")}.Unmount(good)
		if err == nil || !strings.Contains(err.Error(), "is the mounter container running") {
			t.Fatalf("Unmount with no helper = %v", err)
		}
	})
}
