// Package workloadapi is the node agent's SPIFFE Workload API server
// (FetchX509SVID, FetchX509Bundles) on the service definition go-spiffe
// ships, so that go-spiffe, spiffe-helper, Envoy and other SPIFFE clients
// work unchanged. Each stream attests its caller once, sends the caller's
// current X.509-SVIDs and bundles, and pushes a new response whenever they
// change. Behaviour on errors follows SPIRE's agent, which the clients are
// written against: a request without the security header is InvalidArgument
// (go-spiffe stops watching), a caller without identity is PermissionDenied
// "no identity issued" (go-spiffe retries with backoff).
//
// The socket is open to every local user, so the server bounds what callers
// can hold (Limits): LimitListener closes connections over the total or
// per-uid limit at accept, before any HTTP/2 work, and ServerOptions bound
// streams per connection, header and message sizes, and how long a
// connection may stay without a handshake or a call.
package workloadapi

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// SecurityHeader is the metadata key every Workload API call must carry
// with the value "true"; it keeps browsers and other SSRF vectors, which
// cannot set it, from fetching SVIDs.
const SecurityHeader = "workload.spiffe.io"

// Identity is one SVID the agent holds for a workload, with its key and the bundle.
type Identity struct {
	// ID is the SPIFFE ID of the SVID.
	ID spiffeid.ID
	// Chain is the certificate chain, leaf first; intermediates may follow.
	Chain []*x509.Certificate
	// Key is the leaf's private key; it must be exportable as PKCS#8.
	Key crypto.Signer
	// Hint tells a workload holding several SVIDs which one to use for what
	// (optional).
	Hint string
}

// Caller is what attestation found out about a peer; opaque to this package.
type Caller any

// Attestor identifies the caller of a request (internal/workloadattest in the agent).
type Attestor interface {
	// Attest returns the caller of the request in ctx. An error refuses the
	// request with PermissionDenied and is logged as an audit line.
	Attest(ctx context.Context) (Caller, error)
}

// Source gives the identities of a caller and tells when they change.
// Returned slices, maps and certificates are snapshots: the source replaces
// them on change and never modifies them in place, so the server can cache
// what it built from them.
type Source interface {
	// Identities returns the current identities of the caller (maybe waiting
	// up to ctx for the first issuance), and the trust bundle roots by trust
	// domain. No identities means the caller is not entitled to any
	// (PermissionDenied). An error carrying a gRPC status is returned to the
	// client as is; any other error is logged and returned as Unavailable.
	Identities(ctx context.Context, c Caller) ([]Identity, map[spiffeid.TrustDomain][]*x509.Certificate, error)
	// Subscribe returns a channel that receives when the identities or bundle
	// of c may have changed, and a cancel func. Signals may be coalesced; a
	// closed channel ends the caller's streams with Unavailable.
	Subscribe(c Caller) (<-chan struct{}, func())
}

// SendObserver is implemented by a Source that must know what the open
// streams were sent (the agent acknowledges a trust bundle to the CA only
// once every stream was sent it).
type SendObserver interface {
	// Sent is called each time a stream's Send of a response returned nil,
	// with the stream's context (the one its Identities calls get) and the
	// bundles the response carried.
	Sent(ctx context.Context, bundles map[spiffeid.TrustDomain][]*x509.Certificate)
}

// Config configures a Server.
type Config struct {
	// Attestor identifies callers (required).
	Attestor Attestor
	// Source gives the callers' identities (required).
	Source Source
	// Logger receives audit and error lines (default: discard).
	Logger *slog.Logger
	// Registerer receives the metrics (optional).
	Registerer prometheus.Registerer
	// Now is the clock that expires cached responses and spaces the log
	// lines about refused connections (default time.Now).
	Now func() time.Time
	// Limits bound connections, streams and sizes (zero fields: DefaultLimits).
	// They apply to a gRPC server created with ServerOptions that serves a
	// listener wrapped by LimitListener.
	Limits Limits
}

// Server is the SPIFFE Workload API server.
type Server struct {
	attestor Attestor
	source   Source
	log      *slog.Logger
	metrics  *metrics
	svids    *responseCache
	limits   Limits
	now      func() time.Time
}

// New validates cfg and returns a Server, its metrics registered.
func New(cfg Config) (*Server, error) {
	if cfg.Attestor == nil {
		return nil, errors.New("workloadapi: Config.Attestor is required")
	}
	if cfg.Source == nil {
		return nil, errors.New("workloadapi: Config.Source is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	limits := cfg.Limits.withDefaults()
	if err := limits.check(); err != nil {
		return nil, fmt.Errorf("workloadapi: %w", err)
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("workloadapi: registering metrics: %w", err)
	}
	return &Server{
		attestor: cfg.Attestor,
		source:   cfg.Source,
		log:      cfg.Logger,
		metrics:  m,
		svids:    newResponseCache(cfg.Now),
		limits:   limits,
		now:      cfg.Now,
	}, nil
}

// Register registers the SPIFFE Workload API service on g. The security
// header and the request metrics are enforced by UnaryInterceptor and
// StreamInterceptor, and the limits by ServerOptions, which g must have
// been created with; g must serve listeners wrapped by LimitListener.
func (s *Server) Register(g *grpc.Server) {
	workload.RegisterSpiffeWorkloadAPIServer(g, &handler{s: s})
}

// UnaryInterceptor refuses calls without the security header and counts
// calls by method and code. It applies to every method of the server it is
// installed on, implemented or not.
func (s *Server) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (resp any, err error) {
		defer func() { s.metrics.countRequest(info.FullMethod, err) }()
		if err := checkSecurityHeader(ctx); err != nil {
			return nil, err
		}
		return h(ctx, req)
	}
}

// StreamInterceptor is UnaryInterceptor for streams; a stream is counted
// when it ends.
func (s *Server) StreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) (err error) {
		defer func() { s.metrics.countRequest(info.FullMethod, err) }()
		if err := checkSecurityHeader(ss.Context()); err != nil {
			return err
		}
		return h(srv, ss)
	}
}

