package issuer

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/issuerclient"
	"github.com/mayfly-pki/mayfly/internal/policy"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// ServerID is the SPIFFE ID of the CA's serving certificate:
// spiffe://<td>/mayfly/ca. Agents check it instead of a host name.
func ServerID(td spiffeid.TrustDomain) spiffeid.ID {
	id, _ := spiffeid.FromSegments(td, "mayfly", "ca")
	return id
}

// TLSConfig returns the server's TLS configuration: TLS 1.3, a serving
// certificate minted from the current intermediate (renewed at half life
// and on every authority change), and an optional client certificate.
// The handshake only proves that the client holds the certificate's key;
// every method but AttestAgent then requires it to be an agent SVID of our
// trust domain carrying the component policy (pki.OIDComponentPolicy),
// verified against the bundle in force at the call (peerAgent). Refusing it in the handshake instead would fail the call as
// Unavailable, and an agent whose SVID no longer verifies (root rotated
// out, CA clock ahead of the agent's) would retry renewal forever instead
// of attesting anew on Unauthenticated.
func (s *Server) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		ClientAuth:     tls.RequestClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return s.serving.get() },
		// Session tickets are on: an agent reconnecting (after
		// MaxConnectionAge, a network blip) resumes without a full
		// handshake. A resumed session carries the client certificate
		// of its first handshake, and peerAgent checks that one on every
		// call against the bundle and time in force, as for a new one.
		NextProtos: []string{"h2"},
		// Resumption checks the session's certificates against this time.
		Time: s.cfg.Now,
	}
}

// KeepaliveParams is the keepalive of the CA's gRPC server: a ping after
// five minutes of silence, longer than the agents' two
// (issuerclient.KeepaliveTime), so that an agent's own ping keeps the CA
// from pinging it too: with both sides at the same time, their timers
// fire together and a connection carried nearly twice the pings
// (BenchmarkConnCost, 1.7x the CA's idle CPU), each about 90 µs of the
// CA's CPU. The CA pings only an agent that stopped pinging (a hung
// process, other settings). A vanished agent needs no ping: the kernel
// finds it with TCP keepalive probes on every connection the CA accepts
// (Listen, TCPKeepalive), and gRPC sets TCP_USER_TIMEOUT to Timeout, so
// the kernel drops a connection that has answered nothing for 20 s.
// Connections are closed (GOAWAY, then their streams after a grace of
// one minute) after 30 minutes, with the ±10% jitter gRPC adds, so that
// agents spread again over the replicas after a rollout instead of
// staying on those that came up first. Agents reconnect at once and
// resume their TLS session.
func KeepaliveParams() keepalive.ServerParameters {
	return keepalive.ServerParameters{
		Time: 5 * time.Minute, Timeout: 20 * time.Second,
		MaxConnectionAge: 30 * time.Minute, MaxConnectionAgeGrace: time.Minute,
	}
}

// TCPKeepalive returns the TCP keepalive of the connections the CA accepts: a
// probe after 10 s of silence, then every 2 s while none is answered. The
// kernel drops a connection once TCP_USER_TIMEOUT (KeepaliveParams'
// Timeout, 20 s) has passed without an answer, so a vanished agent is
// dropped within 20 s of its last packet, and five probes must be lost in
// a row for a live one to be. Go's default for an accepted connection
// (15 s, then every 15 s) sends one probe before the user timeout ends
// it: a single probe or answer lost dropped a healthy connection, and the
// agent reconnected with a full handshake and a new bundle stream (at
// 10,000 agents, 5% of them in a minute when loopback dropped the
// synchronised probes, docs/performance.md).
func TCPKeepalive() net.KeepAliveConfig {
	return net.KeepAliveConfig{Enable: true, Idle: 10 * time.Second, Interval: 2 * time.Second, Count: 5}
}

// Listen listens on the TCP address addr for the issuer API, with
// TCPKeepalive on every connection it accepts.
func Listen(ctx context.Context, addr string) (net.Listener, error) {
	lc := net.ListenConfig{KeepAliveConfig: TCPKeepalive()}
	return lc.Listen(ctx, "tcp", addr)
}

// MaxRecvMsgSize bounds a message the CA's gRPC server accepts: a
// SignWorkloads batch of MaxBatch items fits.
const MaxRecvMsgSize = 8 << 20

// ServerOptions are the options of the CA's gRPC server beside its
// credentials (grpc.Creds of TLSConfig): internal/app/caapp serves the
// issuer API with them.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(MaxRecvMsgSize),
		// No read buffer of its own per connection (32 KiB by default):
		// the TLS connection under it buffers a record already, and a
		// CA holds one connection per node.
		grpc.ReadBufferSize(0),
		// Fixed flow-control windows (StreamWindow): gRPC's dynamic
		// windows measure the bandwidth with a ping after each message
		// received on a quiet connection, so every SignWorkloads call
		// and every bundle acknowledgement cost the CA a ping round
		// trip of its own (BenchmarkConnCost: the CA's CPU for a push
		// 0.61x without them, for a call 0.88x). The agents fix theirs
		// too (issuerclient.Dial).
		grpc.StaticStreamWindowSize(issuerclient.StreamWindow),
		grpc.StaticConnWindowSize(issuerclient.StreamWindow),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(KeepaliveParams()),
	}
}

