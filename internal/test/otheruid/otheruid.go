// Package otheruid runs a test's client side as another local user, the way
// an attacker on the node would meet a socket: the test binary copies itself
// into a directory every user can traverse and runs one of its own tests as
// a child process with another uid.
package otheruid

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// Nobody is the uid and gid the child runs as.
const Nobody = 65534

// Binary is a copy of the running test binary that every user may run.
type Binary struct {
	t    *testing.T
	path string
}

// Copy copies the test binary into a fresh world-traversable directory and
// skips the test unless it runs as root (only root can start a process as
// another uid).
func Copy(t *testing.T) *Binary {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a client as uid 65534")
	}
	base, err := os.MkdirTemp("", "mayfly-otheruid-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil { //nolint:gosec // the other uid must traverse it
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(base, filepath.Base(self))
	in, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755) //nolint:gosec // the other uid must run it
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return &Binary{t: t, path: bin}
}

// Dir is the world-traversable directory holding the copy, a place for
// sockets the child must reach.
func (b *Binary) Dir() string { return filepath.Dir(b.path) }

// Run runs the test named test (an exact name) of the copy with env added,
// as uid/gid Nobody when asNobody is set and as the caller otherwise, and
// returns its combined output and exit error.
func (b *Binary) Run(test string, asNobody bool, env ...string) (string, error) {
	cmd := exec.CommandContext(b.t.Context(), b.path, "-test.run=^"+test+"$", "-test.v") //nolint:gosec // the test binary itself
	cmd.Env = append(os.Environ(), env...)
	if asNobody {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: Nobody, Gid: Nobody}}
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}
