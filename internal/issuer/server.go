// Package issuer is the CA's gRPC issuer API: agents attest with a
// bootstrap credential (a ServiceAccount token or a join token), renew with
// their agent SVID, and obtain workload SVIDs in batches, each item
// authorized on its own; a bundle stream pushes trust bundle changes and
// collects the agents' acknowledgements.
//
// Every call made with an agent SVID is checked against the CA's current
// view of the agent's node, not only against the bundle: the node must still
// be allowed (NodeChecker; standalone: listed in the nodes configuration)
// and must not have been evicted after the agent attested (EvictionSource;
// an evicted agent's bundle stream is closed). RenewAgent also refuses an
// agent past AgentMaxAge since its original attestation, which every agent
// SVID carries (pki.OIDAttestedAt, copied on renewal), and asks the
// RenewalChecker (Kubernetes: the fresh ServiceAccount token of a running
// agent pod on that node). A revoked SVID is Unauthenticated, so the agent
// attests anew; a node that may not run an agent is PermissionDenied.
//
// What may be issued is internal/policy's decision; a refusal reaches the
// client with the code of its class: forbidden is PermissionDenied, a
// malformed request (CSR, TTL, key, names) InvalidArgument, a signing
// authority that cannot sign now Unavailable, and any other failure
// Internal without detail (the audit log has it). Authorizers and attestors
// may return a *Denial to choose the code themselves (NotFound,
// Unavailable).
//
// AttestAgent is the one unauthenticated call: it is rate limited per peer
// IP and for the whole server (ResourceExhausted) before anything else, and
// checks the CSR before the credential, so that a request that cannot
// succeed never consumes a single-use join token. Client-controlled strings
// are bounded: over-long IDs are refused early, and audit lines and denial
// messages carry at most a clipped prefix of them.
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
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/status"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/policy"
	"github.com/mayfly-pki/mayfly/internal/skew"
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

// AckRecorder records that node's agent holds a bundle version.
type AckRecorder interface {
	Ack(node, version string)
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
	// JWTIssuer is the iss of JWT-SVIDs (the OIDC issuer URL); empty: none.
	JWTIssuer string
	// MaxBatch bounds the items of one SignWorkloads call (default 512).
	MaxBatch int
	// BatchConcurrency bounds the items of one SignWorkloads call that are
	// authorized and signed at the same time (default 16): a slow
	// authorizer (a TokenReview per item) then costs a batch 1/16 of the
	// time.
	BatchConcurrency int
	// NodeRate and NodeBurst bound the certificates one node may obtain per
	// second (default 500/s, burst 2000).
	NodeRate  rate.Limit
	NodeBurst int
	// AttestRate and AttestBurst bound the AttestAgent calls the whole
	// server takes per second (default 50/s, burst 200); AttestPeerRate and
	// AttestPeerBurst those of one peer IP address (default 1/s, burst 10).
	// A call above either is refused with ResourceExhausted before its
	// credential is looked at: the call is unauthenticated.
	AttestRate      rate.Limit
	AttestBurst     int
	AttestPeerRate  rate.Limit
	AttestPeerBurst int
	// ServerDNSNames go into the CA's serving certificate.
	ServerDNSNames []string
	// OnAck is called when an agent acknowledges a bundle (Manager.Kick).
	OnAck func()
	// AckGrace is how long after a bundle was sent to a connected agent it
	// counts as not acknowledging it (NotAckedAgents; default 1m).
	AckGrace time.Duration

	// Nodes re-checks on every call of an agent, attestation included,
	// that its node may still run one (standalone: it is in the CA's
	// nodes). Nil allows every node.
	Nodes NodeChecker
	// Renewal re-checks every RenewAgent (Kubernetes: the fresh
	// ServiceAccount token). Nil checks nothing more than Nodes.
	Renewal RenewalChecker
	// Evictions refuses the agents of evicted nodes; nil: none.
	Evictions EvictionSource
	// AgentMaxAge refuses the renewal of an agent SVID whose original
	// attestation is older, so the agent attests anew; 0: no limit.
	AgentMaxAge time.Duration
	// StandardSigning signs with x509.CreateCertificate instead of the
	// direct encoder (pki.Signer.StandardPath), for comparison.
	StandardSigning bool

	// Acks records each node's acknowledgement for the cluster-wide count
	// of the bundle's adoption (adoption.Tracker); nil records nothing.
	Acks AckRecorder

	// Version is the CA's release version for the version-skew check of
	// attesting agents (internal/skew; default skew.Version()).
	Version string

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
	jwt     atomic.Pointer[jwtSigner]
	live    *liveLeaves

	limMu    sync.Mutex
	limiters map[string]*rate.Limiter
	attest   *attestThrottle

	// watchers maps each open bundle stream to the version its agent
	// acknowledged last, and ackCount counts the streams per version: an
	// acknowledgement updates two counters, never walks the streams.
	watchMu  sync.Mutex
	watchers map[*watcher]string
	ackCount map[string]int

	serving  servingCert
	verified verifiedAgents
	// pushed is the bundle message of the authority state in force, built
	// once for every stream that sends it (pushedOf).
	pushed atomic.Pointer[pushedBundle]
	// encodeEachPush encodes the bundle for each stream (sendBundle); set
	// by benchmarks only, for comparison.
	encodeEachPush bool
}

