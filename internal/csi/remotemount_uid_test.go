package csi

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
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
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a client as uid 65534")
	}
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
	base, err := os.MkdirTemp("", "mayfly-mounter-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(base, "csi.test")
	copyExecutable(t, self, bin)

	target := e.target("pod-a")
	if err := os.Mkdir(target, 0o750); err != nil { // as the driver does before it mounts
		t.Fatal(err)
	}
	run := func(cred *syscall.Credential) string {
		cmd := exec.CommandContext(t.Context(), bin, "-test.run=^TestMountHelperClient$", "-test.v")
		cmd.Env = append(os.Environ(), mountClientEnv+"="+sock+"|"+e.sockDir+"|"+target)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("client: %v\n%s", err, out)
		}
		return string(out)
	}
	if out := run(&syscall.Credential{Uid: 65534, Gid: 65534}); !strings.Contains(out, "uid 65534 may not use the mount helper") {
		t.Fatalf("uid 65534 was not refused:\n%s", out)
	}
	e.mounter.mu.Lock()
	mounts := len(e.mounter.mounts)
	e.mounter.mu.Unlock()
	if mounts != 0 {
		t.Fatal("uid 65534 got a mount")
	}
	if out := run(nil); !strings.Contains(out, "bind answer: <nil>") {
		t.Fatalf("the helper's own uid was not served:\n%s", out)
	}
	if src := e.mounter.source(target); src != e.sockDir {
		t.Fatalf("mounted %q, want %q", src, e.sockDir)
	}
}

func copyExecutable(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
