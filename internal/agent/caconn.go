package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/issuerclient"
	"github.com/mayfly-pki/mayfly/internal/skew"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// retireAfter is how long a connection replaced by a new agent SVID stays
// open, so that the calls in flight on it finish.
const retireAfter = 10 * time.Second

// BundleSource gives the trust bundle in force (BundleWatcher).
type BundleSource interface {
	// Bundle returns the roots and the CA's version of them ("" for the
	// initial or persisted bundle).
	Bundle() ([]*x509.Certificate, string)
}

// CAConnConfig configures a CAConn.
type CAConnConfig struct {
	Address     string
	TrustDomain spiffeid.TrustDomain
	// Bundle authenticates the CA.
	Bundle BundleSource
	Clock  rotate.Clock
	// OnReachable is told after each call whether the CA answered.
	OnReachable func(bool)
}

// CAConn is the agent's connection to the CA presenting the agent SVID:
// workload batches (SignWorkloads), renewals and the bundle stream go over
// it. A new agent SVID gets a new connection (Use); the replaced one closes
// after a grace period so that calls in flight finish. Every call reports
// whether the CA answered, and a call the CA did not answer makes the next
// one dial at once instead of waiting out the transport's backoff.
type CAConn struct {
	cfg CAConnConfig

	mu       sync.Mutex
	conn     *grpc.ClientConn
	client   issuerv1.IssuerClient
	replaced chan struct{} // closed and replaced when conn changes
	closed   chan struct{} // closed by Close
}

// NewCAConn returns a connection that has no agent SVID to present yet.
func NewCAConn(cfg CAConnConfig) *CAConn {
	if cfg.Clock == nil {
		cfg.Clock = rotate.RealClock{}
	}
	return &CAConn{cfg: cfg, replaced: make(chan struct{}), closed: make(chan struct{})}
}

// errNoSVID is returned before the agent holds an SVID.
var errNoSVID = status.Error(codes.Unavailable, "agent has no SVID yet")

// Client returns the client of the connection in use and a channel closed
// when it is replaced (a new agent SVID); before the first SVID it returns
// an Unavailable error, and the channel closes with the first.
func (c *CAConn) Client() (issuerv1.IssuerClient, <-chan struct{}, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.client == nil {
		return nil, c.replaced, errNoSVID
	}
	return c.client, c.replaced, nil
}

// SignWorkloads sends one batch of workload requests.
func (c *CAConn) SignWorkloads(ctx context.Context, reqs []*issuerv1.WorkloadRequest) ([]*issuerv1.WorkloadResult, error) {
	client, _, err := c.Client()
	if err != nil {
		return nil, err
	}
	resp, err := client.SignWorkloads(ctx, &issuerv1.SignWorkloadsRequest{Requests: reqs})
	if err != nil {
		return nil, err
	}
	return resp.GetResults(), nil
}

// AttestAgent attests the agent with req over a connection of its own
// that presents no certificate. It reports the agent's release version
// (the CA checks its version-skew policy, internal/skew) unless req
// already names one.
func (c *CAConn) AttestAgent(ctx context.Context, req *issuerv1.AttestAgentRequest) (*issuerv1.AttestAgentResponse, error) {
	if req.GetAgentVersion() == "" {
		req.AgentVersion = skew.Version()
	}
	conn, client, err := c.dial(nil)
	if err != nil {
		return nil, err
	}
	defer func() { _ = conn.Close() }()
	return client.AttestAgent(ctx, req)
}

// Use dials a connection that presents cert and makes it the one in use.
func (c *CAConn) Use(cert *tls.Certificate) error {
	conn, client, err := c.dial(cert)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.isClosed() {
		_ = conn.Close()
		return errors.New("agent: connection to the CA closed")
	}
	old := c.conn
	c.conn, c.client = conn, client
	close(c.replaced)
	c.replaced = make(chan struct{})
	if old != nil {
		c.retireLocked(old)
	}
	return nil
}

// retireLocked closes old after the grace period, on the injected clock,
// or at Close.
func (c *CAConn) retireLocked(old *grpc.ClientConn) {
	t := c.cfg.Clock.NewTimer(retireAfter)
	go func() {
		select {
		case <-t.C():
		case <-c.closed:
			t.Stop()
		}
		_ = old.Close()
	}()
}

func (c *CAConn) isClosed() bool {
	select {
	case <-c.closed:
		return true
	default:
		return false
	}
}

// Close closes the connection in use and, at once, those being retired.
func (c *CAConn) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.isClosed() {
		return
	}
	close(c.closed)
	if c.conn != nil {
		_ = c.conn.Close()
	}
}

func (c *CAConn) dial(cert *tls.Certificate) (*grpc.ClientConn, issuerv1.IssuerClient, error) {
	return issuerclient.Dial(issuerclient.Config{
		Address:     c.cfg.Address,
		TrustDomain: c.cfg.TrustDomain,
		Bundle:      func() []*x509.Certificate { b, _ := c.cfg.Bundle.Bundle(); return b },
		Certificate: func() *tls.Certificate { return cert },
		Now:         c.cfg.Clock.Now,
	}, grpc.WithChainUnaryInterceptor(c.observeUnary), grpc.WithChainStreamInterceptor(c.observeStream))
}

// observe reports whether the CA answered a call that ended with err; a
// cancelled call says nothing either way.
func (c *CAConn) observe(err error) {
	down := false
	switch status.Code(err) {
	case codes.Canceled:
		return
	case codes.Unavailable, codes.DeadlineExceeded:
		down = true
		// The next call (the rotator's bounded retry) should dial at once
		// rather than wait out the transport's reconnect backoff.
		c.mu.Lock()
		if c.conn != nil {
			c.conn.ResetConnectBackoff()
		}
		c.mu.Unlock()
	}
	if c.cfg.OnReachable != nil {
		c.cfg.OnReachable(!down)
	}
}

func (c *CAConn) observeUnary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	err := invoker(ctx, method, req, reply, cc, opts...)
	c.observe(err)
	return err
}

// observeStream reports each message received (the CA answered) and the
// error that ends the stream.
func (c *CAConn) observeStream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	s, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil {
		c.observe(err)
		return nil, err
	}
	return observedStream{ClientStream: s, c: c}, nil
}

type observedStream struct {
	grpc.ClientStream
	c *CAConn
}

func (s observedStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if !errors.Is(err, context.Canceled) {
		s.c.observe(err)
	}
	return err
}
