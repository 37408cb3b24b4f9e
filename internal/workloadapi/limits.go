package workloadapi

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
)

// Limits bound what the callers of the socket, which every local user may
// reach, can hold of the agent: connections in total and per uid, streams
// per connection, header and message sizes, and how long a connection may
// stay without a handshake or without a call. A zero field takes its
// default from DefaultLimits.
//
// The connection limits are enforced when the connection is accepted,
// before any HTTP/2 work: a connection over a limit is closed at once,
// counted in mayfly_agent_workload_api_rejected_connections_total{reason}
// and logged at most once per reason per LogInterval.
type Limits struct {
	// MaxConnections is the number of connections open at once, all
	// callers together. Each holds two descriptors of the agent (the
	// socket and the caller's pidfd).
	MaxConnections int
	// MaxConnectionsPerUID is the number of connections open at once from
	// one uid (as SO_PEERCRED reports it at connect), root included.
	MaxConnectionsPerUID int
	// MaxStreamsPerConnection is the number of concurrent calls on one
	// connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS); more are
	// refused by the HTTP/2 layer.
	MaxStreamsPerConnection uint32
	// MaxHeaderListSize is the largest header list (metadata) of a call, in
	// bytes; a call with more is reset.
	MaxHeaderListSize uint32
	// MaxRecvMsgSize is the largest request message, in bytes; a larger
	// one ends the call with ResourceExhausted.
	MaxRecvMsgSize int
	// HandshakeTimeout closes a connection that has not sent the HTTP/2
	// preface and settings within it of being accepted.
	HandshakeTimeout time.Duration
	// IdleTimeout closes a connection that has had no call open for that
	// long, the time from its handshake to its first call included.
	IdleTimeout time.Duration
	// LogInterval is the least time between two log lines about refused
	// connections for the same reason.
	LogInterval time.Duration
}

// DefaultLimits returns the limits used for zero fields.
//
//   - 4096 connections keep 8192 descriptors for connections; the agent
//     lowers it when its RLIMIT_NOFILE is smaller (see the agent's docs).
//   - 256 per uid: in Kubernetes every container running as root is uid 0
//     on the host, and a node's 110 pods with a client or two each must fit.
//   - 16 streams: a go-spiffe client holds at most three watches at once
//     (X.509 context, X.509 bundles, JWT bundles).
//   - 16 KiB of headers and 64 KiB per request message: a request is an
//     empty message or a JWT with an audience, headers a few hundred bytes.
func DefaultLimits() Limits {
	return Limits{
		MaxConnections:          4096,
		MaxConnectionsPerUID:    256,
		MaxStreamsPerConnection: 16,
		MaxHeaderListSize:       16 << 10,
		MaxRecvMsgSize:          64 << 10,
		HandshakeTimeout:        10 * time.Second,
		IdleTimeout:             5 * time.Minute,
		LogInterval:             time.Minute,
	}
}

// withDefaults fills the zero fields of l from DefaultLimits.
func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	l.MaxConnections = cmp.Or(l.MaxConnections, d.MaxConnections)
	l.MaxConnectionsPerUID = cmp.Or(l.MaxConnectionsPerUID, d.MaxConnectionsPerUID)
	l.MaxStreamsPerConnection = cmp.Or(l.MaxStreamsPerConnection, d.MaxStreamsPerConnection)
	l.MaxHeaderListSize = cmp.Or(l.MaxHeaderListSize, d.MaxHeaderListSize)
	l.MaxRecvMsgSize = cmp.Or(l.MaxRecvMsgSize, d.MaxRecvMsgSize)
	l.HandshakeTimeout = cmp.Or(l.HandshakeTimeout, d.HandshakeTimeout)
	l.IdleTimeout = cmp.Or(l.IdleTimeout, d.IdleTimeout)
	l.LogInterval = cmp.Or(l.LogInterval, d.LogInterval)
	return l
}

// check reports the first field out of range, after defaults.
func (l Limits) check() error {
	switch {
	case l.MaxConnections < 0:
		return fmt.Errorf("Limits.MaxConnections: must not be negative, got %d", l.MaxConnections)
	case l.MaxConnectionsPerUID < 0:
		return fmt.Errorf("Limits.MaxConnectionsPerUID: must not be negative, got %d", l.MaxConnectionsPerUID)
	case l.MaxConnectionsPerUID > l.MaxConnections:
		return fmt.Errorf("Limits.MaxConnectionsPerUID: must not exceed MaxConnections (%d), got %d", l.MaxConnections, l.MaxConnectionsPerUID)
	case l.MaxRecvMsgSize < 0:
		return fmt.Errorf("Limits.MaxRecvMsgSize: must not be negative, got %d", l.MaxRecvMsgSize)
	case l.HandshakeTimeout < 0, l.IdleTimeout < 0, l.LogInterval < 0:
		return errors.New("Limits: timeouts and LogInterval must not be negative")
	}
	return nil
}

