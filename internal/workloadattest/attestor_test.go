package workloadattest

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

// selfPeer returns the Peer of a real socket connection to ourselves.
func selfPeer(t *testing.T) *Peer {
	t.Helper()
	server, _ := unixPair(t)
	p, err := PeerFromConn(server)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// reapedPeer returns a Peer whose process has exited and been reaped: its
// PID may belong to anyone now.
func reapedPeer(t *testing.T) *Peer {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-c", "exec sleep 30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p, err := newPeerFromPID(cmd.Process.Pid, 1000, 1000)
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func procWithExe(t *testing.T, pid int, exe string, files map[string]string) string {
	t.Helper()
	root := fakeProc(t, strconv.Itoa(pid), files)
	if err := os.Symlink(exe, filepath.Join(root, strconv.Itoa(pid), "exe")); err != nil {
		t.Fatal(err)
	}
	return root
}

func TestUnixAttestor(t *testing.T) {
	p := selfPeer(t)
	root := procWithExe(t, p.PID, "/usr/local/bin/server", nil)
	got, err := UnixAttestor{Proc: Proc{Root: root}}.Attest(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	if got.UID == nil || *got.UID != os.Geteuid() || got.GID == nil || *got.GID != os.Getegid() ||
		got.Path != "/usr/local/bin/server" || got.PodUID != "" {
		t.Errorf("Attest = %+v", got)
	}
}

func TestUnixAttestorSkipsThePathNoRegistrationSelects(t *testing.T) {
	p := selfPeer(t)
	// No exe link: reading the path would fail.
	root := fakeProc(t, strconv.Itoa(p.PID), nil)
	a := UnixAttestor{Proc: Proc{Root: root}, PathSelectors: func() bool { return false }}
	got, err := a.Attest(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	if got.UID == nil || *got.UID != os.Geteuid() || got.Path != "" {
		t.Errorf("Attest = %+v, want the uid and no path", got)
	}
	// A path registration added later is not matched by what was attested.
	uid := os.Geteuid()
	regs := []Registration{{Selectors: RegistrationSelectors{UID: &uid, Path: "/usr/local/bin/server"}}}
	if m := Match(regs, got); len(m) != 0 {
		t.Errorf("a path registration matched a caller attested without path: %+v", m)
	}
	// Once a registration selects by path, the path is read again.
	a.PathSelectors = func() bool { return true }
	if _, err := a.Attest(context.Background(), p); !errors.Is(err, ErrNotAttested) {
		t.Fatalf("Attest with path selectors and no exe = %v, want ErrNotAttested", err)
	}
	// The pinned process is still checked without the path.
	gone := reapedPeer(t)
	a.PathSelectors = func() bool { return false }
	if _, err := a.Attest(context.Background(), gone); !errors.Is(err, ErrPeerGone) {
		t.Fatalf("Attest of a reaped peer without path = %v, want ErrPeerGone", err)
	}
}

func TestUnixAttestorRefusesAReusedPID(t *testing.T) {
	// /proc shows a live-looking process under the PID, but the pinned
	// process is gone: what /proc shows may be another process.
	p := reapedPeer(t)
	root := procWithExe(t, p.PID, "/usr/local/bin/server", nil)
	sel, err := UnixAttestor{Proc: Proc{Root: root}}.Attest(context.Background(), p)
	if !errors.Is(err, ErrNotAttested) || !errors.Is(err, ErrPeerGone) || sel.UID != nil || sel.Path != "" {
		t.Fatalf("Attest = %+v, %v; want ErrNotAttested wrapping ErrPeerGone", sel, err)
	}
}

func TestUnixAttestorRefusesAnUnreadableExe(t *testing.T) {
	p := selfPeer(t)
	root := fakeProc(t, strconv.Itoa(p.PID), nil)
	if _, err := (UnixAttestor{Proc: Proc{Root: root}}).Attest(context.Background(), p); !errors.Is(err, ErrNotAttested) {
		t.Fatalf("Attest = %v, want ErrNotAttested", err)
	}
}

func TestKubernetesAttestorRefusesAReusedPIDBeforeResolving(t *testing.T) {
	p := reapedPeer(t)
	root := fakeProc(t, strconv.Itoa(p.PID), map[string]string{
		"cgroup": "0::/kubepods/pod" + testPodUID + "/" + testCID + "\n",
	})
	// A nil Resolver would panic if it were reached.
	sel, err := KubernetesAttestor{Proc: Proc{Root: root}}.Attest(context.Background(), p)
	if !errors.Is(err, ErrNotAttested) || !errors.Is(err, ErrPeerGone) || sel != (Selectors{}) {
		t.Fatalf("Attest = %+v, %v; want ErrNotAttested wrapping ErrPeerGone", sel, err)
	}
}

func TestKubernetesAttestorRefusesHostProcessesWithoutAResolver(t *testing.T) {
	p := selfPeer(t)
	root := fakeProc(t, strconv.Itoa(p.PID), map[string]string{"cgroup": "0::/user.slice\n"})
	_, err := KubernetesAttestor{Proc: Proc{Root: root}}.Attest(context.Background(), p)
	if !errors.Is(err, ErrNotAttested) || !errors.Is(err, ErrNotInPod) {
		t.Fatalf("Attest = %v; want ErrNotAttested wrapping ErrNotInPod", err)
	}
}