// pushedBundle is the bundle message built from loaded. Streams only read
// it. encoded is msg as gRPC sends it, encoded once for every stream
// (sendBundle).
type pushedBundle struct {
	loaded  *authority.Loaded
	msg     *issuerv1.Bundle
	encode  sync.Once
	encoded *grpc.PreparedMsg // nil: encoding failed; streams encode msg themselves
}

type signers struct {
	loaded   *authority.Loaded
	workload *pki.Signer
	agent    *pki.Signer
	bundle   *x509.CertPool
}

type watcher struct {
	node string
	sent atomic.Pointer[sentBundle]
}

// sentBundle is the bundle version last sent on a stream, and when.
type sentBundle struct {
	version string
	at      time.Time
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
	cfg.BatchConcurrency = cmp.Or(cfg.BatchConcurrency, 16)
	if cfg.BatchConcurrency < 0 {
		return nil, fmt.Errorf("issuer: batchConcurrency %d is negative", cfg.BatchConcurrency)
	}
	if cfg.NodeRate == 0 {
		cfg.NodeRate, cfg.NodeBurst = 500, 2000
	}
	if cfg.AttestRate == 0 {
		cfg.AttestRate, cfg.AttestBurst = 50, 200
	}
	if cfg.AttestPeerRate == 0 {
		cfg.AttestPeerRate, cfg.AttestPeerBurst = 1, 10
	}
	if cfg.AttestRate < 0 || cfg.AttestBurst < 1 || cfg.AttestPeerRate < 0 || cfg.AttestPeerBurst < 1 {
		return nil, fmt.Errorf("issuer: attest rate limits must be positive, got %v burst %d, per peer %v burst %d", cfg.AttestRate, cfg.AttestBurst, cfg.AttestPeerRate, cfg.AttestPeerBurst)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Version == "" {
		cfg.Version = skew.Version()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.AckGrace == 0 {
		cfg.AckGrace = time.Minute
	}
	if cfg.AgentMaxAge < 0 {
		return nil, fmt.Errorf("issuer: agentMaxAge %s is negative", cfg.AgentMaxAge)
	}
	s := &Server{
		cfg:      cfg,
		limiters: map[string]*rate.Limiter{},
		attest:   newAttestThrottle(cfg.AttestRate, cfg.AttestBurst, cfg.AttestPeerRate, cfg.AttestPeerBurst),
		watchers: map[*watcher]string{},
		ackCount: map[string]int{},
	}
	s.metrics = newMetrics(cfg.Registerer, s.AgentCounts, func() float64 { return float64(len(s.NotAckedAgents())) })
	s.live = newLiveLeaves(cfg.Now)
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(s.live)
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
			StandardPath: s.cfg.StandardSigning,
		},
		agent: &pki.Signer{
			Authority: l.Authority, Now: s.cfg.Now, Rand: s.cfg.Rand,
			Options:      policy.AgentRules(),
			StandardPath: s.cfg.StandardSigning,
		},
	}
	s.signers.Store(n)
	return n, nil
}

