package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mayfly-pki/mayfly/internal/test/background"
	"github.com/mayfly-pki/mayfly/internal/test/otheruid"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
)

type doc struct {
	Serial string `json:"serial"`
}

// startStatus serves a status document on a socket in dir until the test
// ends, and waits until the socket exists.
func startStatus(t *testing.T, dir string, allow func(uint32) bool) string {
	t.Helper()
	path := filepath.Join(dir, StatusSocketName)
	s := &StatusServer{Path: path, Status: func() any { return doc{Serial: "abc123"} }, allow: allow}
	t.Cleanup(func() { // after the server stopped
		if _, err := os.Lstat(path); !os.IsNotExist(err) {
			t.Errorf("the socket outlived the server: %v", err)
		}
	})
	background.Run(t, "StatusServer.Start", s.Start)
	wait.Within(t, "the status socket", 10*time.Second, time.Millisecond, func() bool {
		_, err := os.Stat(path)
		return err == nil
	})
	return path
}

func TestStatusSocket(t *testing.T) {
	path := startStatus(t, filepath.Join(t.TempDir(), "state"), nil)
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Type() != os.ModeSocket || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, want a 0600 socket", st.Mode())
	}
	if dst, _ := os.Stat(filepath.Dir(path)); dst.Mode().Perm() != 0o700 {
		t.Fatalf("socket directory mode %v, want 0700", dst.Mode().Perm())
	}
	var d doc
	if err := FetchStatus(path, "agent", &d); err != nil || d.Serial != "abc123" {
		t.Fatalf("FetchStatus = %+v, %v", d, err)
	}
}

func TestStatusSocketRefusesOtherUsers(t *testing.T) {
	path := startStatus(t, t.TempDir(), func(uint32) bool { return false })
	var d doc
	err := FetchStatus(path, "agent", &d)
	if err == nil || !strings.Contains(err.Error(), "root and the agent's own user only") {
		t.Fatalf("FetchStatus from a refused uid = %+v, %v; want an error saying who may read it", d, err)
	}
}

func TestStatusSocketBadInput(t *testing.T) {
	t.Run("a file that is not a socket is not replaced", func(t *testing.T) {
		dir := t.TempDir()
		path := filepath.Join(dir, StatusSocketName)
		if err := os.WriteFile(path, []byte("keep"), 0o600); err != nil {
			t.Fatal(err)
		}
		err := (&StatusServer{Path: path, Status: func() any { return nil }}).Start(t.Context())
		if err == nil || !strings.Contains(err.Error(), "not a socket") {
			t.Fatalf("Start = %v, want an error saying it is not a socket", err)
		}
	})
	t.Run("a directory others may write to is refused", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.Chmod(dir, 0o777); err != nil {
			t.Fatal(err)
		}
		err := (&StatusServer{Path: filepath.Join(dir, StatusSocketName), Status: func() any { return nil }}).Start(t.Context())
		if err == nil || !strings.Contains(err.Error(), "writable by it alone") {
			t.Fatalf("Start = %v, want an error about the directory", err)
		}
	})
	t.Run("no server", func(t *testing.T) {
		var d doc
		if err := FetchStatus(filepath.Join(t.TempDir(), "none.sock"), "CA", &d); err == nil || !strings.Contains(err.Error(), "is it running?") {
			t.Fatalf("FetchStatus = %v", err)
		}
	})
}

// helperEnv makes the test binary act as a status client of the socket it
// names (TestStatusHelperClient), in a process of another uid.
const helperEnv = "MAYFLY_STATUS_HELPER_SOCKET"

func TestStatusHelperClient(t *testing.T) {
	path := os.Getenv(helperEnv)
	if path == "" {
		t.Skip("helper process of TestStatusSocketOtherUID")
	}
	var d doc
	if err := FetchStatus(path, "agent", &d); err != nil {
		t.Fatalf("FetchStatus: %v", err)
	}
	t.Logf("read serial %s", d.Serial)
}

// TestStatusSocketOtherUID: a process of another uid (nobody) cannot read
// the status, even where it can reach the socket's directory; the owner
// can.
func TestStatusSocketOtherUID(t *testing.T) {
	// A directory everybody can traverse, holding a copy of this test
	// binary that everybody can run and the socket's directory: the
	// socket's 0600 mode and the peer check must stop uid 65534, not the
	// path.
	bin := otheruid.Copy(t)
	sockDir := filepath.Join(bin.Dir(), "state")
	if err := os.Mkdir(sockDir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := startStatus(t, sockDir, nil)

	out, err := bin.Run("TestStatusHelperClient", true, helperEnv+"="+path)
	if err == nil || !strings.Contains(out, "permission denied") {
		t.Fatalf("uid 65534 read the status (err %v):\n%s", err, out)
	}
	out, err = bin.Run("TestStatusHelperClient", false, helperEnv+"="+path)
	if err != nil || !strings.Contains(out, "read serial abc123") {
		t.Fatalf("the owner could not read the status (err %v):\n%s", err, out)
	}
}
