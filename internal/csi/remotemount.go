package csi

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// The mount helper lets the part of the agent that holds keys run without
// privilege: a separate privileged process (`agent mounter`, its own
// container) makes the bind mounts of socket mode on request, and holds no
// key, token or SVID. The agent talks to it through a RemoteMounter over a
// unix socket in a directory the two containers share. docs/security.md
// has the threat model.
//
// The protocol is one JSON request and one JSON answer per connection:
// {"op":"bind"|"unmount"|"isMountPoint","source":...,"target":...} ->
// {"mounted":bool,"error":"..."}.

// maxMountRequest bounds one request (two paths).
const maxMountRequest = 16 << 10

type mountRequest struct {
	Op     string `json:"op"`
	Source string `json:"source,omitempty"`
	Target string `json:"target"`
}

type mountAnswer struct {
	Mounted bool   `json:"mounted,omitempty"`
	Error   string `json:"error,omitempty"`
}

// MountServer serves a Mounter to the agent. It mounts only Source (the
// agent's socket directory) and only onto CSI target paths under
// KubeletDir, and answers only connections from its own uid.
type MountServer struct {
	Mounter    Mounter
	Source     string
	KubeletDir string
}

// Serve answers connections on lis until ctx is done.
func (s *MountServer) Serve(ctx context.Context, lis net.Listener) error {
	if s.Mounter == nil || s.Source == "" || s.KubeletDir == "" {
		return errors.New("mount server: Mounter, Source and KubeletDir are required")
	}
	go func() {
		<-ctx.Done()
		_ = lis.Close()
	}()
	for {
		conn, err := lis.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("mount server: %w", err)
		}
		go s.handle(conn)
	}
}

func (s *MountServer) handle(conn net.Conn) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	answer := func(a mountAnswer) { _ = json.NewEncoder(conn).Encode(a) }
	if err := sameUID(conn); err != nil {
		answer(mountAnswer{Error: err.Error()})
		return
	}
	var req mountRequest
	if err := json.NewDecoder(io.LimitReader(conn, maxMountRequest)).Decode(&req); err != nil {
		answer(mountAnswer{Error: "malformed request: " + err.Error()})
		return
	}
	mounted, err := s.do(req)
	if err != nil {
		answer(mountAnswer{Error: err.Error()})
		return
	}
	answer(mountAnswer{Mounted: mounted})
}

// do checks and performs one request.
func (s *MountServer) do(req mountRequest) (bool, error) {
	t, err := checkTarget(req.Target, s.KubeletDir)
	if err != nil {
		return false, err
	}
	switch req.Op {
	case "bind":
		if filepath.Clean(req.Source) != filepath.Clean(s.Source) {
			return false, fmt.Errorf("source %q: the mount helper mounts only %s", req.Source, s.Source)
		}
		if err := checkNoSymlinks(t, s.KubeletDir); err != nil {
			return false, err
		}
		return false, s.Mounter.BindReadOnly(s.Source, t.path)
	case "unmount":
		return false, s.Mounter.Unmount(t.path)
	case "isMountPoint":
		return s.Mounter.IsMountPoint(t.path)
	}
	return false, fmt.Errorf("op %q: want bind, unmount or isMountPoint", req.Op)
}

// sameUID refuses a peer of another uid than this process's.
func sameUID(conn net.Conn) error {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return errors.New("not a unix socket")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return err
	}
	if credErr != nil {
		return fmt.Errorf("peer credentials: %w", credErr)
	}
	if int(cred.Uid) != os.Getuid() {
		return fmt.Errorf("uid %d may not use the mount helper", cred.Uid)
	}
	return nil
}

// RemoteMounter is the Mounter of an agent that runs without privilege: it
// asks the mount helper at Socket.
type RemoteMounter struct {
	Socket string
	// Timeout bounds one request (default 30s).
	Timeout time.Duration
}

func (m RemoteMounter) call(req mountRequest) (bool, error) {
	timeout := m.Timeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	conn, err := net.DialTimeout("unix", m.Socket, timeout)
	if err != nil {
		return false, fmt.Errorf("mount helper at %s (is the mounter container running?): %w", m.Socket, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	// The helper may refuse (another uid) and close before it reads the
	// request: a failed write then still leaves its answer to read.
	writeErr := json.NewEncoder(conn).Encode(req)
	var a mountAnswer
	if err := json.NewDecoder(bufio.NewReader(io.LimitReader(conn, maxMountRequest))).Decode(&a); err != nil {
		if writeErr != nil {
			err = writeErr
		}
		return false, fmt.Errorf("mount helper: %w", err)
	}
	if a.Error != "" {
		return false, fmt.Errorf("mount helper: %s", a.Error)
	}
	return a.Mounted, nil
}

// BindReadOnly asks the helper to bind-mount source onto target, read-only.
func (m RemoteMounter) BindReadOnly(source, target string) error {
	_, err := m.call(mountRequest{Op: "bind", Source: source, Target: target})
	return err
}

// Unmount asks the helper to unmount target.
func (m RemoteMounter) Unmount(target string) error {
	_, err := m.call(mountRequest{Op: "unmount", Target: target})
	return err
}

// IsMountPoint asks the helper whether something is mounted at target (in
// its mount namespace, the one the kubelet sees).
func (m RemoteMounter) IsMountPoint(target string) (bool, error) {
	return m.call(mountRequest{Op: "isMountPoint", Target: target})
}