// AttestAgent issues an agent SVID for a valid bootstrap credential. The
// call is unauthenticated, so it is throttled first (per peer IP and for
// the whole server), and the CSR is checked before the credential: a join
// token is single-use, and a request that cannot succeed must not consume
// it.
func (s *Server) AttestAgent(ctx context.Context, req *issuerv1.AttestAgentRequest) (*issuerv1.AttestAgentResponse, error) {
	start := time.Now()
	caller := peerAddr(ctx)
	if scope := s.attest.allow(peerIP(ctx), s.cfg.Now()); scope != "" {
		s.metrics.attestThrottled.WithLabelValues(scope).Inc()
		s.cfg.Logger.WarnContext(ctx, "audit", "event", "deny", "decision", "deny", "kind", "agent", "op", "attest", "caller", caller, "reason", "rate limited ("+scope+")")
		if scope == "peer" {
			return nil, status.Errorf(codes.ResourceExhausted, "too many attestations from %s (limit %v/s, burst %d); retry with backoff", peerIP(ctx), s.cfg.AttestPeerRate, s.cfg.AttestPeerBurst)
		}
		return nil, status.Errorf(codes.ResourceExhausted, "too many attestations at this CA (limit %v/s, burst %d); retry with backoff", s.cfg.AttestRate, s.cfg.AttestBurst)
	}
	if err := skew.Check(s.cfg.Version, req.GetAgentVersion()); err != nil {
		s.auditDeny(ctx, "agent", "attest", caller, "", err)
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	csr, err := policy.CheckAgentCSR(req.GetCsr())
	if err != nil {
		s.auditDeny(ctx, "agent", "attest", caller, "", err)
		return nil, statusFor(err)
	}
	node, err := s.cfg.Attestor.AttestAgent(ctx, req)
	if err == nil {
		err = s.checkAttest(node)
	}
	if err != nil {
		s.auditDeny(ctx, "agent", "attest", caller, node, err)
		return nil, statusFor(err)
	}
	chain, leaf, bundle, err := s.signAgent(node, csr, s.cfg.Now())
	s.metrics.signDuration.Observe(time.Since(start).Seconds())
	if err != nil {
		s.auditDeny(ctx, "agent", "attest", caller, "node "+node, err)
		return nil, statusFor(err)
	}
	s.auditIssue(ctx, "agent", "attest", "node "+node+" ("+caller+")", leaf)
	return &issuerv1.AttestAgentResponse{CertificateChain: chain, Bundle: bundle}, nil
}

// RenewAgent issues a new agent SVID to an agent presenting its current
// one, after checking again that its node may keep an agent
// (checkRenewal); the new SVID keeps the original attestation time.
func (s *Server) RenewAgent(ctx context.Context, req *issuerv1.RenewAgentRequest) (*issuerv1.RenewAgentResponse, error) {
	start := time.Now()
	p, err := s.peerAgent(ctx)
	if err != nil {
		s.auditDeny(ctx, "agent", "renew", callerOf(ctx, p), p.node, err)
		return nil, err
	}
	node := p.node
	if err := s.checkRenewal(ctx, p, req); err != nil {
		s.auditDeny(ctx, "agent", "renew", "node "+node, "node "+node, err)
		if isStatus(err) {
			return nil, err
		}
		return nil, statusFor(err)
	}
	csr, err := policy.CheckAgentCSR(req.GetCsr())
	if err != nil {
		s.auditDeny(ctx, "agent", "renew", "node "+node, "node "+node, err)
		return nil, statusFor(err)
	}
	chain, leaf, bundle, err := s.signAgent(node, csr, p.attestedAt)
	s.metrics.signDuration.Observe(time.Since(start).Seconds())
	if err != nil {
		s.auditDeny(ctx, "agent", "renew", "node "+node, "node "+node, err)
		return nil, statusFor(err)
	}
	s.auditIssue(ctx, "agent", "renew", "node "+node, leaf)
	return &issuerv1.RenewAgentResponse{CertificateChain: chain, Bundle: bundle}, nil
}

func (s *Server) signAgent(node string, csr *x509.CertificateRequest, attestedAt time.Time) ([][]byte, *x509.Certificate, *issuerv1.Bundle, error) {
	id, err := pki.AgentID(s.cfg.TrustDomain, node)
	if err != nil {
		return nil, nil, nil, Deny(issuerv1.Denial_INVALID_ARGUMENT, "node name: %v", err)
	}
	sg, err := s.current()
	if err != nil {
		return nil, nil, nil, Deny(issuerv1.Denial_UNAVAILABLE, "%v", err)
	}
	leaf, der, err := agentSigner(sg, attestedAt).Sign(pki.SignRequest{Kind: pki.KindAgent, PublicKey: csr.PublicKey, ID: id, TTL: s.cfg.AgentTTL})
	if err != nil {
		return nil, nil, nil, err
	}
	s.live.record(sg.loaded, leaf.NotAfter)
	return chainDER(der, sg.loaded.Authority), leaf, bundleMessage(sg.loaded), nil
}

// admitBatch admits a batch of n items of kind ("workload", "jwt") from the
// calling agent: an agent peer, at most MaxBatch items, within its node's
// rate limit (unit names what is limited in the error). It returns the
// agent's node; each refusal is audited.
func (s *Server) admitBatch(ctx context.Context, kind, unit string, n int) (string, error) {
	p, err := s.peerAgent(ctx)
	if err != nil {
		s.auditDeny(ctx, kind, "sign", callerOf(ctx, p), "", err)
		return "", err
	}
	node := p.node
	if n > s.cfg.MaxBatch {
		s.cfg.Logger.WarnContext(ctx, "audit", "event", "deny", "decision", "deny", "kind", kind, "op", "sign", "caller", "node "+node, "count", n, "reason", "batch too large")
		return "", status.Errorf(codes.InvalidArgument, "batch of %d requests exceeds the limit of %d; split it", n, s.cfg.MaxBatch)
	}
	if !s.limiter(node).AllowN(s.cfg.Now(), n) {
		s.metrics.issued.WithLabelValues(kind, "denied").Add(float64(n))
		s.cfg.Logger.WarnContext(ctx, "audit", "event", "deny", "decision", "deny", "kind", kind, "op", "sign", "caller", "node "+node, "count", n, "reason", "rate limited")
		return "", status.Errorf(codes.ResourceExhausted, "node %s exceeded its rate limit of %v %s/s (burst %d); retry with backoff", node, s.cfg.NodeRate, unit, s.cfg.NodeBurst)
	}
	return node, nil
}

// SignWorkloads authorizes and signs a batch; every item gets its own
// result, so one bad item does not fail the others.
func (s *Server) SignWorkloads(ctx context.Context, req *issuerv1.SignWorkloadsRequest) (*issuerv1.SignWorkloadsResponse, error) {
	items := req.GetRequests()
	node, err := s.admitBatch(ctx, "workload", "certificates", len(items))
	if err != nil {
		return nil, err
	}
	sg, err := s.current()
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	results := make([]*issuerv1.WorkloadResult, len(items))
	if len(items) == 1 {
		// The usual batch of a fleet at its steady rate: no goroutine
		// (and its stack grown again through the signature) for one item.
		results[0] = s.signWorkload(ctx, sg, node, items[0])
		return &issuerv1.SignWorkloadsResponse{Results: results}, nil
	}
	// BatchConcurrency workers take the items in turn; a goroutine per
	// item would grow a fresh stack for the signature of each (4% of the
	// CA's CPU in BenchmarkIssuance).
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(s.cfg.BatchConcurrency, len(items)) {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < len(items); i = int(next.Add(1) - 1) {
				results[i] = s.signWorkload(ctx, sg, node, items[i]) // the items' errors are in their results
			}
		})
	}
	wg.Wait()
	return &issuerv1.SignWorkloadsResponse{Results: results}, nil
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
	if err := checkRequestStrings(item); err != nil {
		return deny(subject, err)
	}
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
	s.live.record(sg.loaded, leaf.NotAfter)
	s.auditIssue(ctx, "workload", "sign", "node "+node, leaf, slog.String("subject", grant.Subject))
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

