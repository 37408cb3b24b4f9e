package workloadapi

import (
	"context"
	"errors"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/mayfly-pki/mayfly/pkg/jwtsvid"
)

// JWTSVID is one JWT-SVID of a caller.
type JWTSVID struct {
	ID    spiffeid.ID
	Token string
	Hint  string
}

// JWTSource is implemented by a Source that serves JWT-SVIDs; without it
// the JWT calls answer Unimplemented.
type JWTSource interface {
	// JWTSVIDs returns a JWT-SVID for audience of each identity of the
	// caller, or of the one named id when id is not zero. Errors are
	// mapped as Identities' are; none means PermissionDenied.
	JWTSVIDs(ctx context.Context, c Caller, id spiffeid.ID, audience []string) ([]JWTSVID, error)
	// JWTBundles returns the JWT bundles of the trust domains the agent
	// holds; Source.Subscribe signals their changes.
	JWTBundles() *jwtbundle.Set
}

var errJWTUnsupported = status.Error(codes.Unimplemented, "JWT-SVIDs are not served by this agent")

func (s *Server) jwtSource() (JWTSource, error) {
	js, ok := s.source.(JWTSource)
	if !ok {
		return nil, errJWTUnsupported
	}
	return js, nil
}

// FetchJWTSVID returns the caller's JWT-SVIDs for the audience (required).
func (h *handler) FetchJWTSVID(ctx context.Context, req *workload.JWTSVIDRequest) (*workload.JWTSVIDResponse, error) {
	s := h.s
	js, err := s.jwtSource()
	if err != nil {
		return nil, err
	}
	if err := jwtsvid.CheckAudience(req.GetAudience()); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "audience: %v", err)
	}
	var id spiffeid.ID
	if raw := req.GetSpiffeId(); raw != "" {
		if id, err = spiffeid.FromString(raw); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "spiffe_id: %v", err)
		}
	}
	caller, err := s.attest(ctx, "FetchJWTSVID")
	if err != nil {
		return nil, err
	}
	svids, err := js.JWTSVIDs(ctx, caller, id, req.GetAudience())
	if err = s.sourceError(ctx, err); err != nil {
		return nil, err
	}
	if len(svids) == 0 {
		return nil, status.Error(codes.PermissionDenied, "no identity issued")
	}
	resp := &workload.JWTSVIDResponse{Svids: make([]*workload.JWTSVID, 0, len(svids))}
	for _, v := range svids {
		resp.Svids = append(resp.Svids, &workload.JWTSVID{SpiffeId: v.ID.String(), Svid: v.Token, Hint: v.Hint})
	}
	return resp, nil
}

// FetchJWTBundles streams the JWT bundles: at once, then on every change.
func (h *handler) FetchJWTBundles(_ *workload.JWTBundlesRequest, stream grpc.ServerStreamingServer[workload.JWTBundlesResponse]) error {
	s := h.s
	js, err := s.jwtSource()
	if err != nil {
		return err
	}
	ctx := stream.Context()
	var last *workload.JWTBundlesResponse
	return s.watch(ctx, "FetchJWTBundles", func(Caller) error {
		msg, err := jwtBundlesResponse(js.JWTBundles())
		if err != nil {
			s.log.ErrorContext(ctx, "cannot build JWTBundlesResponse", "error", err)
			return status.Error(codes.Internal, "JWT bundles cannot be served")
		}
		if last == nil || !sameBundles(last, msg) {
			if err := stream.Send(msg); err != nil {
				return err
			}
			last = msg
		}
		return nil
	})
}

// ValidateJWTSVID validates a token for the audience against the JWT
// bundles (pkg/jwtsvid's checks); a rejection is InvalidArgument with the
// reason.
func (h *handler) ValidateJWTSVID(ctx context.Context, req *workload.ValidateJWTSVIDRequest) (*workload.ValidateJWTSVIDResponse, error) {
	s := h.s
	js, err := s.jwtSource()
	if err != nil {
		return nil, err
	}
	if req.GetAudience() == "" {
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	}
	if req.GetSvid() == "" {
		return nil, status.Error(codes.InvalidArgument, "svid must be specified")
	}
	if _, err := s.attest(ctx, "ValidateJWTSVID"); err != nil {
		return nil, err
	}
	c, err := jwtsvid.Validate(req.GetSvid(), req.GetAudience(), js.JWTBundles(), s.now())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	aud := make([]any, len(c.Audience))
	for i, a := range c.Audience {
		aud[i] = a
	}
	claims := map[string]any{"sub": c.Subject.String(), "aud": aud, "exp": float64(c.Expiry.Unix())}
	if !c.IssuedAt.IsZero() {
		claims["iat"] = float64(c.IssuedAt.Unix())
	}
	if !c.NotBefore.IsZero() {
		claims["nbf"] = float64(c.NotBefore.Unix())
	}
	if c.Issuer != "" {
		claims["iss"] = c.Issuer
	}
	st, err := structpb.NewStruct(claims)
	if err != nil {
		return nil, status.Error(codes.Internal, "claims cannot be encoded")
	}
	return &workload.ValidateJWTSVIDResponse{SpiffeId: c.Subject.String(), Claims: st}, nil
}

// sourceError maps a JWTSource failure as identities maps a Source's.
func (s *Server) sourceError(ctx context.Context, err error) error {
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return status.FromContextError(ctx.Err()).Err()
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	}
	if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
		return st.Err()
	}
	s.log.ErrorContext(ctx, "JWT source failed", "error", err)
	return status.Error(codes.Unavailable, "JWT-SVIDs are not available, retry later")
}

func jwtBundlesResponse(set *jwtbundle.Set) (*workload.JWTBundlesResponse, error) {
	msg := &workload.JWTBundlesResponse{Bundles: map[string][]byte{}}
	if set == nil {
		return msg, nil
	}
	for _, b := range set.Bundles() {
		raw, err := b.Marshal()
		if err != nil {
			return nil, err
		}
		msg.Bundles[b.TrustDomain().IDString()] = raw
	}
	return msg, nil
}

func sameBundles(a, b *workload.JWTBundlesResponse) bool {
	if len(a.GetBundles()) != len(b.GetBundles()) {
		return false
	}
	for k, v := range a.GetBundles() {
		if string(b.GetBundles()[k]) != string(v) {
			return false
		}
	}
	return true
}
