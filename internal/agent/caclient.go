// Package agent is the node agent's core: its own identity towards the CA
// (attest, renew, persist), the trust bundle stream, and the workload
// identities it obtains in batches and rotates.
package agent

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/issuerclient"
	"github.com/mayfly-pki/mayfly/pkg/pki"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// Credential returns a fresh bootstrap credential for AttestAgent: the
// projected ServiceAccount token (read anew each time) or a join token.
type Credential func(ctx context.Context) (*issuerv1.AttestAgentRequest, error)

// CAConfig configures the agent's connection to the CA.
type CAConfig struct {
	Address     string
	TrustDomain spiffeid.TrustDomain
	// InitialBundle authenticates the CA until it sends a bundle.
	InitialBundle []*x509.Certificate
	Credential    Credential
	// DataDir keeps the agent SVID and key (0600 in 0700) across restarts,
	// so a standalone agent whose join token was consumed can come back.
	DataDir string
	Clock   rotate.Clock
	Policy  rotate.Policy
	Logger  *slog.Logger
	// OnChange is called after every agent SVID rotation and bundle change.
	OnReachable func(bool)
}

type bundleState struct {
	certs   []*x509.Certificate
	version string
}

// CAClient holds the agent SVID, the connection that presents it, and the
// trust bundle streamed from the CA.
type CAClient struct {
	cfg     CAConfig
	rotator *rotate.Rotator
	svid    atomic.Pointer[tls.Certificate]
	bundle  atomic.Pointer[bundleState]

	connMu  sync.Mutex
	conn    *grpc.ClientConn
	client  issuerv1.IssuerClient
	connGen chan struct{} // closed and replaced when conn changes
	onSVID  atomic.Pointer[func(*x509.Certificate)]

	subMu sync.Mutex
	subs  map[chan struct{}]struct{}
}

const (
	svidFile = "agent-svid.pem"
	keyFile  = "agent-key.pem"
)

// NewCAClient returns a client; Start runs it.
func NewCAClient(cfg CAConfig) (*CAClient, error) {
	if len(cfg.InitialBundle) == 0 {
		return nil, errors.New("agent: no initial trust bundle: give the CA's trust-bundle.pem")
	}
	if cfg.Clock == nil {
		cfg.Clock = rotate.RealClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	c := &CAClient{cfg: cfg, connGen: make(chan struct{}), subs: map[chan struct{}]struct{}{}}
	c.bundle.Store(&bundleState{certs: cfg.InitialBundle})
	c.loadPersisted()
	c.rotator = rotate.New(c.obtain, rotate.Options{Policy: cfg.Policy, Clock: cfg.Clock, Name: "agent-svid"})
	return c, nil
}

// OnSVID registers f to be called with every new agent SVID.
func (c *CAClient) OnSVID(f func(*x509.Certificate)) {
	c.onSVID.Store(&f)
	if cur := c.svid.Load(); cur != nil {
		f(cur.Leaf)
	}
}

// Rotator exposes the agent SVID's rotation state for status and metrics.
func (c *CAClient) Rotator() *rotate.Rotator { return c.rotator }

// Start runs the agent SVID rotation and the bundle stream until ctx ends.
func (c *CAClient) Start(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- c.rotator.Start(ctx) }()
	c.watchBundle(ctx)
	err := <-errc
	c.connMu.Lock()
	if c.conn != nil {
		_ = c.conn.Close()
	}
	c.connMu.Unlock()
	return err
}

// Ready is closed once the agent holds an SVID.
func (c *CAClient) Ready() <-chan struct{} { return c.rotator.Ready() }

// Bundle returns the trust bundle in force and its version.
func (c *CAClient) Bundle() ([]*x509.Certificate, string) {
	b := c.bundle.Load()
	return b.certs, b.version
}

// SubscribeBundle signals after every bundle change.
func (c *CAClient) SubscribeBundle() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	c.subMu.Lock()
	c.subs[ch] = struct{}{}
	c.subMu.Unlock()
	return ch, func() {
		c.subMu.Lock()
		delete(c.subs, ch)
		c.subMu.Unlock()
	}
}

// SignWorkloads sends one batch over the connection that presents the
// agent SVID.
func (c *CAClient) SignWorkloads(ctx context.Context, reqs []*issuerv1.WorkloadRequest) ([]*issuerv1.WorkloadResult, error) {
	client, _, err := c.current()
	if err != nil {
		return nil, err
	}
	resp, err := client.SignWorkloads(ctx, &issuerv1.SignWorkloadsRequest{Requests: reqs})
	c.reachable(err)
	if err != nil {
		return nil, err
	}
	return resp.GetResults(), nil
}

func (c *CAClient) current() (issuerv1.IssuerClient, chan struct{}, error) {
	c.connMu.Lock()
	defer c.connMu.Unlock()
	if c.client == nil {
		return nil, c.connGen, status.Error(codes.Unavailable, "agent has no SVID yet")
	}
	return c.client, c.connGen, nil
}