// maxPodUIDLength bounds a request's pod_uid (a Kubernetes UID has 36
// bytes).
const maxPodUIDLength = 128

// checkRequestStrings refuses, before anything looks at them, request
// strings longer than any valid value: a SPIFFE ID above the SPIFFE limit
// of 2048 bytes, a pod UID above maxPodUIDLength, a request ID above
// maxAuditField.
func checkRequestStrings(item *issuerv1.WorkloadRequest) error {
	switch {
	case len(item.GetSpiffeId()) > pki.MaxIDLength:
		return Deny(issuerv1.Denial_INVALID_ARGUMENT, "spiffe_id: %d bytes exceed the SPIFFE limit of %d", len(item.GetSpiffeId()), pki.MaxIDLength)
	case len(item.GetPodUid()) > maxPodUIDLength:
		return Deny(issuerv1.Denial_INVALID_ARGUMENT, "pod_uid: %d bytes exceed the limit of %d", len(item.GetPodUid()), maxPodUIDLength)
	case len(item.GetRequestId()) > maxAuditField:
		return Deny(issuerv1.Denial_INVALID_ARGUMENT, "request_id: %d bytes exceed the limit of %d", len(item.GetRequestId()), maxAuditField)
	}
	return nil
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
	p, err := s.peerAgent(ctx)
	if err != nil {
		s.auditRefusal(ctx, "bundle", "watch", callerOf(ctx, p), "", err)
		return err
	}
	node := p.node
	w := &watcher{node: node}
	s.watchMu.Lock()
	s.watchers[w] = ""
	s.watchMu.Unlock()
	// Two goroutines per stream, this one and the reader of the
	// acknowledgements below: a CA holds one stream per node, and each
	// goroutine is a stack of its own.
	changes, unsubscribe := s.cfg.Authority.Subscribe()
	evicted, unsubscribeEvictions := s.evictions()
	defer func() {
		unsubscribeEvictions()
		unsubscribe()
		s.watchMu.Lock()
		s.setAckLocked(w, "")
		delete(s.watchers, w)
		s.watchMu.Unlock()
	}()

	acks := make(chan error, 1)
	go func() {
		for {
			ack, err := stream.Recv()
			if err != nil {
				acks <- err
				return
			}
			v := ack.GetVersion()
			s.watchMu.Lock()
			s.setAckLocked(w, v)
			s.watchMu.Unlock()
			if s.cfg.Acks != nil {
				s.cfg.Acks.Ack(node, v)
			}
			if s.cfg.OnAck != nil {
				s.cfg.OnAck()
			}
		}
	}()

	sent := ""
	for {
		sg, err := s.current()
		if err == nil && sg.loaded.BundleVersion != sent {
			if err := s.sendBundle(stream, sg.loaded); err != nil {
				return err
			}
			sent = sg.loaded.BundleVersion
			w.sent.Store(&sentBundle{version: sent, at: s.cfg.Now()})
		}
		select {
		case <-ctx.Done():
			return nil
		case err := <-acks:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return status.Convert(err).Err()
		case <-evicted:
			if err := s.revokedNow(p); err != nil {
				s.auditRefusal(ctx, "bundle", "watch", "node "+p.node, "node "+p.node, err)
				return status.Error(codes.Unauthenticated, err.Error())
			}
		case <-changes:
		}
	}
}

