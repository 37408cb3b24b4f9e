// Package agent is the node agent's core: its own identity towards the CA
// (attest, renew, persist), the trust bundle stream, and the workload
// identities it obtains in batches and rotates.
//
// Towards the CA, small parts do one job each: SVIDStore holds the agent
// SVID and keeps it on disk, BundleWatcher holds the trust bundle in force
// and follows the CA's stream, CAConn is the connection presenting the
// agent SVID (and the Signer of workload batches), and CAClient attests and
// renews the agent SVID through them. Towards workloads, Manager obtains
// each identity directly on its first request (through the Batcher) and
// leaves the renewals to one rotator per identity; WorkloadSource serves it
// to the Workload API and VolumeIdentities to CSI volumes, with the pods of
// each identity in one PodIndex. A trust bundle change reaches the files of
// every identity (Manager.DeliverBundle) and every Workload API stream
// (WorkloadSource.DeliverBundle) before BundleWatcher acknowledges it to
// the CA.
//
// Every certificate the CA returns, the agent SVID and each workload SVID,
// is checked before it is used or served: it chains to the bundle in force,
// names the ID asked for and certifies the CSR's key (ErrBadSVID otherwise).
package agent

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
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
	// RenewalToken, in Kubernetes mode, returns the fresh projected
	// ServiceAccount token sent with every RenewAgent (the CA re-checks the
	// agent pod with it); nil in standalone mode.
	RenewalToken RenewalToken
	// DataDir keeps the agent SVID and key (0600 in 0700) across restarts,
	// so a standalone agent whose join token was consumed can come back.
	DataDir string
	Clock   rotate.Clock
	Policy  rotate.Policy
	Logger  *slog.Logger
	// OnReachable is told after each call whether the CA answered.
	OnReachable func(bool)
	// Registerer, if set, receives the bundle delivery metric.
	Registerer prometheus.Registerer
	// NodeName is the node the agent runs on: its SVID must name
	// /mayfly/agent/<NodeName>. Empty accepts any agent ID of the trust
	// domain (tests).
	NodeName string
	// OnAttested is told the outcome of every attestation: nil when it
	// succeeded, else the CA's error (a JoinToken's Settle).
	OnAttested func(error)
	// OnRejected is told of every agent SVID of the CA the agent refuses
	// (ErrBadSVID), for a metric.
	OnRejected func(error)
}

// CAClient attests and renews the agent SVID, through its parts: Store
// holds the SVID and keeps it on disk, Bundles holds the trust bundle in
// force, Conn presents the SVID to the CA (and signs workload batches).
type CAClient struct {
	Store   *SVIDStore
	Bundles *BundleWatcher
	Conn    *CAConn

	cfg     CAConfig
	rotator *rotate.Rotator
	// wantID is the agent's own ID; with no NodeName, any agent ID of the
	// trust domain (checked on the certificate's own ID).
	wantID spiffeid.ID
}