func (c *CAClient) reachable(err error) {
	down := false
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		down = true
		// The next call (the rotator's bounded retry) should dial at once
		// rather than wait out the transport's reconnect backoff.
		c.connMu.Lock()
		if c.conn != nil {
			c.conn.ResetConnectBackoff()
		}
		c.connMu.Unlock()
	}
	if c.cfg.OnReachable != nil {
		c.cfg.OnReachable(!down)
	}
}

func (c *CAClient) dialConfig(cert func() *tls.Certificate) issuerclient.Config {
	return issuerclient.Config{
		Address:     c.cfg.Address,
		TrustDomain: c.cfg.TrustDomain,
		Bundle:      func() []*x509.Certificate { b, _ := c.Bundle(); return b },
		Certificate: cert,
		Now:         c.cfg.Clock.Now,
	}
}

// obtain renews the agent SVID while it is valid, and attests anew when it
// is not (first start, or an outage longer than its life).
func (c *CAClient) obtain(ctx context.Context) (*rotate.Credential, error) {
	key, err := pki.GenerateKey(pki.DefaultKeyType, rand.Reader)
	if err != nil {
		return nil, err
	}
	csr, err := pki.CreateCSR(key, rand.Reader)
	if err != nil {
		return nil, err
	}
	var chainDER [][]byte
	var bundle *issuerv1.Bundle
	if cur := c.svid.Load(); cur != nil && c.cfg.Clock.Now().Before(cur.Leaf.NotAfter) {
		client, _, err := c.current()
		if err == nil {
			resp, err := client.RenewAgent(ctx, &issuerv1.RenewAgentRequest{Csr: csr})
			c.reachable(err)
			if err == nil {
				chainDER, bundle = resp.GetCertificateChain(), resp.GetBundle()
			} else if status.Code(err) != codes.Unauthenticated {
				return nil, fmt.Errorf("renewing the agent SVID: %w", err)
			}
		}
	}
	if chainDER == nil {
		req, err := c.cfg.Credential(ctx)
		if err != nil {
			return nil, fmt.Errorf("agent attestation credential: %w", err)
		}
		req.Csr = csr
		conn, client, err := issuerclient.Dial(c.dialConfig(nil))
		if err != nil {
			return nil, err
		}
		resp, err := client.AttestAgent(ctx, req)
		_ = conn.Close()
		c.reachable(err)
		if err != nil {
			return nil, fmt.Errorf("attesting to the CA at %s: %w", c.cfg.Address, err)
		}
		chainDER, bundle = resp.GetCertificateChain(), resp.GetBundle()
	}
	chain, err := issuerclient.ParseChain(chainDER)
	if err != nil {
		return nil, err
	}
	if bundle != nil {
		c.installBundle(bundle)
	}
	roots, _ := c.Bundle()
	if _, err := pki.VerifyX509SVID(chain[0], chain[1:], roots, c.cfg.Clock.Now(), x509.ExtKeyUsageClientAuth); err != nil {
		return nil, fmt.Errorf("the CA returned an agent SVID that does not verify: %w", err)
	}
	cert := &tls.Certificate{Certificate: chainDER, PrivateKey: key, Leaf: chain[0]}
	if err := c.useSVID(cert); err != nil {
		return nil, err
	}
	c.persist(chain, key)
	c.cfg.Logger.Info("agent SVID obtained", "spiffe_id", chain[0].URIs[0].String(), "serial", chain[0].SerialNumber.Text(16), "not_after", chain[0].NotAfter)
	return &rotate.Credential{Certificates: chain, Key: key, Bundle: roots}, nil
}

// useSVID swaps in a connection presenting cert; the old one closes after
// a grace period so in-flight calls finish.
func (c *CAClient) useSVID(cert *tls.Certificate) error {
	c.svid.Store(cert)
	if f := c.onSVID.Load(); f != nil {
		(*f)(cert.Leaf)
	}
	conn, client, err := issuerclient.Dial(c.dialConfig(func() *tls.Certificate { return cert }))
	if err != nil {
		return err
	}
	c.connMu.Lock()
	old := c.conn
	c.conn, c.client = conn, client
	close(c.connGen)
	c.connGen = make(chan struct{})
	c.connMu.Unlock()
	if old != nil {
		time.AfterFunc(10*time.Second, func() { _ = old.Close() })
	}
	return nil
}

func (c *CAClient) installBundle(b *issuerv1.Bundle) bool {
	roots, err := issuerclient.ParseBundle(b)
	if err != nil {
		c.cfg.Logger.Warn("ignoring an unusable bundle from the CA", "error", err)
		return false
	}
	if cur := c.bundle.Load(); cur.version == b.GetVersion() && cur.version != "" {
		return true
	}
	c.bundle.Store(&bundleState{certs: roots, version: b.GetVersion()})
	c.cfg.Logger.Info("trust bundle installed", "version", b.GetVersion(), "roots", len(roots))
	c.subMu.Lock()
	for ch := range c.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	c.subMu.Unlock()
	if c.cfg.DataDir != "" {
		_ = writeFile(filepath.Join(c.cfg.DataDir, "bundle.pem"), pki.EncodeCertificates(roots...), 0o644)
	}
	return true
}

