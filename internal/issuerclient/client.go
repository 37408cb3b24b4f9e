// Package issuerclient dials the CA's issuer API the way an agent does: TLS
// 1.3, the CA authenticated by its SPIFFE ID (spiffe://<td>/mayfly/ca) and
// the mayfly component policy (pki.OIDComponentPolicy, which no workload
// certificate carries) against a trust bundle that may change, and an
// optional client certificate (the agent SVID) that may rotate.
package issuerclient

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// Config of a connection to the CA.
type Config struct {
	Address     string
	TrustDomain spiffeid.TrustDomain
	// Bundle returns the roots that authenticate the CA now.
	Bundle func() []*x509.Certificate
	// Certificate returns the client certificate (agent SVID) to present,
	// or nil before attestation.
	Certificate func() *tls.Certificate
	Now         func() time.Time
	// Sessions, when set, lets reconnections resume their TLS session. A
	// resumed session presents the client certificate of its first
	// handshake, so one cache must serve one client certificate: Dial
	// gives each connection its own when Certificate is set.
	Sessions tls.ClientSessionCache
}

// TLSConfig returns the client TLS configuration of c.
func (c Config) TLSConfig() *tls.Config {
	now := c.Now
	if now == nil {
		now = time.Now
	}
	serverID := ServerID(c.TrustDomain)
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		ClientSessionCache: c.Sessions,
		// Resumption checks the session's certificate against this time.
		Time: now,
		// The CA is authenticated by its SPIFFE ID below, not by host name.
		InsecureSkipVerify: true, //nolint:gosec // VerifyConnection checks the chain and the SPIFFE ID
		// VerifyConnection runs on resumed sessions too.
		VerifyConnection: func(cs tls.ConnectionState) error {
			certs := cs.PeerCertificates
			if len(certs) == 0 {
				return errors.New("CA presented no certificate")
			}
			id, err := pki.VerifyX509SVID(certs[0], certs[1:], c.Bundle(), now(), x509.ExtKeyUsageServerAuth)
			if err != nil {
				return fmt.Errorf("CA certificate does not verify against the trust bundle: %w", err)
			}
			if id != serverID {
				return fmt.Errorf("CA certificate has ID %s, want %s", id, serverID)
			}
			if !pki.HasComponentPolicy(certs[0]) {
				return fmt.Errorf("CA certificate %s lacks the mayfly component policy %s: not issued to the CA (or by a CA older than this agent; upgrade the CA first)", id, pki.OIDComponentPolicy)
			}
			return nil
		},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if c.Certificate != nil {
				if cert := c.Certificate(); cert != nil {
					return cert, nil
				}
			}
			return &tls.Certificate{}, nil
		},
	}
}

// KeepaliveTime is the silence after which an agent pings the CA: a
// connection the CA dropped without a word (its node gone, a partition)
// is found within KeepaliveTime and the ping's 10 s timeout, 2 min 10 s.
// The agent's socket has the system's TCP keepalive (two hours on Linux),
// so on an idle bundle stream this ping is the only check; a call in
// flight fails sooner (gRPC sets TCP_USER_TIMEOUT to the ping's timeout).
// Each ping costs the CA about 90 µs of CPU (BenchmarkConnCost): at 2
// minutes 0.7% of one core for 10,000 agents, at 30 s (before) 3%, at 5
// minutes 0.3% for a bound of 5 min 10 s. Two minutes is far inside the
// time a new root is published before it is used (weeks; it activates
// only once every agent acknowledged it, docs/rotate-root.md), and
// the CA pings less often (issuer.KeepaliveParams), so the agent's ping
// is the connection's only one.
const KeepaliveTime = 2 * time.Minute

// StreamWindow is the fixed HTTP/2 flow-control window of the issuer
// API's streams and connections, on both sides (the CA's server options
// in internal/issuer): 1 MiB, more than a bundle, a SignWorkloads batch
// of the agent's size or its answer of certificate chains, so that such a
// message needs no window update on the way (a larger one still goes
// through, a window at a time). gRPC's default window starts at 64 KiB and grows
// (to 16 MiB) by bandwidth probes: a ping after each message that arrives
// on a quiet connection, so every bundle push and every call cost both
// sides a ping round trip more. A window allocates nothing; it bounds what
// the peer may send ahead of the reader.
const StreamWindow = 1 << 20

// ConnectTimeout bounds one attempt to connect to the CA: TCP and the TLS
// handshake.
const ConnectTimeout = 20 * time.Second

// Dial connects to the CA (lazily, like grpc.NewClient).
func Dial(c Config, opts ...grpc.DialOption) (*grpc.ClientConn, issuerv1.IssuerClient, error) {
	if c.Bundle == nil {
		return nil, nil, errors.New("issuer client: no trust bundle")
	}
	if c.Sessions == nil {
		// One cache per connection: its client certificate does not
		// change (a new SVID gets a new connection, CAConn.Use).
		c.Sessions = tls.NewLRUClientSessionCache(4)
	}
	opts = append([]grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(c.TLSConfig())),
		// A ping after 2 minutes of silence (KeepaliveTime).
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: KeepaliveTime, Timeout: 10 * time.Second, PermitWithoutStream: true}),
		// Fixed windows, without bandwidth probes (StreamWindow).
		grpc.WithStaticStreamWindowSize(StreamWindow),
		grpc.WithStaticConnWindowSize(StreamWindow),
		// No read buffer of its own (32 KiB by default): the TLS
		// connection under it buffers a record already.
		grpc.WithReadBufferSize(0),
		// gRPC's default reconnect backoff grows to 2 minutes, during which
		// calls fail at once: far longer than a short certificate's retry
		// budget. Agents retry with their own bounded backoff; keep the
		// transport's short. A connection attempt (TCP and TLS handshake)
		// gets gRPC's default 20 s: when every agent of a large fleet
		// reconnects at once (a CA restart), a CA answers the handshakes
		// queued behind thousands of others in seconds, and an agent that
		// gave up at 5 s left the CA a handshake done for nothing and
		// queued a new one (the reconnect storm of docs/performance.md).
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 200 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 3 * time.Second},
			MinConnectTimeout: ConnectTimeout,
		}),
	}, opts...)
	conn, err := grpc.NewClient(c.Address, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("dialing CA %s: %w", c.Address, err)
	}
	return conn, issuerv1.NewIssuerClient(conn), nil
}

// ServerID is the CA's SPIFFE ID in td.
func ServerID(td spiffeid.TrustDomain) spiffeid.ID {
	id, _ := spiffeid.FromSegments(td, "mayfly", "ca")
	return id
}

// ParseChain parses a DER chain from the API (leaf first).
func ParseChain(der [][]byte) ([]*x509.Certificate, error) {
	if len(der) == 0 {
		return nil, errors.New("empty certificate chain")
	}
	out := make([]*x509.Certificate, 0, len(der))
	for i, d := range der {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			return nil, fmt.Errorf("certificate_chain[%d]: %w", i, err)
		}
		out = append(out, c)
	}
	return out, nil
}

// ParseBundle parses a bundle message.
func ParseBundle(b *issuerv1.Bundle) ([]*x509.Certificate, error) {
	if b == nil || len(b.GetX509Authorities()) == 0 {
		return nil, errors.New("empty trust bundle")
	}
	return ParseChain(b.GetX509Authorities())
}