// ServerOptions returns the gRPC server options that enforce the limits
// past the accept: pass them to grpc.NewServer with the server's own.
func (s *Server) ServerOptions() []grpc.ServerOption {
	l := s.limits
	return []grpc.ServerOption{
		grpc.MaxConcurrentStreams(l.MaxStreamsPerConnection),
		grpc.MaxHeaderListSize(l.MaxHeaderListSize),
		grpc.MaxRecvMsgSize(l.MaxRecvMsgSize),
		grpc.ConnectionTimeout(l.HandshakeTimeout),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: l.IdleTimeout}),
		// Requests are tiny; the 32 KiB default read buffer per
		// connection would be most of a held connection's memory. (The
		// write buffer goes back to a pool after each flush by default.)
		grpc.ReadBufferSize(4 << 10),
		// A stream is served by one of a few long-lived goroutines when
		// one is free (else a new one, as by default): a fetch then runs
		// on a grown stack instead of growing a fresh one through the
		// interceptor, attestation and send, which the bare service's
		// handler hardly pays.
		grpc.NumStreamWorkers(streamWorkers),
	}
}

// streamWorkers is the number of long-lived stream goroutines; the
// Workload API serves a node's workloads on a few cores.
const streamWorkers = 4

// Reasons a connection is refused at accept, the label of the rejected
// connections metric.
const (
	RejectTotal           = "max_connections"
	RejectPerUID          = "max_connections_per_uid"
	RejectPeerCredentials = "peer_credentials"
)

// LimitListener returns l with the connection limits enforced at accept.
// Serve the Workload API on the result; closing it closes l.
func (s *Server) LimitListener(l net.Listener) net.Listener {
	var raw syscall.RawConn
	if ul, ok := l.(*net.UnixListener); ok {
		raw, _ = ul.SyscallConn() // nil on error: the portable path
	}
	return &limitListener{
		Listener: l,
		raw:      raw,
		limits:   s.limits,
		metrics:  s.metrics,
		perUID:   map[uint32]int{},
		rejects:  &rejectLog{log: s.log, now: s.now, interval: s.limits.LogInterval, last: map[string]rejectLine{}},
	}
}

// limitListener counts the open connections it returned, by uid, and
// closes new ones over a limit before returning them to gRPC.
type limitListener struct {
	net.Listener
	raw     syscall.RawConn // of a unix listener, for acceptQueued
	limits  Limits
	metrics *metrics
	rejects *rejectLog

	mu     sync.Mutex
	total  int
	perUID map[uint32]int
}

// Accept returns the next connection within the limits; refused ones are
// counted, then closed, and Accept waits for the next.
//
// On a unix listener it first takes what the kernel has queued straight
// from the descriptor: a refused connection then costs accept4, getsockopt
// and close, with no poller registration and no net.Conn, so the agent
// drains the accept queue, which every user shares, faster than a flood
// fills it. When the queue is empty it waits in the listener's own Accept.
func (l *limitListener) Accept() (net.Conn, error) {
	for {
		if l.raw != nil {
			c, empty, err := l.acceptQueued(queuedBatch)
			if c != nil || err != nil {
				return c, err
			}
			if !empty {
				continue
			}
		}
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if c, ok := l.admit(c); ok {
			return c, nil
		}
	}
}

// admit returns c within the limits, or closes it.
func (l *limitListener) admit(c net.Conn) (net.Conn, bool) {
	sc, ok := c.(syscall.Conn)
	if !ok || c.LocalAddr().Network() != "unix" {
		l.reject(RejectPeerCredentials, -1, fmt.Errorf("connection is a %T, not a unix socket", c))
		_ = c.Close()
		return nil, false
	}
	uid, err := peerUID(sc)
	if err != nil {
		l.reject(RejectPeerCredentials, -1, err)
		_ = c.Close()
		return nil, false
	}
	if reason := l.acquire(uid); reason != "" {
		l.reject(reason, int(uid), nil)
		_ = c.Close()
		return nil, false
	}
	return l.opened(c, sc, uid), true
}

// queuedBatch is how many connections acceptQueued refuses in one go
// before it lets go of the descriptor, so that closing the listener never
// waits on a flood.
const queuedBatch = 1024

