// Package issuer is the CA's gRPC issuer API: agents attest with a
// bootstrap credential (a ServiceAccount token or a join token), renew with
// their agent SVID, and obtain workload SVIDs in batches, each item
// authorized on its own; a bundle stream pushes trust bundle changes and
// collects the agents' acknowledgements.
//
// What may be issued is internal/policy's decision; a refusal reaches the
// client with the code of its class: forbidden is PermissionDenied, a
// malformed request (CSR, TTL, key, names) InvalidArgument, a signing
// authority that cannot sign now Unavailable, and any other failure
// Internal without detail (the audit log has it). Authorizers and attestors
// may return a *Denial to choose the code themselves (NotFound,
// Unavailable).
package issuer

import (
	"cmp"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/policy"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// AuthoritySource gives the signing authority in force and tells when it
// changes (authority.Manager).
type AuthoritySource interface {
	Current() (*authority.Loaded, error)
	Subscribe() (<-chan struct{}, func())
}

// AgentAttestor checks an agent's bootstrap credential and returns the node
// it runs on. It returns a *Denial for a refused credential.
type AgentAttestor interface {
	AttestAgent(ctx context.Context, req *issuerv1.AttestAgentRequest) (node string, err error)
}

// Grant is what an authorizer allows: the identity to issue.
type Grant struct {
	ID       spiffeid.ID
	DNSNames []string
	// Subject describes the workload for the audit log (e.g. pod ns/name).
	Subject string
}

// WorkloadAuthorizer decides whether the agent of node may obtain an
// identity for one request item. It returns a *Denial when it may not.
type WorkloadAuthorizer interface {
	AuthorizeWorkload(ctx context.Context, node string, req *issuerv1.WorkloadRequest) (Grant, error)
}

// Config configures a Server.
type Config struct {
	TrustDomain spiffeid.TrustDomain
	Authority   AuthoritySource
	Attestor    AgentAttestor
	Authorizer  WorkloadAuthorizer
	// AgentTTL is the lifetime of agent SVIDs (default 1h).
	AgentTTL time.Duration
	// DefaultWorkloadTTL applies when a request asks for none (default 1h).
	DefaultWorkloadTTL time.Duration
	// MinWorkloadTTL is the shortest lifetime a request may ask for (default 5m).
	MinWorkloadTTL time.Duration
	// MaxWorkloadTTL is the longest lifetime a request may ask for (default 24h).
	MaxWorkloadTTL time.Duration
	// KubernetesIDs requires workload IDs of the form /ns/<ns>/sa/<sa>
	// (Kubernetes mode); standalone IDs are free-form, granted per node.
	KubernetesIDs bool
	// MaxBatch bounds the items of one SignWorkloads call (default 512).
	MaxBatch int
	// NodeRate and NodeBurst bound the certificates one node may obtain per
	// second (default 500/s, burst 2000).
	NodeRate  rate.Limit
	NodeBurst int
	// ServerDNSNames go into the CA's serving certificate.
	ServerDNSNames []string
	// OnAck is called when an agent acknowledges a bundle (Manager.Kick).
	OnAck func()

	Now        func() time.Time
	Rand       io.Reader
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Server implements issuerv1.IssuerServer.
type Server struct {
	issuerv1.UnimplementedIssuerServer
	cfg     Config
	metrics *metrics
	signers atomic.Pointer[signers]

	limMu    sync.Mutex
	limiters map[string]*rate.Limiter

	watchMu  sync.Mutex
	watchers map[*watcher]struct{}

	serving servingCert
}

type signers struct {
	loaded   *authority.Loaded
	workload *pki.Signer
	agent    *pki.Signer
	bundle   *x509.CertPool
}

type watcher struct {
	node  string
	acked atomic.Pointer[string]
}

// New validates cfg, applies defaults and returns a Server.
func New(cfg Config) (*Server, error) {
	switch {
	case cfg.TrustDomain.IsZero():
		return nil, fmt.Errorf("issuer: trust domain is empty")
	case cfg.Authority == nil:
		return nil, fmt.Errorf("issuer: no authority")
	case cfg.Attestor == nil:
		return nil, fmt.Errorf("issuer: no agent attestor")
	case cfg.Authorizer == nil:
		return nil, fmt.Errorf("issuer: no workload authorizer")
	case cfg.Rand == nil:
		return nil, fmt.Errorf("issuer: no randomness source")
	}
	cfg.AgentTTL = cmp.Or(cfg.AgentTTL, time.Hour)
	cfg.DefaultWorkloadTTL = cmp.Or(cfg.DefaultWorkloadTTL, time.Hour)
	cfg.MaxWorkloadTTL = cmp.Or(cfg.MaxWorkloadTTL, pki.MaxWorkloadTTL)
	cfg.MinWorkloadTTL = cmp.Or(cfg.MinWorkloadTTL, pki.MinWorkloadTTL)
	if cfg.DefaultWorkloadTTL > cfg.MaxWorkloadTTL || cfg.DefaultWorkloadTTL < cfg.MinWorkloadTTL {
		return nil, fmt.Errorf("issuer: defaultWorkloadTTL %s is outside [%s, %s]", cfg.DefaultWorkloadTTL, cfg.MinWorkloadTTL, cfg.MaxWorkloadTTL)
	}
	cfg.MaxBatch = cmp.Or(cfg.MaxBatch, 512)
	if cfg.NodeRate == 0 {
		cfg.NodeRate, cfg.NodeBurst = 500, 2000
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		cfg:      cfg,
		metrics:  newMetrics(cfg.Registerer),
		limiters: map[string]*rate.Limiter{},
		watchers: map[*watcher]struct{}{},
	}
	s.serving.server = s
	return s, nil
}

// current returns the signers of the authority in force, rebuilding them
// when the authority changed.
func (s *Server) current() (*signers, error) {
	l, err := s.cfg.Authority.Current()
	if err != nil {
		return nil, err
	}
	if cur := s.signers.Load(); cur != nil && cur.loaded == l {
		return cur, nil
	}
	pool := x509.NewCertPool()
	for _, c := range l.Bundle {
		pool.AddCert(c)
	}
	n := &signers{
		loaded: l,
		bundle: pool,
		workload: &pki.Signer{
			Authority: l.Authority, Now: s.cfg.Now, Rand: s.cfg.Rand,
			Options: policy.WorkloadRules(policy.WorkloadLimits{
				MinTTL: s.cfg.MinWorkloadTTL, MaxTTL: s.cfg.MaxWorkloadTTL,
				MaxDNSNames: pki.MaxDNSNames, KubernetesIDs: s.cfg.KubernetesIDs,
			}),
		},
		agent: &pki.Signer{
			Authority: l.Authority, Now: s.cfg.Now, Rand: s.cfg.Rand,
			Options: policy.AgentRules(),
		},
	}
	s.signers.Store(n)
	return n, nil
}

// AttestAgent issues an agent SVID for a valid bootstrap credential.
func (s *Server) AttestAgent(ctx context.Context, req *issuerv1.AttestAgentRequest) (*issuerv1.AttestAgentResponse, error) {
	start := time.Now()
	caller := peerAddr(ctx)
	node, err := s.cfg.Attestor.AttestAgent(ctx, req)
	if err != nil {
		s.auditDeny(ctx, "agent", "attest", caller, "", err)
		return nil, statusFor(err)
	}
	chain, leaf, bundle, err := s.signAgent(node, req.GetCsr())
	s.metrics.signDuration.Observe(time.Since(start).Seconds())
	if err != nil {
		s.auditDeny(ctx, "agent", "attest", caller, "node "+node, err)
		return nil, statusFor(err)
	}
	s.auditIssue(ctx, "agent", "attest", "node "+node+" ("+caller+")", leaf)
	return &issuerv1.AttestAgentResponse{CertificateChain: chain, Bundle: bundle}, nil
}

// RenewAgent issues a new agent SVID to an agent presenting its current one.
func (s *Server) RenewAgent(ctx context.Context, req *issuerv1.RenewAgentRequest) (*issuerv1.RenewAgentResponse, error) {
	start := time.Now()
	node, err := s.peerAgent(ctx)
	if err != nil {
		s.auditDeny(ctx, "agent", "renew", peerAddr(ctx), "", err)
		return nil, err
	}
	chain, leaf, bundle, err := s.signAgent(node, req.GetCsr())
	s.metrics.signDuration.Observe(time.Since(start).Seconds())
	if err != nil {
		s.auditDeny(ctx, "agent", "renew", "node "+node, "node "+node, err)
		return nil, statusFor(err)
	}
	s.auditIssue(ctx, "agent", "renew", "node "+node, leaf)
	return &issuerv1.RenewAgentResponse{CertificateChain: chain, Bundle: bundle}, nil
}

func (s *Server) signAgent(node string, csrDER []byte) ([][]byte, *x509.Certificate, *issuerv1.Bundle, error) {
	csr, err := pki.ParseCSR(csrDER)
	if err != nil {
		return nil, nil, nil, Deny(issuerv1.Denial_INVALID_ARGUMENT, "csr: %v", err)
	}
	id, err := pki.AgentID(s.cfg.TrustDomain, node)
	if err != nil {
		return nil, nil, nil, Deny(issuerv1.Denial_INVALID_ARGUMENT, "node name: %v", err)
	}
	sg, err := s.current()
	if err != nil {
		return nil, nil, nil, Deny(issuerv1.Denial_UNAVAILABLE, "%v", err)
	}
	leaf, der, err := sg.agent.Sign(pki.SignRequest{Kind: pki.KindAgent, PublicKey: csr.PublicKey, ID: id, TTL: s.cfg.AgentTTL})
	if err != nil {
		return nil, nil, nil, err
	}
	return chainDER(der, sg.loaded.Authority), leaf, bundleMessage(sg.loaded), nil
}

// SignWorkloads authorizes and signs a batch; every item gets its own
// result, so one bad item does not fail the others.
func (s *Server) SignWorkloads(ctx context.Context, req *issuerv1.SignWorkloadsRequest) (*issuerv1.SignWorkloadsResponse, error) {
	node, err := s.peerAgent(ctx)
	if err != nil {
		s.auditDeny(ctx, "workload", "sign", peerAddr(ctx), "", err)
		return nil, err
	}
	items := req.GetRequests()
	if len(items) > s.cfg.MaxBatch {
		s.cfg.Logger.WarnContext(ctx, "audit", "event", "deny", "decision", "deny", "kind", "workload", "op", "sign", "caller", "node "+node, "count", len(items), "reason", "batch too large")
		return nil, status.Errorf(codes.InvalidArgument, "batch of %d requests exceeds the limit of %d; split it", len(items), s.cfg.MaxBatch)
	}
	if !s.limiter(node).AllowN(s.cfg.Now(), len(items)) {
		s.metrics.issued.WithLabelValues("workload", "denied").Add(float64(len(items)))
		s.cfg.Logger.WarnContext(ctx, "audit", "event", "deny", "decision", "deny", "kind", "workload", "op", "sign", "caller", "node "+node, "count", len(items), "reason", "rate limited")
		return nil, status.Errorf(codes.ResourceExhausted, "node %s exceeded its rate limit of %v certificates/s (burst %d); retry with backoff", node, s.cfg.NodeRate, s.cfg.NodeBurst)
	}
	sg, err := s.current()
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	resp := &issuerv1.SignWorkloadsResponse{Results: make([]*issuerv1.WorkloadResult, 0, len(items))}
	for _, item := range items {
		resp.Results = append(resp.Results, s.signWorkload(ctx, sg, node, item))
	}
	return resp, nil
}

func (s *Server) signWorkload(ctx context.Context, sg *signers, node string, item *issuerv1.WorkloadRequest) *issuerv1.WorkloadResult {
	start := time.Now()
	res := &issuerv1.WorkloadResult{RequestId: item.GetRequestId()}
	deny := func(subject string, err error) *issuerv1.WorkloadResult {
		s.auditDeny(ctx, "workload", "sign", "node "+node, subject, err)
		res.Result = &issuerv1.WorkloadResult_Denial{Denial: DenialOf(err)}
		return res
	}
	subject := requestSubject(item)
	csr, err := pki.ParseCSR(item.GetCsr())
	if err != nil {
		return deny(subject, Deny(issuerv1.Denial_INVALID_ARGUMENT, "csr: %v", err))
	}
	ttl, err := requestTTL(item.GetTtlSeconds(), s.cfg.DefaultWorkloadTTL)
	if err != nil {
		return deny(subject, err)
	}
	grant, err := s.cfg.Authorizer.AuthorizeWorkload(ctx, node, item)
	if err != nil {
		return deny(subject, err)
	}
	// The policy's ttl-bounds rule is the one check of the TTL.
	leaf, der, err := sg.workload.Sign(pki.SignRequest{Kind: pki.KindWorkload, PublicKey: csr.PublicKey, ID: grant.ID, DNSNames: grant.DNSNames, TTL: ttl})
	s.metrics.signDuration.Observe(time.Since(start).Seconds())
	if err != nil {
		return deny(grant.ID.String(), err)
	}
	s.auditIssue(ctx, "workload", "sign", "node "+node, leaf, "subject", grant.Subject)
	res.Result = &issuerv1.WorkloadResult_Issued{Issued: &issuerv1.Issued{
		SpiffeId:         grant.ID.String(),
		CertificateChain: chainDER(der, sg.loaded.Authority),
		NotAfterUnix:     leaf.NotAfter.Unix(),
		SerialNumber:     serialHex(leaf),
	}}
	return res
}

// requestTTL converts ttl_seconds to the TTL to ask for: def for 0, and
// huge values saturated rather than overflowed (2^55 s would wrap to 0, the
// default), so the ttl-bounds rule sees them above its maximum. Its bounds
// are the policy's, not checked here.
func requestTTL(secs int64, def time.Duration) (time.Duration, error) {
	switch {
	case secs < 0:
		return 0, Deny(issuerv1.Denial_INVALID_ARGUMENT, "ttl_seconds: must not be negative")
	case secs == 0:
		return def, nil
	case secs > int64(math.MaxInt64/time.Second):
		return math.MaxInt64, nil
	}
	return time.Duration(secs) * time.Second, nil
}

// requestSubject names what an item asked for, for the audit log.
func requestSubject(item *issuerv1.WorkloadRequest) string {
	parts := make([]string, 0, 2)
	if id := item.GetSpiffeId(); id != "" {
		parts = append(parts, id)
	}
	if uid := item.GetPodUid(); uid != "" {
		parts = append(parts, "pod "+uid)
	}
	return strings.Join(parts, " ")
}

func (s *Server) limiter(node string) *rate.Limiter {
	s.limMu.Lock()
	defer s.limMu.Unlock()
	l, ok := s.limiters[node]
	if !ok {
		l = rate.NewLimiter(s.cfg.NodeRate, s.cfg.NodeBurst)
		s.limiters[node] = l
	}
	return l
}

// WatchBundle pushes the trust bundle on connect and on every change, and
// records the versions the agent acknowledges.
func (s *Server) WatchBundle(stream issuerv1.Issuer_WatchBundleServer) error {
	ctx := stream.Context()
	node, err := s.peerAgent(ctx)
	if err != nil {
		return err
	}
	w := &watcher{node: node}
	empty := ""
	w.acked.Store(&empty)
	s.watchMu.Lock()
	s.watchers[w] = struct{}{}
	s.watchMu.Unlock()
	changes, unsubscribe := s.cfg.Authority.Subscribe()
	defer func() {
		unsubscribe()
		s.watchMu.Lock()
		delete(s.watchers, w)
		s.watchMu.Unlock()
		s.updateWatchGauges()
	}()
	s.updateWatchGauges()

	acks := make(chan error, 1)
	go func() {
		for {
			ack, err := stream.Recv()
			if err != nil {
				acks <- err
				return
			}
			v := ack.GetVersion()
			w.acked.Store(&v)
			s.updateWatchGauges()
			if s.cfg.OnAck != nil {
				s.cfg.OnAck()
			}
		}
	}()

	sent := ""
	for {
		sg, err := s.current()
		if err == nil && sg.loaded.BundleVersion != sent {
			if err := stream.Send(bundleMessage(sg.loaded)); err != nil {
				return err
			}
			sent = sg.loaded.BundleVersion
			s.updateWatchGauges()
		}
		select {
		case <-ctx.Done():
			return nil
		case err := <-acks:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return status.Convert(err).Err()
		case <-changes:
		}
	}
}

// AllAgentsCurrent reports whether every connected agent acknowledged the
// current bundle; the authority waits for it before it activates a root.
func (s *Server) AllAgentsCurrent() bool {
	sg, err := s.current()
	if err != nil {
		return false
	}
	s.watchMu.Lock()
	defer s.watchMu.Unlock()
	for w := range s.watchers {
		if *w.acked.Load() != sg.loaded.BundleVersion {
			return false
		}
	}
	return true
}

// AgentCounts returns the connected agents and how many of them hold the
// current bundle.
func (s *Server) AgentCounts() (connected, current int) {
	sg, err := s.current()
	s.watchMu.Lock()
	defer s.watchMu.Unlock()
	for w := range s.watchers {
		if err == nil && *w.acked.Load() == sg.loaded.BundleVersion {
			current++
		}
	}
	return len(s.watchers), current
}

func (s *Server) updateWatchGauges() {
	sg, err := s.current()
	s.watchMu.Lock()
	defer s.watchMu.Unlock()
	current := 0
	for w := range s.watchers {
		if err == nil && *w.acked.Load() == sg.loaded.BundleVersion {
			current++
		}
	}
	s.metrics.connected.Set(float64(len(s.watchers)))
	s.metrics.currentBundle.Set(float64(current))
}

func chainDER(leaf []byte, a pki.Authority) [][]byte {
	out := make([][]byte, 0, 2+len(a.Chain))
	out = append(out, leaf, a.Cert.Raw)
	for _, c := range a.Chain {
		out = append(out, c.Raw)
	}
	return out
}

func bundleMessage(l *authority.Loaded) *issuerv1.Bundle {
	b := &issuerv1.Bundle{Version: l.BundleVersion}
	for _, c := range l.Bundle {
		b.X509Authorities = append(b.X509Authorities, c.Raw)
	}
	return b
}

func statusFor(err error) error {
	d := DenialOf(err)
	return status.Error(grpcCode(d.Code), d.Message)
}

// serialHex formats a serial as the API (Issued.serial_number) and the
// authority's logs do, so an audit line can be found by the serial an
// agent reports.
func serialHex(c *x509.Certificate) string { return c.SerialNumber.Text(16) }
