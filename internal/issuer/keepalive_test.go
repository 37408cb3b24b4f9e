package issuer_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"

	"github.com/mayfly-pki/mayfly/internal/issuer"
	"github.com/mayfly-pki/mayfly/internal/issuerclient"
	"github.com/mayfly-pki/mayfly/internal/test/childproc"
	"github.com/mayfly-pki/mayfly/internal/test/prereq"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
)

// acceptedConns counts the connections a gRPC server with the CA's
// options (serveCA) accepted, and keeps the first.
type acceptedConns struct {
	accepted atomic.Int32
	conn     atomic.Pointer[net.TCPConn] // the first accepted
}

type countingListener struct {
	net.Listener
	s *acceptedConns
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.s.accepted.Add(1)
		l.s.conn.CompareAndSwap(nil, c.(*net.TCPConn))
	}
	return c, err
}

// serveCA serves a health service with the CA's server options on lis
// until the test ends, and returns a client dialled as an agent dials.
func serveCA(t *testing.T, lis net.Listener) (*acceptedConns, healthpb.HealthClient) {
	t.Helper()
	s := &acceptedConns{}
	gs := grpc.NewServer(issuer.ServerOptions()...)
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go func() { _ = gs.Serve(countingListener{Listener: lis, s: s}) }()
	t.Cleanup(gs.Stop)
	// An agent's keepalive (issuerclient.Dial): it pings after 2 minutes
	// of silence, so within this test only the kernels' probes run.
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: issuerclient.KeepaliveTime, Timeout: 10 * time.Second, PermitWithoutStream: true}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return s, healthpb.NewHealthClient(cc)
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
	srv, client := serveCA(t, lis)
	if _, err := client.Check(t.Context(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	raw, err := srv.conn.Load().SyscallConn()
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

const keepaliveLossEnv = "MAYFLY_KEEPALIVE_LOSS_IPTABLES"

// TestKeepaliveSurvivesLostProbes loses TCP keepalive probes on a real
// kernel, the way a congested or lossy network does, and checks that an
// idle agent connection to the CA's gRPC server stays up. It runs in a
// network namespace of its own (root), where iptables drops every packet
// of a connection while its server-side socket has been quiet for 5 s to
// 15.5 s: the probes of the CA's listener (issuer.Listen) at 10, 12 and
// 14 s are lost, the one at 16 s is answered. A control connection to a
// server on Go's default listener, with the same losses, loses its one
// probe at 15 s and must be dropped by the kernel at 30 s (gRPC's
// TCP_USER_TIMEOUT of 20 s), as the CA's connections were until the fifth
// round (docs/performance.md): without that, the test would prove nothing.
func TestKeepaliveSurvivesLostProbes(t *testing.T) {
	iptables := prereq.Env(t, "MAYFLY_IPTABLES", "make test sets it to iptables (apt-get install iptables)")
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace of its own")
	}
	cmd := childproc.Command("TestKeepaliveLossNamespace", keepaliveLossEnv+"="+iptables)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the run in its own network namespace failed: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}

// tcpInfo is the kernel's view of c: its state and how long since it last
// received an acknowledgement.
func tcpInfo(t *testing.T, c *net.TCPConn) (state uint8, quiet time.Duration) {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var info *unix.TCPInfo
	var gerr error
	if err := raw.Control(func(fd uintptr) { info, gerr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) }); err != nil {
		return unix.BPF_TCP_CLOSE, 0 // closed by the server since
	}
	if gerr != nil {
		t.Fatal(gerr)
	}
	return info.State, time.Duration(info.Last_ack_recv) * time.Millisecond
}

// dropPort adds (-A) or deletes (-D) the rules that drop every packet of
// the TCP connections of port on loopback, both directions.
func dropPort(t *testing.T, iptables, op string, port int) {
	t.Helper()
	for _, dir := range []string{"--sport", "--dport"} {
		out, err := exec.Command(iptables, "-w", op, "OUTPUT", "-o", "lo", "-p", "tcp", dir, strconv.Itoa(port), "-j", "DROP").CombinedOutput()
		if err != nil {
			t.Fatalf("iptables %s %s %d: %v: %s", op, dir, port, err, out)
		}
	}
}