// acceptQueued accepts from the (non-blocking) listening descriptor until
// a connection is admitted, an error, the queue is empty (empty is true),
// or it has refused batch connections.
func (l *limitListener) acceptQueued(batch int) (conn net.Conn, empty bool, err error) {
	var opErr error
	err = l.raw.Control(func(lfd uintptr) {
		for range batch {
			fd, _, err := unix.Accept4(int(lfd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
			switch {
			case errors.Is(err, unix.EAGAIN):
				empty = true
				return
			case errors.Is(err, unix.EINTR), errors.Is(err, unix.ECONNABORTED):
				continue
			case err != nil:
				// EMFILE and the like: net.OpError tells gRPC's accept
				// loop whether to back off and retry.
				opErr = &net.OpError{Op: "accept", Net: "unix", Addr: l.Addr(), Err: os.NewSyscallError("accept4", err)}
				return
			}
			cred, err := unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
			if err != nil {
				l.reject(RejectPeerCredentials, -1, fmt.Errorf("peer credentials: SO_PEERCRED: %w", err))
				_ = unix.Close(fd)
				continue
			}
			uid := cred.Uid
			if reason := l.acquire(uid); reason != "" {
				l.reject(reason, int(uid), nil)
				_ = unix.Close(fd)
				continue
			}
			f := os.NewFile(uintptr(fd), "")
			c, err := net.FileConn(f) // a dup of fd
			_ = f.Close()
			if err != nil {
				l.release(uid)
				opErr = &net.OpError{Op: "accept", Net: "unix", Addr: l.Addr(), Err: err}
				return
			}
			conn = l.opened(c, c.(syscall.Conn), uid)
			return
		}
	})
	if err != nil {
		return nil, false, err
	}
	return conn, empty, opErr
}

// acquire counts a new connection of uid, or returns why it is refused.
func (l *limitListener) acquire(uid uint32) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.total >= l.limits.MaxConnections:
		return RejectTotal
	case l.perUID[uid] >= l.limits.MaxConnectionsPerUID:
		return RejectPerUID
	}
	l.total++
	l.perUID[uid]++
	return ""
}

// release uncounts a connection of uid.
func (l *limitListener) release(uid uint32) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.perUID[uid]--; l.perUID[uid] <= 0 {
		delete(l.perUID, uid)
	}
}

// opened returns c, counted as open until it is closed.
func (l *limitListener) opened(c net.Conn, raw syscall.Conn, uid uint32) net.Conn {
	l.metrics.connections.Inc()
	return &limitedConn{Conn: c, raw: raw, release: func() {
		l.release(uid)
		l.metrics.connections.Dec()
	}}
}

func (l *limitListener) reject(reason string, uid int, err error) {
	l.metrics.rejectedBy[reason].Inc()
	l.rejects.note(reason, uid, err, l.limits)
}

// peerUID reads the uid of the peer from SO_PEERCRED, as the kernel
// recorded it at connect.
func peerUID(c syscall.Conn) (uint32, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, fmt.Errorf("peer credentials: %w", err)
	}
	if credErr != nil {
		return 0, fmt.Errorf("peer credentials: SO_PEERCRED: %w", credErr)
	}
	return cred.Uid, nil
}

// limitedConn frees its place when closed (once, however often gRPC and the
// credentials close it). It keeps the socket reachable through SyscallConn
// for the peer credentials of the handshake.
type limitedConn struct {
	net.Conn
	raw     syscall.Conn
	release func()
	once    sync.Once
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// SyscallConn gives the handshake access to the socket's peer credentials.
func (c *limitedConn) SyscallConn() (syscall.RawConn, error) { return c.raw.SyscallConn() }

// rejectLog writes one line per reason per interval, with the number of
// connections refused for that reason since the previous line: a flood is
// visible without each refused connection costing a log line.
type rejectLog struct {
	log      *slog.Logger
	now      func() time.Time
	interval time.Duration

	mu   sync.Mutex
	last map[string]rejectLine
}

type rejectLine struct {
	at         time.Time
	suppressed int
}

func (r *rejectLog) note(reason string, uid int, err error, l Limits) {
	now := r.now()
	r.mu.Lock()
	line, seen := r.last[reason]
	if seen && now.Sub(line.at) < r.interval {
		line.suppressed++
		r.last[reason] = line
		r.mu.Unlock()
		return
	}
	r.last[reason] = rejectLine{at: now}
	r.mu.Unlock()
	attrs := []any{"reason", reason, "refused_since_last_line", line.suppressed + 1}
	switch reason {
	case RejectTotal:
		attrs = append(attrs, "uid", uid, "max_connections", l.MaxConnections)
	case RejectPerUID:
		attrs = append(attrs, "uid", uid, "max_connections_per_uid", l.MaxConnectionsPerUID)
	default:
		attrs = append(attrs, "error", err)
	}
	r.log.Warn("Workload API connection refused at accept; further ones for this reason are counted, not logged, for "+r.interval.String(), attrs...)
}
