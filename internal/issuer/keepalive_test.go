package issuer_test

import (
	"net"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/mayfly-pki/mayfly/internal/issuer"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
)

// acceptedConns records the connections a listener accepted.
type acceptedConns struct {
	net.Listener
	conns chan net.Conn
}

func (l acceptedConns) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.conns <- c
	}
	return c, err
}

// TestListenKeepalive reads the socket options of a connection the CA's
// gRPC server (issuer.Listen, issuer.ServerOptions) accepted, as the
// kernel applies them: TCP keepalive on, and enough probes before gRPC's
// TCP_USER_TIMEOUT ends the connection that one lost probe or answer
// does not drop a live agent (Go's default gave one: a probe at 15 s,
// the next at 30 s, past the 20 s user timeout).
func TestListenKeepalive(t *testing.T) {
	lis, err := issuer.Listen(t.Context(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rec := acceptedConns{Listener: lis, conns: make(chan net.Conn, 1)}
	gs := grpc.NewServer(issuer.ServerOptions()...)
	go func() { _ = gs.Serve(rec) }()
	t.Cleanup(gs.Stop)

	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	cc.Connect()
	var conn net.Conn
	select {
	case conn = <-rec.conns:
	case <-time.After(wait.Timeout):
		t.Fatal("no connection accepted")
	}
	raw, err := conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	opt := func(level, name int) int {
		var v int
		var gerr error
		if err := raw.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), level, name) }); err != nil {
			t.Fatal(err)
		}
		if gerr != nil {
			t.Fatal(gerr)
		}
		return v
	}
	// gRPC sets TCP_USER_TIMEOUT once its transport is up (after the
	// HTTP/2 preface), after Accept returned.
	var userTimeout time.Duration
	wait.For(t, "TCP_USER_TIMEOUT set by gRPC", func() bool {
		userTimeout = time.Duration(opt(syscall.IPPROTO_TCP, unix.TCP_USER_TIMEOUT)) * time.Millisecond
		return userTimeout > 0
	})
	if want := issuer.KeepaliveParams().Timeout; userTimeout != want {
		t.Errorf("TCP_USER_TIMEOUT %s, want the keepalive timeout %s", userTimeout, want)
	}
	if opt(syscall.SOL_SOCKET, syscall.SO_KEEPALIVE) != 1 {
		t.Fatal("TCP keepalive is off: a vanished agent stays connected until the CA's own ping, minutes later")
	}
	idle := time.Duration(opt(syscall.IPPROTO_TCP, unix.TCP_KEEPIDLE)) * time.Second
	interval := time.Duration(opt(syscall.IPPROTO_TCP, unix.TCP_KEEPINTVL)) * time.Second
	if want := issuer.TCPKeepalive(); idle != want.Idle || interval != want.Interval {
		t.Errorf("keepalive idle %s interval %s, want %s and %s", idle, interval, want.Idle, want.Interval)
	}
	// The kernel drops the connection when a probe falls due once
	// userTimeout has passed since the peer's last packet: a live
	// connection survives as many lost probes (or answers) as it sends
	// before that, less one.
	probes := 0
	for at := idle; at < userTimeout; at += interval {
		probes++
	}
	if probes < 3 {
		t.Errorf("%d keepalive probes before TCP_USER_TIMEOUT (%s; idle %s, interval %s): one or two lost probes drop a live agent", probes, userTimeout, idle, interval)
	}
}