// setAckLocked moves w's acknowledgement to version ("" for none) and
// keeps the counts per version. watchMu must be held.
func (s *Server) setAckLocked(w *watcher, version string) {
	if old := s.watchers[w]; old != "" {
		if s.ackCount[old]--; s.ackCount[old] <= 0 {
			delete(s.ackCount, old)
		}
	}
	s.watchers[w] = version
	if version != "" {
		s.ackCount[version]++
	}
}

// AllAgentsCurrent reports whether every agent connected to this replica
// acknowledged the current bundle. It sees this replica's streams only:
// the authority counts the adoption of a root across replicas and against
// the expected nodes (internal/adoption).
func (s *Server) AllAgentsCurrent() bool {
	if _, err := s.current(); err != nil {
		return false
	}
	connected, current := s.AgentCounts()
	return connected == current
}

// AgentCounts returns the agents connected to this replica and how many of
// them hold the current bundle, in O(1).
func (s *Server) AgentCounts() (connected, current int) {
	sg, err := s.current()
	s.watchMu.Lock()
	defer s.watchMu.Unlock()
	if err == nil {
		current = s.ackCount[sg.loaded.BundleVersion]
	}
	return len(s.watchers), current
}

// NotAckedAgents returns the nodes of connected agents that have not
// acknowledged the current bundle AckGrace after it was sent to them,
// sorted. They hold a root activation back, at most until
// rotation.rootAckWait has passed.
func (s *Server) NotAckedAgents() []string {
	sg, err := s.current()
	if err != nil {
		return nil
	}
	now := s.cfg.Now()
	s.watchMu.Lock()
	defer s.watchMu.Unlock()
	var out []string
	for w := range s.watchers {
		sent := w.sent.Load()
		if s.watchers[w] == sg.loaded.BundleVersion || sent == nil || sent.version != sg.loaded.BundleVersion {
			continue
		}
		if now.Sub(sent.at) >= s.cfg.AckGrace {
			out = append(out, w.node)
		}
	}
	slices.Sort(out)
	return out
}

