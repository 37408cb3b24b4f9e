package policy

import (
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mayfly-pki/mayfly/pkg/jwtsvid"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// Names of the JWT-SVID rules.
const (
	RuleJWTTTL      = "jwt-ttl"
	RuleJWTAudience = "jwt-audience"
)

// The JWT-SVID lifetimes: 5 minutes unless asked otherwise, at most an
// hour (authority.Policy.JWTMaxTokenTTL keeps a retired key published that
// long).
const (
	DefaultJWTTTL = 5 * time.Minute
	MinJWTTTL     = time.Minute
	MaxJWTTTL     = time.Hour
)

// JWTRequest is what a JWT-SVID is signed for: the granted ID, the
// audiences and the lifetime.
type JWTRequest struct {
	ID       spiffeid.ID
	Audience []string
	TTL      time.Duration
}

// JWTRule is one named check of a JWT-SVID request.
type JWTRule interface {
	Name() string
	Check(req *JWTRequest) error
}

// JWTLimits bound JWT-SVID requests.
type JWTLimits struct {
	// MinTTL and MaxTTL bound the lifetime (default MinJWTTTL, MaxJWTTTL).
	MinTTL, MaxTTL time.Duration
	// KubernetesIDs requires /ns/<ns>/sa/<sa> IDs.
	KubernetesIDs bool
}

// JWTRules is the policy of JWT-SVIDs: no reserved ID, the Kubernetes ID
// shape when asked for, the lifetime bounds, and 1 to jwtsvid.MaxAudiences
// audiences of at most jwtsvid.MaxAudienceLength bytes.
func JWTRules(l JWTLimits) []JWTRule {
	rules := []JWTRule{jwtReserved{}}
	if l.KubernetesIDs {
		rules = append(rules, jwtIDShape{})
	}
	minTTL, maxTTL := l.MinTTL, l.MaxTTL
	if minTTL == 0 {
		minTTL = MinJWTTTL
	}
	if maxTTL == 0 {
		maxTTL = MaxJWTTTL
	}
	return append(rules, JWTTTL{TTLBounds{Min: minTTL, Max: maxTTL}}, JWTAudience{})
}

// CheckJWT applies rules in order and returns the first refusal.
func CheckJWT(rules []JWTRule, req *JWTRequest) error {
	for _, r := range rules {
		if err := r.Check(req); err != nil {
			return err
		}
	}
	return nil
}

type jwtReserved struct{}

func (jwtReserved) Name() string { return RuleReservedID }
func (jwtReserved) Check(req *JWTRequest) error {
	return ReservedIDs{}.Apply(&pki.SignRequest{Kind: pki.KindWorkload, ID: req.ID}, nil)
}

type jwtIDShape struct{}

func (jwtIDShape) Name() string { return RuleIDShape }
func (jwtIDShape) Check(req *JWTRequest) error {
	return IDShape{}.Apply(&pki.SignRequest{Kind: pki.KindWorkload, ID: req.ID}, nil)
}

// JWTTTL bounds a JWT-SVID's lifetime.
type JWTTTL struct{ Bounds TTLBounds }

// Name implements JWTRule.
func (JWTTTL) Name() string { return RuleJWTTTL }

// Check implements JWTRule.
func (t JWTTTL) Check(req *JWTRequest) error {
	switch {
	case req.TTL < t.Bounds.Min:
		return Deny(RuleJWTTTL, ClassBadRequest, "ttl %s is below the minimum %s", req.TTL, t.Bounds.Min)
	case req.TTL > t.Bounds.Max:
		return Deny(RuleJWTTTL, ClassBadRequest, "ttl %s is above the maximum %s", req.TTL, t.Bounds.Max)
	}
	return nil
}

// JWTAudience requires 1 to jwtsvid.MaxAudiences audiences, each 1 to
// jwtsvid.MaxAudienceLength bytes.
type JWTAudience struct{}

// Name implements JWTRule.
func (JWTAudience) Name() string { return RuleJWTAudience }

// Check implements JWTRule.
func (JWTAudience) Check(req *JWTRequest) error {
	switch {
	case len(req.Audience) == 0:
		return Deny(RuleJWTAudience, ClassBadRequest, "audience is required")
	case len(req.Audience) > jwtsvid.MaxAudiences:
		return Deny(RuleJWTAudience, ClassBadRequest, "%d audiences, at most %d allowed", len(req.Audience), jwtsvid.MaxAudiences)
	}
	for i, a := range req.Audience {
		if a == "" || len(a) > jwtsvid.MaxAudienceLength {
			return Deny(RuleJWTAudience, ClassBadRequest, "audience[%d]: must be 1 to %d bytes, got %d", i, jwtsvid.MaxAudienceLength, len(a))
		}
	}
	return nil
}
