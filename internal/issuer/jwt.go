package issuer

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/policy"
	"github.com/mayfly-pki/mayfly/pkg/jwtsvid"
)

// jwtSigner is the JWT signer of one loaded authority.
type jwtSigner struct {
	loaded *authority.Loaded
	kid    string
	signer *jwtsvid.Signer
	rules  []policy.JWTRule
	// audit is the logger with the fixed attributes of an issue line,
	// which the handler then formats once, not per token.
	audit *slog.Logger
}

// currentJWT returns the signer of the JWT key in force.
func (s *Server) currentJWT() (*jwtSigner, error) {
	l, err := s.cfg.Authority.Current()
	if err != nil {
		return nil, err
	}
	if cur := s.jwt.Load(); cur != nil && cur.loaded == l {
		return cur, nil
	}
	if l.JWTSigner == nil {
		return nil, Deny(issuerv1.Denial_UNAVAILABLE, "the CA has no JWT signing key yet")
	}
	signer, err := jwtsvid.NewSigner(l.JWTSigner.Key, l.JWTSigner.KeyID)
	if err != nil {
		return nil, err
	}
	n := &jwtSigner{loaded: l, kid: l.JWTSigner.KeyID, signer: signer,
		rules: policy.JWTRules(policy.JWTLimits{KubernetesIDs: s.cfg.KubernetesIDs}),
		audit: s.cfg.Logger.With(slog.String("event", "issue"), slog.String("decision", "allow"), slog.String("kind", "jwt"), slog.String("op", "sign"))}
	s.jwt.Store(n)
	return n, nil
}

// SignJWTs authorizes and signs a batch of JWT-SVIDs; every item gets its
// own result. Authorization is SignWorkloads': the item is put to the
// WorkloadAuthorizer as the WorkloadRequest it names (pod or SPIFFE ID).
func (s *Server) SignJWTs(ctx context.Context, req *issuerv1.SignJWTsRequest) (*issuerv1.SignJWTsResponse, error) {
	items := req.GetRequests()
	node, err := s.admitBatch(ctx, "jwt", "credentials", len(items))
	if err != nil {
		return nil, err
	}
	sg, err := s.currentJWT()
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	// Items are authorized and signed BatchConcurrency at a time, as in
	// SignWorkloads: a batch's signatures use every core. Each worker takes
	// the next item until none is left, so a goroutine's stack grows to
	// what signing needs once per worker, not once per token.
	results := make([]*issuerv1.JWTResult, len(items))
	var next atomic.Int64
	var g errgroup.Group
	for range min(s.cfg.BatchConcurrency, len(items)) {
		g.Go(func() error {
			for i := int(next.Add(1) - 1); i < len(items); i = int(next.Add(1) - 1) {
				results[i] = s.signJWT(ctx, sg, node, items[i])
			}
			return nil
		})
	}
	_ = g.Wait() // the items' errors are in their results
	return &issuerv1.SignJWTsResponse{Results: results}, nil
}

func (s *Server) signJWT(ctx context.Context, sg *jwtSigner, node string, item *issuerv1.JWTRequest) *issuerv1.JWTResult {
	start := time.Now()
	res := &issuerv1.JWTResult{RequestId: item.GetRequestId()}
	deny := func(subject string, err error) *issuerv1.JWTResult {
		s.auditDeny(ctx, "jwt", "sign", "node "+node, subject, err)
		res.Result = &issuerv1.JWTResult_Denial{Denial: DenialOf(err)}
		return res
	}
	wr := &issuerv1.WorkloadRequest{RequestId: item.GetRequestId(), PodUid: item.GetPodUid(), SpiffeId: item.GetSpiffeId(), PodToken: item.GetPodToken()}
	subject := requestSubject(wr)
	if err := checkRequestStrings(wr); err != nil {
		return deny(subject, err)
	}
	ttl, err := requestTTL(item.GetTtlSeconds(), policy.DefaultJWTTTL)
	if err != nil {
		return deny(subject, err)
	}
	// Audiences are checked before the authorizer looks anything up.
	if err := (policy.JWTAudience{}).Check(&policy.JWTRequest{Audience: item.GetAudience()}); err != nil {
		return deny(subject, err)
	}
	grant, err := s.cfg.Authorizer.AuthorizeWorkload(ctx, node, wr)
	if err != nil {
		return deny(subject, err)
	}
	if err := policy.CheckJWT(sg.rules, &policy.JWTRequest{ID: grant.ID, Audience: item.GetAudience(), TTL: ttl}); err != nil {
		return deny(grant.ID.String(), err)
	}
	tok, exp, err := sg.sign(grant.ID, item.GetAudience(), s.cfg.JWTIssuer, ttl, s.cfg.Now())
	s.metrics.signDuration.Observe(time.Since(start).Seconds())
	if err != nil {
		return deny(grant.ID.String(), fmt.Errorf("signing JWT-SVID: %w", err))
	}
	s.metrics.issuedOf("jwt").Inc()
	// One audit line per token, as typed attributes (see auditIssue) and
	// built only when the level is on.
	if sg.audit.Enabled(ctx, slog.LevelInfo) {
		sg.audit.LogAttrs(ctx, slog.LevelInfo, "audit",
			slog.String("caller", clip("node "+node, maxAuditField)), slog.String("spiffe_id", grant.ID.String()), slog.String("kid", sg.kid),
			slog.String("audience", clip("["+strings.Join(item.GetAudience(), " ")+"]", maxAuditField)),
			slog.String("not_after", exp.UTC().Format(time.RFC3339)), slog.String("subject", grant.Subject))
	}
	res.Result = &issuerv1.JWTResult_Issued{Issued: &issuerv1.IssuedJWT{
		SpiffeId: grant.ID.String(), Token: tok, ExpiresAtUnix: exp.Unix(), KeyId: sg.kid,
	}}
	return res
}

// sign signs a token for id valid for ttl from now (whole seconds, as the
// claims carry them). The policy caps ttl at policy.MaxJWTTTL, which
// authority.Policy.JWTMaxTokenTTL keeps a retired key published for.
func (sg *jwtSigner) sign(id spiffeid.ID, aud []string, iss string, ttl time.Duration, now time.Time) (string, time.Time, error) {
	now = now.Truncate(time.Second)
	exp := now.Add(ttl)
	tok, err := sg.signer.Sign(jwtsvid.Claims{Subject: id, Audience: aud, IssuedAt: now, Expiry: exp, Issuer: iss})
	return tok, exp, err
}

// jwtAuthorities are the published JWT keys of l for the bundle message.
func jwtAuthorities(l *authority.Loaded) []*issuerv1.JWTAuthority {
	var out []*issuerv1.JWTAuthority
	for _, kid := range sortedKIDs(l) {
		der, err := x509.MarshalPKIXPublicKey(l.JWTKeys[kid])
		if err != nil {
			continue // keys of the state are ECDSA or RSA; never happens
		}
		out = append(out, &issuerv1.JWTAuthority{KeyId: kid, PublicKey: der})
	}
	return out
}

func sortedKIDs(l *authority.Loaded) []string {
	return slices.Sorted(maps.Keys(l.JWTKeys))
}
