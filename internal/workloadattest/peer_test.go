package workloadattest

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// unixPair returns both ends of a connection on a listener in a temp dir.
func unixPair(t *testing.T) (server, client *net.UnixConn) {
	t.Helper()
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(t.TempDir(), "s.sock"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	client, err = net.DialUnix("unix", nil, l.Addr().(*net.UnixAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	server, err = l.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	return server, client
}

func TestPeerFromConn(t *testing.T) {
	server, _ := unixPair(t)
	p, err := PeerFromConn(server)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if p.PID != os.Getpid() || p.UID != os.Geteuid() || p.GID != os.Getegid() {
		t.Errorf("peer = %s, want pid=%d uid=%d gid=%d", p, os.Getpid(), os.Geteuid(), os.Getegid())
	}
	// The pidfd pins our own process.
	fdinfo, err := os.ReadFile("/proc/self/fdinfo/" + strconv.Itoa(p.pidfd))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(fdinfo), "\nPid:\t"+strconv.Itoa(os.Getpid())+"\n") {
		t.Errorf("pidfd %d is not a pidfd of our pid %d:\n%s", p.pidfd, os.Getpid(), fdinfo)
	}
	if err := p.Alive(); err != nil {
		t.Errorf("Alive() of our own process = %v", err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close() = %v, want nil", err)
	}
	if err := p.Alive(); !errors.Is(err, ErrPeerGone) {
		t.Errorf("Alive() after Close = %v, want ErrPeerGone", err)
	}
}

func TestPeerFromConnRejectsNil(t *testing.T) {
	if _, err := PeerFromConn(nil); err == nil {
		t.Fatal("PeerFromConn(nil) succeeded")
	}
}

func TestAliveFailsOnceThePinnedProcessIsReaped(t *testing.T) {
	cmd := exec.Command("/bin/sh", "-c", "exec sleep 30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p, err := newPeerFromPID(cmd.Process.Pid, os.Getuid(), os.Getgid())
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.Alive(); err != nil {
		t.Fatalf("Alive() of a running child = %v", err)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait() // reaped: its PID may now be reused
	if err := p.Alive(); !errors.Is(err, ErrPeerGone) {
		t.Fatalf("Alive() of a reaped child = %v, want ErrPeerGone", err)
	}
}

func TestCredentialsGiveHandlersThePeer(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "api.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	peers := make(chan *Peer, 1)
	srv := grpc.NewServer(grpc.Creds(NewCredentials()),
		grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			p, ok := PeerFromContext(ctx)
			if !ok {
				t.Error("no peer in the request context")
			} else {
				peers <- p
			}
			return h(ctx, req)
		}))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)

	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	p := <-peers
	if p.PID != os.Getpid() || p.UID != os.Geteuid() {
		t.Errorf("peer = %s, want our pid %d uid %d", p, os.Getpid(), os.Geteuid())
	}
	if err := p.Alive(); err != nil {
		t.Errorf("Alive() during the connection = %v", err)
	}
	cc.Close()
	srv.Stop() // closes the server side of the connection, and the pidfd with it
	if err := p.Alive(); !errors.Is(err, ErrPeerGone) {
		t.Errorf("Alive() after the connection closed = %v, want ErrPeerGone (pidfd released)", err)
	}
}

func TestPeerFromContextWithoutPeer(t *testing.T) {
	if p, ok := PeerFromContext(context.Background()); ok || p != nil {
		t.Errorf("PeerFromContext(background) = %v, %v", p, ok)
	}
}

func TestClientHandshakeIsRefused(t *testing.T) {
	_, client := unixPair(t)
	if _, _, err := NewCredentials().ClientHandshake(context.Background(), "x", client); err == nil {
		t.Fatal("ClientHandshake succeeded")
	}
}

func TestServerHandshakeRejectsNonUnixConn(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if _, _, err := NewCredentials().ServerHandshake(a); err == nil {
		t.Fatal("ServerHandshake on a pipe succeeded")
	}
}

func TestServerHandshakeRejectsTCPConn(t *testing.T) {
	// A TCP connection has a descriptor too, but no peer credentials.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, _, err := NewCredentials().ServerHandshake(c); err == nil || !strings.Contains(err.Error(), "not a unix socket") {
		t.Fatalf("ServerHandshake on TCP = %v, want an error naming a unix socket", err)
	}
}

// wrappedConn is a listener wrapper's connection type, as the Workload
// API's connection limits hand over.
type wrappedConn struct {
	net.Conn
	raw *net.UnixConn
}

func (c wrappedConn) SyscallConn() (syscall.RawConn, error) { return c.raw.SyscallConn() }

func TestServerHandshakeReadsThePeerThroughAWrapper(t *testing.T) {
	server, _ := unixPair(t)
	conn, info, err := NewCredentials().ServerHandshake(wrappedConn{Conn: server, raw: server})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if p := info.(AuthInfo).Peer; p.PID != os.Getpid() {
		t.Fatalf("peer %s, want our pid %d", p, os.Getpid())
	}
}