// TestKeepaliveLossNamespace is TestKeepaliveSurvivesLostProbes's child,
// in its own network namespace; skipped when run any other way.
func TestKeepaliveLossNamespace(t *testing.T) {
	iptables := childproc.Getenv(t, keepaliveLossEnv, "TestKeepaliveSurvivesLostProbes")
	loUp(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	caLis, err := issuer.Listen(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	goLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	type side struct {
		name       string
		port       int
		srv        *acceptedConns
		client     healthpb.HealthClient
		dropping   bool
		dropped    bool
		wantClosed bool
	}
	sides := []*side{
		{name: "issuer.Listen", port: caLis.Addr().(*net.TCPAddr).Port},
		{name: "Go's default listener (control)", port: goLis.Addr().(*net.TCPAddr).Port, wantClosed: true},
	}
	sides[0].srv, sides[0].client = serveCA(t, caLis)
	sides[1].srv, sides[1].client = serveCA(t, goLis)
	for _, s := range sides {
		if _, err := s.client.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
	}
	t.Cleanup(func() {
		for _, s := range sides {
			if s.dropping {
				dropPort(t, iptables, "-D", s.port)
			}
		}
	})

	// Drop each connection's packets while it is quiet, until the kernel
	// has dropped the control connection (its second probe, at 30 s, is
	// past the user timeout); the CA's connection has had its losses by
	// then and answered a probe since.
	// Both connections lose every packet while quiet from 5 s to 15.5 s:
	// the CA's probes at 10, 12, 14 s (its next, at 16 s, is answered;
	// the kernel would drop it at 20 s), the control's at 15 s.
	const startDrop, stopDrop = 5 * time.Second, 15500 * time.Millisecond
	control := sides[1]
	for {
		for _, s := range sides {
			_, quiet := tcpInfo(t, s.srv.conn.Load())
			switch {
			case !s.dropped && !s.dropping && quiet >= startDrop:
				dropPort(t, iptables, "-A", s.port)
				s.dropping = true
			case s.dropping && quiet >= stopDrop:
				dropPort(t, iptables, "-D", s.port)
				s.dropping, s.dropped = false, true
				t.Logf("%s: packets dropped while the connection was quiet %s-%s", s.name, startDrop, quiet)
			}
		}
		if state, _ := tcpInfo(t, control.srv.conn.Load()); state != unix.BPF_TCP_ESTABLISHED && control.dropped {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("the control connection was not dropped within 2 minutes: the probes were not lost, and the test proves nothing")
		case <-time.After(50 * time.Millisecond): // sampling the kernel's view of the sockets
		}
	}

	for _, s := range sides {
		state, quiet := tcpInfo(t, s.srv.conn.Load())
		closed := state != unix.BPF_TCP_ESTABLISHED
		t.Logf("%s: established %v after %s quiet, %d connections accepted", s.name, !closed, quiet, s.srv.accepted.Load())
		if closed != s.wantClosed {
			t.Errorf("%s: connection closed = %v, want %v", s.name, closed, s.wantClosed)
		}
		// The agent's next call: on the same connection, or a new one.
		if _, err := s.client.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			t.Errorf("%s: call after the loss: %v", s.name, err)
		}
		want := int32(1)
		if s.wantClosed {
			want = 2
		}
		if got := s.srv.accepted.Load(); got != want {
			t.Errorf("%s: %d connections accepted, want %d", s.name, got, want)
		}
	}
}

// loUp brings up this network namespace's loopback interface.
func loUp(t *testing.T) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		t.Fatal(fmt.Errorf("lo flags: %w", err))
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		t.Fatal(fmt.Errorf("lo up: %w", err))
	}
}
