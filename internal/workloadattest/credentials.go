package workloadattest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// AuthType is the gRPC AuthInfo type of [AuthInfo].
const AuthType = "mayfly-unix-peer"

// AuthInfo is the gRPC credentials.AuthInfo of a connection accepted with
// [NewCredentials]. It carries the pinned [Peer] of the connection, valid
// until the connection closes.
type AuthInfo struct {
	credentials.CommonAuthInfo
	Peer *Peer
}

// AuthType returns [AuthType].
func (AuthInfo) AuthType() string { return AuthType }

// NewCredentials returns gRPC server transport credentials for a unix socket
// listener: the handshake reads the peer's credentials with [PeerFromConn]
// and fails when it cannot, so no RPC runs without a pinned peer. The pidfd
// is released when gRPC closes the connection. They are server-side only.
func NewCredentials() credentials.TransportCredentials {
	return unixCredentials{}
}

type unixCredentials struct{}

func (unixCredentials) ClientHandshake(_ context.Context, _ string, _ net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("attest: unix peer credentials are server-side only")
}

func (unixCredentials) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	// A listener wrapper (the Workload API's connection limits) may hand
	// over its own type; what counts is a unix socket underneath.
	sc, ok := conn.(syscall.Conn)
	if !ok || conn.LocalAddr().Network() != "unix" {
		return nil, nil, fmt.Errorf("attest: connection is a %T, not a unix socket", conn)
	}
	p, err := PeerFromConn(sc)
	if err != nil {
		return nil, nil, err
	}
	info := AuthInfo{
		// A local unix socket is as private as the kernel, like gRPC's own
		// local credentials say of UDS.
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		Peer:           p,
	}
	return &peerConn{Conn: conn, peer: p}, info, nil
}

func (unixCredentials) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: AuthType}
}

func (c unixCredentials) Clone() credentials.TransportCredentials { return c }

func (unixCredentials) OverrideServerName(string) error { return nil }

// peerConn closes the peer's pidfd with the connection.
type peerConn struct {
	net.Conn
	peer *Peer
	once sync.Once
}

func (c *peerConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { _ = c.peer.Close() })
	return err
}

// PeerFromContext returns the [Peer] of a gRPC request on a server that uses
// [NewCredentials].
func PeerFromContext(ctx context.Context) (*Peer, bool) {
	pr, ok := peer.FromContext(ctx)
	if !ok || pr == nil {
		return nil, false
	}
	switch ai := pr.AuthInfo.(type) {
	case AuthInfo:
		return ai.Peer, ai.Peer != nil
	case *AuthInfo:
		if ai == nil {
			return nil, false
		}
		return ai.Peer, ai.Peer != nil
	}
	return nil, false
}
