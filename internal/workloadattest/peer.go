package workloadattest

import (
	"errors"
	"fmt"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrPeerGone is wrapped by [Peer.Alive] when the pinned process has exited
// (or the Peer was closed), so anything read about its PID may describe
// another process.
var ErrPeerGone = errors.New("peer process is gone")

// Peer is the process at the other end of a unix socket connection, as the
// kernel recorded it when the peer called connect(2). PID, UID and GID are
// in the agent's namespaces (the agent runs with hostPID).
//
// The process is pinned by a pidfd: code that reads /proc/<PID> must call
// [Peer.Alive] after reading and discard what it read when Alive fails, since
// the PID may have been reused by another process in between.
//
// A Peer is safe for concurrent use. Close releases the pidfd.
type Peer struct {
	PID int
	UID int
	GID int

	mu    sync.RWMutex
	pidfd int // -1 once closed
}

// PeerFromConn returns the peer of conn. The pidfd comes from SO_PEERPIDFD
// (Linux >= 6.5), which refers to the very process that connected. On older
// kernels it falls back to pidfd_open(2) of the SO_PEERCRED PID, which leaves
// a window between connect and pidfd_open in which the PID could be reused;
// checks on the cgroup and exe of the process then still hold for the process
// that the pidfd pins, but not necessarily for the one that connected.
//
// conn is the accepted unix socket, a *net.UnixConn or a wrapper of one that
// gives access to it with SyscallConn.
func PeerFromConn(conn syscall.Conn) (*Peer, error) {
	if conn == nil {
		return nil, errors.New("peer credentials: nil connection")
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("peer credentials: %w", err)
	}
	var (
		cred              *unix.Ucred
		credErr, pidfdErr error
		pidfd             = -1
	)
	ctrlErr := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if credErr != nil {
			return
		}
		pidfd, pidfdErr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PEERPIDFD)
	})
	if ctrlErr != nil {
		return nil, fmt.Errorf("peer credentials: %w", ctrlErr)
	}
	if credErr != nil {
		return nil, fmt.Errorf("peer credentials: SO_PEERCRED: %w", credErr)
	}
	if cred.Pid <= 0 {
		if pidfdErr == nil {
			_ = unix.Close(pidfd)
		}
		return nil, errors.New("peer credentials: peer PID is not visible in the agent's PID namespace (the agent needs hostPID)")
	}
	switch {
	case pidfdErr == nil:
	case errors.Is(pidfdErr, unix.ENOPROTOOPT) || errors.Is(pidfdErr, unix.EINVAL):
		// Kernel without SO_PEERPIDFD.
		pidfd, err = unix.PidfdOpen(int(cred.Pid), 0)
		if err != nil {
			return nil, fmt.Errorf("peer credentials: pidfd_open(%d): %w", cred.Pid, err)
		}
	default:
		return nil, fmt.Errorf("peer credentials: SO_PEERPIDFD for pid %d: %w", cred.Pid, pidfdErr)
	}
	return &Peer{PID: int(cred.Pid), UID: int(cred.Uid), GID: int(cred.Gid), pidfd: pidfd}, nil
}

// newPeerFromPID pins pid with pidfd_open; the caller supplies the uid and
// gid. It exists for tests of processes that are not socket peers.
func newPeerFromPID(pid, uid, gid int) (*Peer, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd_open(%d): %w", pid, err)
	}
	return &Peer{PID: pid, UID: uid, GID: gid, pidfd: fd}, nil
}

// Alive returns nil when the pinned process has not been reaped, so its PID
// still names it; otherwise an error wrapping [ErrPeerGone]. Call it after
// reading /proc/<PID>: a nil result proves that what was read belongs to the
// process that the pidfd pins. A zombie counts as alive: its PID cannot be
// reused before it is reaped, and what /proc showed was still its own.
func (p *Peer) Alive() error {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.pidfd < 0 {
		return fmt.Errorf("%w: pid %d: peer closed", ErrPeerGone, p.PID)
	}
	if err := unix.PidfdSendSignal(p.pidfd, 0, nil, 0); err != nil {
		if errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("%w: pid %d exited", ErrPeerGone, p.PID)
		}
		return fmt.Errorf("%w: pid %d: pidfd_send_signal: %w", ErrPeerGone, p.PID, err)
	}
	return nil
}

// Close releases the pidfd. It is idempotent; Alive fails after Close.
func (p *Peer) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pidfd < 0 {
		return nil
	}
	err := unix.Close(p.pidfd)
	p.pidfd = -1
	if err != nil {
		return fmt.Errorf("closing pidfd of pid %d: %w", p.PID, err)
	}
	return nil
}

// String returns "pid=… uid=… gid=…" for logs.
func (p *Peer) String() string {
	return fmt.Sprintf("pid=%d uid=%d gid=%d", p.PID, p.UID, p.GID)
}