// watchBundle keeps a WatchBundle stream open on the current connection,
// installs every bundle and acknowledges it.
func (c *CAClient) watchBundle(ctx context.Context) {
	backoff := time.Second
	for ctx.Err() == nil {
		client, gen, err := c.current()
		if err != nil {
			select {
			case <-ctx.Done():
				return
			case <-gen:
				continue
			}
		}
		sctx, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-gen: // a new SVID: reopen on the new connection
			case <-sctx.Done():
			}
			cancel()
		}()
		err = c.streamBundles(sctx, client)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if status.Code(err) != codes.Canceled {
			c.reachable(err)
			c.cfg.Logger.Warn("bundle stream ended; reconnecting", "error", err, "retry_in", backoff)
			t := c.cfg.Clock.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C():
			case <-gen:
				t.Stop()
			}
			backoff = min(backoff*2, 10*time.Second)
			continue
		}
		backoff = time.Second
	}
}

func (c *CAClient) streamBundles(ctx context.Context, client issuerv1.IssuerClient) error {
	stream, err := client.WatchBundle(ctx)
	if err != nil {
		return err
	}
	for {
		b, err := stream.Recv()
		if err != nil {
			return err
		}
		c.reachable(nil)
		if c.installBundle(b) {
			if err := stream.Send(&issuerv1.BundleAck{Version: b.GetVersion()}); err != nil {
				return err
			}
		}
	}
}

func (c *CAClient) persist(chain []*x509.Certificate, key crypto.Signer) {
	if c.cfg.DataDir == "" {
		return
	}
	keyPEM, err := pki.MarshalPrivateKeyPEM(key)
	if err != nil {
		return
	}
	if err := os.MkdirAll(c.cfg.DataDir, 0o700); err != nil {
		c.cfg.Logger.Warn("cannot persist the agent SVID", "error", err)
		return
	}
	_ = os.Chmod(c.cfg.DataDir, 0o700) //nolint:gosec // a directory needs x; owner only
	if err := writeFile(filepath.Join(c.cfg.DataDir, keyFile), keyPEM, 0o600); err != nil {
		c.cfg.Logger.Warn("cannot persist the agent key", "error", err)
		return
	}
	if err := writeFile(filepath.Join(c.cfg.DataDir, svidFile), pki.EncodeCertificates(chain...), 0o600); err != nil {
		c.cfg.Logger.Warn("cannot persist the agent SVID", "error", err)
	}
}

// loadPersisted picks up an agent SVID saved by an earlier run if it is
// still valid; the first rotation then renews it instead of attesting.
func (c *CAClient) loadPersisted() {
	if c.cfg.DataDir == "" {
		return
	}
	rawCert, err1 := os.ReadFile(filepath.Join(c.cfg.DataDir, svidFile))
	rawKey, err2 := os.ReadFile(filepath.Join(c.cfg.DataDir, keyFile))
	if err1 != nil || err2 != nil {
		return
	}
	chain, err := pki.DecodeCertificates(rawCert, pki.PEMLimits{})
	if err != nil {
		c.cfg.Logger.Warn("ignoring a corrupt persisted agent SVID", "error", err)
		return
	}
	key, err := pki.ParsePrivateKeyPEM(rawKey)
	if err != nil {
		c.cfg.Logger.Warn("ignoring a corrupt persisted agent key", "error", err)
		return
	}
	// persist writes the key before the SVID: a crash in between leaves a
	// new key beside the old SVID, which no handshake can use; renewing
	// with it would fail until the SVID expired instead of attesting.
	if pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(chain[0].PublicKey) {
		c.cfg.Logger.Warn("ignoring a persisted agent key that does not match the persisted SVID", "serial", chain[0].SerialNumber.Text(16))
		return
	}
	if !c.cfg.Clock.Now().Before(chain[0].NotAfter) {
		return
	}
	if rawBundle, err := os.ReadFile(filepath.Join(c.cfg.DataDir, "bundle.pem")); err == nil {
		if roots, err := pki.DecodeCertificates(rawBundle, pki.PEMLimits{}); err == nil {
			c.bundle.Store(&bundleState{certs: roots})
		}
	}
	der := make([][]byte, len(chain))
	for i, cert := range chain {
		der[i] = cert.Raw
	}
	if err := c.useSVID(&tls.Certificate{Certificate: der, PrivateKey: key, Leaf: chain[0]}); err != nil {
		c.cfg.Logger.Warn("cannot use the persisted agent SVID", "error", err)
	}
}

func writeFile(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
