package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// StatusSocketName is the file name of the status socket in a process's
// state directory (the agent's dataDir, the standalone CA's directory).
const StatusSocketName = "status.sock"

// StatusServer serves GET /status of a running ca or agent on a unix
// socket, not on the TCP health port: the status names every identity and
// serial the process holds, which is for the operator, not for anyone who
// can reach localhost. The socket is mode 0600 in a directory that is
// created 0700, and every connection's peer (SO_PEERCRED) must be root or
// the process's own user; others are closed at once.
type StatusServer struct {
	// Path is the socket's path.
	Path string
	// Status returns the document to serve as JSON.
	Status func() any
	Logger *slog.Logger

	// allow decides on a peer's uid; nil allows root and the process's
	// effective uid (tests replace it).
	allow func(uid uint32) bool
}

// Start serves until ctx is done, then removes the socket.
func (s *StatusServer) Start(ctx context.Context) error {
	log := s.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	lis, err := listenStatus(s.Path)
	if err != nil {
		return err
	}
	allow := s.allow
	if allow == nil {
		euid := uint32(os.Geteuid()) //nolint:gosec // uids fit in uint32
		allow = func(uid uint32) bool { return uid == 0 || uid == euid }
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			http.Error(w, "GET only", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(s.Status())
	})
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
		case <-done:
		}
		// The run context is done by now: shut down on a detached one.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = hs.Shutdown(sctx)
	}()
	defer close(done)
	log.Info("status listening", "socket", s.Path)
	err = hs.Serve(peerListener{UnixListener: lis, allow: allow, log: log})
	_ = os.Remove(s.Path)
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("status socket %s: %w", s.Path, err)
	}
	return nil
}

// listenStatus creates the socket at path, mode 0600, replacing a stale
// socket (never another kind of file) left by an earlier run.
func listenStatus(path string) (*net.UnixListener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("status socket: %w", err)
	}
	// Whoever may write to the directory could put another socket in its
	// place: it must be the process's own and writable by it alone.
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return nil, fmt.Errorf("status socket: %s: %w", dir, err)
	}
	if int(st.Uid) != os.Geteuid() || st.Mode&0o022 != 0 {
		return nil, fmt.Errorf("status socket: directory %s must belong to uid %d and be writable by it alone (it is uid %d, mode %o)", dir, os.Geteuid(), st.Uid, st.Mode&0o7777)
	}
	if st, err := os.Lstat(path); err == nil {
		if st.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("status socket: %s exists and is not a socket; remove it", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("status socket: %w", err)
		}
	}
	// Bound under a temporary name and renamed once it is 0600, so the
	// socket never appears at path with another mode.
	tmp := filepath.Join(dir, fmt.Sprintf(".%s.%d.tmp", filepath.Base(path), os.Getpid()))
	_ = os.Remove(tmp)
	lis, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("status socket: %w", err)
	}
	lis.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		_ = lis.Close()
		_ = os.Remove(tmp)
		return nil, fmt.Errorf("status socket: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = lis.Close()
		_ = os.Remove(tmp)
		return nil, fmt.Errorf("status socket: %w", err)
	}
	return lis, nil
}

// peerListener accepts connections only from peers whose uid allow takes.
type peerListener struct {
	*net.UnixListener
	allow func(uint32) bool
	log   *slog.Logger
}

func (l peerListener) Accept() (net.Conn, error) {
	for {
		conn, err := l.AcceptUnix()
		if err != nil {
			return nil, err
		}
		uid, err := peerUID(conn)
		if err == nil && l.allow(uid) {
			return conn, nil
		}
		if err != nil {
			l.log.Warn("status: refused a connection without peer credentials", "error", err)
		} else {
			l.log.Warn("status: refused a connection from another user", "uid", uid)
		}
		_ = conn.Close()
	}
}

func peerUID(conn *net.UnixConn) (uint32, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if credErr != nil {
		return 0, fmt.Errorf("SO_PEERCRED: %w", credErr)
	}
	return cred.Uid, nil
}

// FetchStatus reads /status of a running ca or agent from its status
// socket into v.
func FetchStatus(socket, who string, v any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+who+"/status", nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("reading the %s's status socket %s (is it running? the socket answers root and the %s's own user only): %w", who, socket, who, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("the %s answered %s", who, resp.Status)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 8<<20)).Decode(v); err != nil {
		return fmt.Errorf("decoding the %s's status: %w", who, err)
	}
	return nil
}
