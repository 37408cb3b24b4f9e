package csi

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mayfly-pki/mayfly/internal/test/otheruid"
)

// mountClientEnv carries "socket|source|target" to TestMountHelperClient
// when the test binary runs as the client of TestMountHelperOtherUID.
const mountClientEnv = "MAYFLY_TEST_MOUNT_CLIENT"

// TestMountHelperClient is not a test of its own: it is the client side of
// TestMountHelperOtherUID, run in a child process as another uid.
func TestMountHelperClient(t *testing.T) {
	arg := os.Getenv(mountClientEnv)
	if arg == "" {
		t.Skip("client side of TestMountHelperOtherUID")
	}
	parts := strings.SplitN(arg, "|", 3)
	err := RemoteMounter{Socket: parts[0]}.BindReadOnly(parts[1], parts[2])
	fmt.Printf("bind answer: %v\n", err)
}

// TestMountHelperOtherUID: a local user of another uid who reaches the
// mount helper's socket (here made world-writable on purpose, so that only
// the peer check stands in the way) is refused before its request is read,
// and nothing is mounted; the helper's own uid is served.
func TestMountHelperOtherUID(t *testing.T) {
	bin := otheruid.Copy(t)
	e := newEnv(t)
	sock := startMountServer(t, e)
	// Everything on the way to the socket and to the test binary is open
	// to uid 65534.
	if err := os.Chmod(sock, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Dir(sock), 0o755); err != nil {
		t.Fatal(err)
	}
	target := e.target("pod-a")
	if err := os.Mkdir(target, 0o750); err != nil { // as the driver does before it mounts
		t.Fatal(err)
	}
	run := func(asNobody bool) string {
		out, err := bin.Run("TestMountHelperClient", asNobody, mountClientEnv+"="+sock+"|"+e.sockDir+"|"+target)
		if err != nil {
			t.Fatalf("client: %v\n%s", err, out)
		}
		return out
	}
	if out := run(true); !strings.Contains(out, "uid 65534 may not use the mount helper") {
		t.Fatalf("uid 65534 was not refused:\n%s", out)
	}
	e.mounter.mu.Lock()
	mounts := len(e.mounter.mounts)
	e.mounter.mu.Unlock()
	if mounts != 0 {
		t.Fatal("uid 65534 got a mount")
	}
	if out := run(false); !strings.Contains(out, "bind answer: <nil>") {
		t.Fatalf("the helper's own uid was not served:\n%s", out)
	}
	if src := e.mounter.source(target); src != e.sockDir {
		t.Fatalf("mounted %q, want %q", src, e.sockDir)
	}
}