var errSecurityHeader = status.Error(codes.InvalidArgument, "security header missing from request")

// checkSecurityHeader is SPIRE's check: exactly one value, "true".
func checkSecurityHeader(ctx context.Context) error {
	v := metadata.ValueFromIncomingContext(ctx, SecurityHeader)
	if len(v) != 1 || v[0] != "true" {
		return errSecurityHeader
	}
	return nil
}

// methodName is the last element of a gRPC full method name.
func methodName(fullMethod string) string {
	return fullMethod[strings.LastIndexByte(fullMethod, '/')+1:]
}

// attest identifies the caller; a failure is an audit line and
// PermissionDenied.
func (s *Server) attest(ctx context.Context, method string) (Caller, error) {
	start := time.Now()
	c, err := s.attestor.Attest(ctx)
	s.metrics.attestation.Observe(time.Since(start).Seconds())
	if err == nil {
		return c, nil
	}
	if ctx.Err() != nil {
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	s.log.WarnContext(ctx, "workload attestation failed, request denied", "method", method, "error", err)
	return nil, status.Error(codes.PermissionDenied, "workload attestation failed")
}

// identities asks the source, mapping its failures to gRPC statuses.
func (s *Server) identities(ctx context.Context, c Caller) ([]Identity, map[spiffeid.TrustDomain][]*x509.Certificate, error) {
	ids, bundles, err := s.source.Identities(ctx, c)
	switch {
	case err == nil:
	case ctx.Err() != nil:
		return nil, nil, status.FromContextError(ctx.Err()).Err()
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return nil, nil, status.FromContextError(err).Err()
	default:
		if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
			return nil, nil, st.Err()
		}
		s.log.ErrorContext(ctx, "identity source failed", "error", err)
		return nil, nil, status.Error(codes.Unavailable, "identities are not available, retry later")
	}
	if len(ids) == 0 {
		return nil, nil, status.Error(codes.PermissionDenied, "no identity issued")
	}
	return ids, bundles, nil
}

// handler implements the service; it is unexported so that the Server's API
// stays New, Register and the interceptors.
type handler struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	s *Server
}

// FetchX509SVID streams the caller's X.509-SVIDs: the current ones at once,
// then a response whenever they or the bundles change.
func (h *handler) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	s := h.s
	ctx := stream.Context()
	var last *x509Response
	return s.watch(ctx, "FetchX509SVID", func(caller Caller) error {
		ids, bundles, err := s.identities(ctx, caller)
		if err != nil {
			return err
		}
		r, err := s.svids.get(ids, bundles)
		if err != nil {
			s.log.ErrorContext(ctx, "cannot build X509SVIDResponse", "spiffe_id", ids[0].ID.String(), "error", err)
			return status.Error(codes.Internal, "identity cannot be served")
		}
		if !r.sameContent(last) {
			if err := stream.Send(r.encoded); err != nil {
				return err
			}
			s.sent(ctx, bundles)
			last = r
		}
		return nil
	})
}

// FetchX509Bundles streams the trust bundles of the caller: the current
// ones at once, then a response whenever they change.
func (h *handler) FetchX509Bundles(_ *workload.X509BundlesRequest, stream grpc.ServerStreamingServer[workload.X509BundlesResponse]) error {
	s := h.s
	ctx := stream.Context()
	var last []byte
	return s.watch(ctx, "FetchX509Bundles", func(caller Caller) error {
		// SPIRE answers no identity with PermissionDenied here too.
		_, bundles, err := s.identities(ctx, caller)
		if err != nil {
			return err
		}
		msg, wire, err := bundlesResponse(bundles)
		if err != nil {
			s.log.ErrorContext(ctx, "cannot build X509BundlesResponse", "error", err)
			return status.Error(codes.Internal, "bundles cannot be served")
		}
		if last == nil || string(wire) != string(last) {
			if err := stream.Send(msg); err != nil {
				return err
			}
			s.sent(ctx, bundles)
			last = wire
		}
		return nil
	})
}

// watch is the life of a streaming call: it attests the caller, then runs
// update (which sends the caller what changed) at once and again on every
// change the source signals, until update fails or the stream ends. The
// stream ends with nil (as in SPIRE) when the client goes away, and with
// Unavailable when the source closes the subscription.
func (s *Server) watch(ctx context.Context, method string, update func(Caller) error) error {
	caller, err := s.attest(ctx, method)
	if err != nil {
		return err
	}
	// Subscribe before the first read so that no change goes unnoticed.
	changed, cancel := s.source.Subscribe(caller)
	defer cancel()
	for {
		if err := update(caller); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-changed:
			if !ok {
				return status.Error(codes.Unavailable, "identity source closed, retry later")
			}
		}
	}
}

// sent tells the source, if it observes sends, that the stream of ctx was
// sent bundles.
func (s *Server) sent(ctx context.Context, bundles map[spiffeid.TrustDomain][]*x509.Certificate) {
	if o, ok := s.source.(SendObserver); ok {
		o.Sent(ctx, bundles)
	}
}