// callerOf names the caller of a refused call for the audit log: its node
// when its SVID was read, else its address.
func callerOf(ctx context.Context, p agentPeer) string {
	if p.node != "" {
		return "node " + p.node
	}
	return peerAddr(ctx)
}

func chainDER(leaf []byte, a pki.Authority) [][]byte {
	out := make([][]byte, 0, 2+len(a.Chain))
	out = append(out, leaf, a.Cert.Raw)
	for _, c := range a.Chain {
		out = append(out, c.Raw)
	}
	return out
}

// pushedOf returns the bundle message of l, built once per authority
// state: a push to 10,000 streams built it 10,000 times (a tenth of the
// CA's CPU during the push, half of it encoding the JWT keys).
func (s *Server) pushedOf(l *authority.Loaded) *pushedBundle {
	if p := s.pushed.Load(); p != nil && p.loaded == l {
		return p
	}
	p := &pushedBundle{loaded: l, msg: bundleMessage(l)}
	s.pushed.Store(p)
	return p
}

// sendBundle sends the bundle message of l on stream. The message is
// marshalled and framed once per authority state (grpc.PreparedMsg) for
// every stream of gRPC's proto codec whose requests are not compressed,
// as the agents' are: gRPC answers such a stream uncompressed, so the
// same bytes serve them all. Any other stream (a client asking for
// another codec, or compressing, where the binary registers one) gets
// the message encoded for it alone. encodeEachPush turns the shared
// encoding off (BenchmarkConnCost's A/B).
func (s *Server) sendBundle(stream grpc.ServerStream, l *authority.Loaded) error {
	p := s.pushedOf(l)
	if s.encodeEachPush || !plainStream(stream.Context()) {
		return stream.SendMsg(p.msg)
	}
	p.encode.Do(func() {
		m := &grpc.PreparedMsg{}
		if err := m.Encode(stream, p.msg); err == nil {
			p.encoded = m
		}
	})
	if p.encoded == nil {
		return stream.SendMsg(p.msg)
	}
	return stream.SendMsg(p.encoded)
}

// plainStream reports whether the stream of ctx uses gRPC's proto codec
// and uncompressed requests, which gRPC answers uncompressed. gRPC has no
// public accessor for either: its transport stream has the methods, and a
// stream without them counts as not plain (encoded for itself).
func plainStream(ctx context.Context) bool {
	st, ok := grpc.ServerTransportStreamFromContext(ctx).(interface {
		RecvCompress() string
		ContentSubtype() string
	})
	if !ok {
		return false
	}
	rc, sub := st.RecvCompress(), st.ContentSubtype()
	return (rc == "" || rc == encoding.Identity) && (sub == "" || sub == "proto")
}

func bundleMessage(l *authority.Loaded) *issuerv1.Bundle {
	b := &issuerv1.Bundle{Version: l.BundleVersion}
	for _, c := range l.Bundle {
		b.X509Authorities = append(b.X509Authorities, c.Raw)
	}
	for _, t := range l.Taints {
		b.TaintedKeyIds = append(b.TaintedKeyIds, t.SubjectKeyID)
	}
	if len(b.TaintedKeyIds) > 0 {
		b.ReissueWindowSeconds = int64(l.TaintReissueWindow / time.Second)
	}
	b.JwtAuthorities = jwtAuthorities(l)
	return b
}

// LiveLeaves returns how many leaves this replica issued since it started
// that are still valid, per authority key (mayfly_ca_authority_live_leaves).
func (s *Server) LiveLeaves() []AuthorityLeaves { return s.live.Counts() }

func statusFor(err error) error {
	d := DenialOf(err)
	return status.Error(grpcCode(d.Code), d.Message)
}

// serialHex formats a serial as the API (Issued.serial_number) and the
// authority's logs do, so an audit line can be found by the serial an
// agent reports.
func serialHex(c *x509.Certificate) string { return c.SerialNumber.Text(16) }
