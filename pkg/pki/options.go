package pki

import (
	"crypto/x509"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Lifetime bounds of the default policies (docs/architecture.md, Identities).
const (
	MinWorkloadTTL     = 5 * time.Minute
	MaxWorkloadTTL     = 24 * time.Hour
	MinIntermediateTTL = time.Hour
	MaxIntermediateTTL = 30 * 24 * time.Hour
	// MaxDNSNames bounds the DNS SANs of one leaf in the default policy.
	MaxDNSNames = 32
)

// DefaultWorkloadOptions is the policy for X.509-SVID leaves (workloads and
// agents): kind workload or agent, ID shaped per kind, TTL between 5m and
// 24h, any supported key type, and syntactically valid DNS names (at most
// MaxDNSNames). Which DNS names a workload may have is the caller's policy.
// The CA's own issuing paths use internal/policy's rule sets, which add the
// reserved-ID rule; this default serves tests and tools.
func DefaultWorkloadOptions() []SignOption {
	return []SignOption{
		AllowKinds(KindWorkload, KindAgent),
		IDShape(),
		TTLRange(MinWorkloadTTL, MaxWorkloadTTL),
		AllowKeyTypes(KeyTypes()...),
		ValidDNSNames(MaxDNSNames),
	}
}

// DefaultIntermediateOptions is the policy for intermediates signed by a
// root: kind intermediate, TTL between 1h and 30 days, and a name constraint
// that limits URI SANs below it to the trust domain.
func DefaultIntermediateOptions() []SignOption {
	return []SignOption{
		AllowKinds(KindIntermediate),
		IDShape(),
		TTLRange(MinIntermediateTTL, MaxIntermediateTTL),
		ValidDNSNames(0),
		ConstrainToTrustDomain(),
	}
}

// AllowKinds denies requests of kinds not listed.
func AllowKinds(kinds ...Kind) SignOption {
	return SignOptionFunc(func(req *SignRequest, _ *x509.Certificate) error {
		if !slices.Contains(kinds, req.Kind) {
			return fmt.Errorf("%w: kind %q is not allowed here (allowed: %v)", ErrPolicy, req.Kind, kinds)
		}
		return nil
	})
}

// IDShape denies IDs whose path does not fit the kind: /ns/<ns>/sa/<sa> for
// workloads, /mayfly/agent/<node> for agents, no path for intermediates.
func IDShape() SignOption {
	return SignOptionFunc(func(req *SignRequest, _ *x509.Certificate) error {
		var ok bool
		switch req.Kind {
		case KindWorkload:
			_, _, ok = Workload(req.ID)
		case KindAgent:
			_, ok = Agent(req.ID)
		case KindIntermediate, KindRoot:
			ok = req.ID.Path() == ""
		}
		if !ok {
			return fmt.Errorf("%w: ID path %q does not fit kind %q", ErrPolicy, req.ID.Path(), req.Kind)
		}
		return nil
	})
}

// TTLRange denies requested TTLs outside [minTTL, maxTTL].
func TTLRange(minTTL, maxTTL time.Duration) SignOption {
	return SignOptionFunc(func(req *SignRequest, _ *x509.Certificate) error {
		if req.TTL < minTTL || req.TTL > maxTTL {
			return fmt.Errorf("%w: ttl %s is outside [%s, %s]", ErrPolicy, req.TTL, minTTL, maxTTL)
		}
		return nil
	})
}

// AllowKeyTypes denies subject keys whose KeyType is not listed.
func AllowKeyTypes(types ...KeyType) SignOption {
	return SignOptionFunc(func(req *SignRequest, _ *x509.Certificate) error {
		kt, err := KeyTypeOf(req.PublicKey)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrPolicy, err)
		}
		if !slices.Contains(types, kt) {
			return fmt.Errorf("%w: key type %s is not allowed (allowed: %v)", ErrPolicy, kt, types)
		}
		return nil
	})
}

// ValidDNSNames denies more than maxNames DNS names, duplicates, and names
// that are not lowercase hostnames (no wildcards, IP addresses, trailing
// dots or uppercase). maxNames 0 forbids DNS names.
func ValidDNSNames(maxNames int) SignOption {
	return SignOptionFunc(func(req *SignRequest, _ *x509.Certificate) error {
		if len(req.DNSNames) > maxNames {
			return fmt.Errorf("%w: %d DNS names, at most %d allowed", ErrPolicy, len(req.DNSNames), maxNames)
		}
		for i, name := range req.DNSNames {
			if err := CheckDNSName(name); err != nil {
				return fmt.Errorf("%w: dnsNames[%d]: %w", ErrPolicy, i, err)
			}
			if slices.Contains(req.DNSNames[:i], name) {
				return fmt.Errorf("%w: dnsNames[%d]: duplicate %q", ErrPolicy, i, name)
			}
		}
		return nil
	})
}

// ConstrainToTrustDomain adds a critical name constraint to CA certificates
// that permits URI SANs in the request's trust domain only. It does nothing
// for leaves.
func ConstrainToTrustDomain() SignOption {
	return SignOptionFunc(func(req *SignRequest, tmpl *x509.Certificate) error {
		if tmpl.IsCA {
			constrainToTrustDomain(tmpl, req.ID.TrustDomain())
		}
		return nil
	})
}

// CheckDNSName checks that name is a lowercase hostname: at most 253 bytes,
// dot-separated labels of 1 to 63 bytes of [a-z0-9-] not starting or ending
// with '-', and a last label that is not all digits.
func CheckDNSName(name string) error {
	if name == "" {
		return fmt.Errorf("DNS name is empty")
	}
	if len(name) > 253 {
		return fmt.Errorf("DNS name of %d bytes exceeds 253", len(name))
	}
	labels := strings.Split(name, ".")
	for i, l := range labels {
		if l == "" {
			return fmt.Errorf("DNS name %q has an empty label", truncateForError(name))
		}
		if len(l) > 63 {
			return fmt.Errorf("DNS name %q has a label longer than 63 bytes", truncateForError(name))
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("DNS name %q has a label starting or ending with '-'", truncateForError(name))
		}
		for j := 0; j < len(l); j++ {
			c := l[j]
			if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
				return fmt.Errorf("DNS name %q has invalid character %q; allowed are [a-z0-9-]", truncateForError(name), c)
			}
		}
		if i == len(labels)-1 && strings.Trim(l, "0123456789") == "" {
			return fmt.Errorf("DNS name %q ends in an all-numeric label", truncateForError(name))
		}
	}
	return nil
}