// NewCAClient returns a client holding the agent SVID an earlier run
// persisted, if it is still usable; Start runs it.
func NewCAClient(cfg CAConfig) (*CAClient, error) {
	if cfg.Clock == nil {
		cfg.Clock = rotate.RealClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	store := NewSVIDStore(cfg.DataDir, cfg.Logger)
	bundles, err := NewBundleWatcher(BundleWatcherConfig{Initial: cfg.InitialBundle, Saver: store, Clock: cfg.Clock, Logger: cfg.Logger, Registerer: cfg.Registerer})
	if err != nil {
		return nil, err
	}
	conn := NewCAConn(CAConnConfig{Address: cfg.Address, TrustDomain: cfg.TrustDomain, Bundle: bundles, Clock: cfg.Clock, OnReachable: cfg.OnReachable})
	c := &CAClient{Store: store, Bundles: bundles, Conn: conn, cfg: cfg}
	if cfg.NodeName != "" {
		if c.wantID, err = pki.AgentID(cfg.TrustDomain, cfg.NodeName); err != nil {
			return nil, fmt.Errorf("node name: %w", err)
		}
	}
	// A persisted SVID is renewed by the first rotation instead of
	// attesting anew.
	if cert, roots := store.Load(cfg.Clock.Now()); cert != nil {
		if roots != nil {
			bundles.replace(roots)
		}
		if err := conn.Use(cert); err != nil {
			cfg.Logger.Warn("cannot use the persisted agent SVID", "error", err)
		}
	}
	c.rotator = rotate.New(c.obtain, rotate.Options{Policy: cfg.Policy, Clock: cfg.Clock, Name: "agent-svid", OnEvent: c.onEvent})
	return c, nil
}

// Rotator exposes the agent SVID's rotation state for status and metrics.
func (c *CAClient) Rotator() *rotate.Rotator { return c.rotator }

// Ready is closed once the agent holds an SVID.
func (c *CAClient) Ready() <-chan struct{} { return c.rotator.Ready() }

// Start runs the agent SVID rotation and the bundle stream until ctx ends,
// then closes the connection.
func (c *CAClient) Start(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- c.rotator.Start(ctx) }()
	_ = c.Bundles.Watch(ctx, c.Conn)
	err := <-errc
	c.Conn.Close()
	return err
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
	refused := "" // why the CA refused to renew, when it did
	if cur := c.Store.AgentSVID(); cur != nil && c.cfg.Clock.Now().Before(cur.Leaf.NotAfter) {
		if client, _, err := c.Conn.Client(); err == nil {
			req := &issuerv1.RenewAgentRequest{Csr: csr}
			if c.cfg.RenewalToken != nil {
				if req.ServiceAccountToken, err = c.cfg.RenewalToken(ctx); err != nil {
					return nil, fmt.Errorf("renewing the agent SVID: %w", err)
				}
			}
			resp, err := client.RenewAgent(ctx, req)
			switch {
			case err == nil:
				chainDER, bundle = resp.GetCertificateChain(), resp.GetBundle()
			case status.Code(err) != codes.Unauthenticated:
				return nil, fmt.Errorf("renewing the agent SVID: %w", err)
			default:
				// Evicted, past agents.maxAge, or no longer trusted: the
				// CA wants a new attestation.
				refused = status.Convert(err).Message()
				c.cfg.Logger.Warn("the CA refused to renew the agent SVID; attesting anew with the bootstrap credential", "reason", refused)
			}
		}
	}
	if chainDER == nil {
		if chainDER, bundle, err = c.attest(ctx, csr); err != nil {
			if refused != "" {
				return nil, fmt.Errorf("%w (attesting anew because the CA refused to renew the agent SVID: %s)", err, refused)
			}
			return nil, err
		}
	}
	chain, err := issuerclient.ParseChain(chainDER)
	if err != nil {
		return nil, c.rejected(fmt.Errorf("%w: %w", ErrBadSVID, err))
	}
	if bundle != nil {
		c.Bundles.Install(bundle)
	}
	roots, _ := c.Bundles.Bundle()
	want := c.wantID
	if want.IsZero() {
		want = anyAgentID(chain[0], c.cfg.TrustDomain)
	}
	if err := checkIssued(chain, key, want, roots, c.cfg.Clock.Now(), x509.ExtKeyUsageClientAuth); err != nil {
		return nil, c.rejected(fmt.Errorf("agent SVID: %w", err))
	}
	if err := c.Conn.Use(c.Store.Put(chain, key)); err != nil {
		return nil, err
	}
	c.cfg.Logger.Info("agent SVID obtained", "spiffe_id", chain[0].URIs[0].String(), "serial", chain[0].SerialNumber.Text(16), "not_after", chain[0].NotAfter)
	return &rotate.Credential{Certificates: chain, Key: key, Bundle: roots}, nil
}

// attest obtains an agent SVID with the bootstrap credential.
func (c *CAClient) attest(ctx context.Context, csr []byte) ([][]byte, *issuerv1.Bundle, error) {
	req, err := c.cfg.Credential(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("agent attestation credential: %w", err)
	}
	req.Csr = csr
	resp, err := c.Conn.AttestAgent(ctx, req)
	if c.cfg.OnAttested != nil && ctx.Err() == nil {
		c.cfg.OnAttested(err)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("attesting to the CA at %s: %w", c.cfg.Address, err)
	}
	return resp.GetCertificateChain(), resp.GetBundle(), nil
}

// onEvent logs the failures of the agent SVID's rotation, each with its
// reason and when the next attempt is due.
func (c *CAClient) onEvent(ev rotate.Event) {
	if ev.Kind != rotate.EventObtainFailed {
		return
	}
	c.cfg.Logger.Warn("obtaining the agent SVID failed; retrying", "error", ev.Err, "attempt", ev.Attempt,
		"next_retry", ev.Next.At, "retry_in", ev.Next.At.Sub(ev.Time).Round(time.Millisecond).String())
}

// rejected logs and counts an agent SVID of the CA that the agent refuses
// (ErrBadSVID) and returns err.
func (c *CAClient) rejected(err error) error {
	c.cfg.Logger.Error("refusing an agent SVID from the CA", "error", err)
	if c.cfg.OnRejected != nil {
		c.cfg.OnRejected(err)
	}
	return err
}

// anyAgentID returns the ID of leaf when it is an agent ID of td, else the
// zero ID (which no certificate matches): without a configured node name,
// the agent accepts an SVID of any node, never a workload's.
func anyAgentID(leaf *x509.Certificate, td spiffeid.TrustDomain) spiffeid.ID {
	if len(leaf.URIs) != 1 {
		return spiffeid.ID{}
	}
	id, err := spiffeid.FromURI(leaf.URIs[0])
	if err != nil || !id.MemberOf(td) {
		return spiffeid.ID{}
	}
	if _, ok := pki.Agent(id); !ok {
		return spiffeid.ID{}
	}
	return id
}