// peerAgent returns the agent behind the caller's SVID, checked again
// against the bundle in force now (the connection may be older than a
// rotation, or than the SVID's expiry), then against the CA's current view
// of its node (checkAgent: still allowed, not evicted since it attested).
func (s *Server) peerAgent(ctx context.Context) (agentPeer, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return agentPeer{}, status.Error(codes.Unauthenticated, "no peer information")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return agentPeer{}, status.Error(codes.Unauthenticated, "not a TLS connection")
	}
	if len(info.State.PeerCertificates) == 0 {
		return agentPeer{}, status.Error(codes.Unauthenticated, "this method needs an agent SVID as client certificate; attest first with AttestAgent")
	}
	ap, err := s.verifyPeerChain(info.State.PeerCertificates)
	if err != nil {
		return agentPeer{}, status.Error(codes.Unauthenticated, err.Error())
	}
	if err := s.checkAgent(ap); err != nil {
		return ap, err
	}
	return ap, nil
}

// verifyPeerChain verifies the agent SVID chain of a TLS connection: a
// chain that verified against the authority state in force is not
// verified again while every certificate is valid (verifiedAgents).
func (s *Server) verifyPeerChain(certs []*x509.Certificate) (agentPeer, error) {
	sg, err := s.current()
	if err != nil {
		return agentPeer{}, err
	}
	now := s.cfg.Now()
	key := chainKey(certs)
	if v, ok := s.verified.get(key, sg.loaded, now); ok {
		return agentPeer{node: v.node, leaf: certs[0], attestedAt: v.attestedAt}, nil
	}
	ap, loaded, err := s.verifyAgentAt(certs, now)
	if err != nil {
		return agentPeer{}, err
	}
	s.verified.put(key, certs, loaded, ap.node, ap.attestedAt, now)
	return ap, nil
}

// verifyAgentAt verifies an agent SVID chain (as crypto/tls parsed it) at
// now and returns the authority state whose bundle it verified against.
func (s *Server) verifyAgentAt(certs []*x509.Certificate, now time.Time) (agentPeer, *authority.Loaded, error) {
	sg, err := s.current()
	if err != nil {
		return agentPeer{}, nil, err
	}
	id, err := pki.VerifyX509SVID(certs[0], certs[1:], sg.loaded.Bundle, now, x509.ExtKeyUsageClientAuth)
	if err != nil {
		return agentPeer{}, nil, fmt.Errorf("client certificate is not a valid SVID of %s: %w", s.cfg.TrustDomain, err)
	}
	node, ok := pki.Agent(id)
	if !ok || id.TrustDomain() != s.cfg.TrustDomain {
		return agentPeer{}, nil, fmt.Errorf("client certificate %s is not an agent SVID of %s", id, s.cfg.TrustDomain)
	}
	if !pki.HasComponentPolicy(certs[0]) {
		return agentPeer{}, nil, fmt.Errorf("client certificate %s lacks the mayfly component policy %s: it was not issued to an agent (or predates the policy); attest again", id, pki.OIDComponentPolicy)
	}
	at, err := attestedAtOf(certs[0])
	if err != nil {
		return agentPeer{}, nil, fmt.Errorf("client certificate %s: %w; attest again", id, err)
	}
	return agentPeer{node: node, leaf: certs[0], attestedAt: at}, sg.loaded, nil
}

func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return "unknown"
}

func isStatus(err error) bool {
	_, ok := status.FromError(err)
	var d *Denial
	return ok && !errors.As(err, &d)
}

// servingCert caches the CA's own serving certificate.
type servingCert struct {
	server *Server
	mu     sync.Mutex
	cert   *tls.Certificate
	leaf   *x509.Certificate
	from   *signers
}

const servingTTL = time.Hour

func (c *servingCert) get() (*tls.Certificate, error) {
	s := c.server
	sg, err := s.current()
	if err != nil {
		return nil, err
	}
	now := s.cfg.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cert != nil && c.from.loaded == sg.loaded && now.Before(c.leaf.NotBefore.Add(c.leaf.NotAfter.Sub(c.leaf.NotBefore)/2)) {
		return c.cert, nil
	}
	key, err := pki.GenerateKey(pki.DefaultKeyType, s.cfg.Rand)
	if err != nil {
		return nil, err
	}
	signer := &pki.Signer{Authority: sg.loaded.Authority, Now: s.cfg.Now, Rand: s.cfg.Rand, Options: policy.ServerRules()}
	leaf, der, err := signer.Sign(pki.SignRequest{Kind: pki.KindAgent, PublicKey: key.Public(), ID: ServerID(s.cfg.TrustDomain), DNSNames: s.cfg.ServerDNSNames, TTL: servingTTL})
	if err != nil {
		return nil, fmt.Errorf("minting the CA serving certificate: %w", err)
	}
	c.cert = &tls.Certificate{Certificate: chainDER(der, sg.loaded.Authority), PrivateKey: key, Leaf: leaf}
	c.leaf, c.from = leaf, sg
	return c.cert, nil
}
