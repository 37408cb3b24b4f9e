package policy

import (
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// CheckIDPattern checks one allowed-ID pattern of a standalone node policy:
// a SPIFFE ID of trust domain td, exact or ending in "/*" for every ID
// below a path, that names a path and can match no reserved ID. The error
// does not name the field; the caller prefixes its path.
func CheckIDPattern(td spiffeid.TrustDomain, pattern string) error {
	base, wildcard := strings.CutSuffix(pattern, "/*")
	id, err := pki.ParseID(base)
	if err != nil {
		return err
	}
	switch {
	case id.TrustDomain() != td:
		return fmt.Errorf("%s is not in trust domain %s", pattern, td)
	case id.Path() == "":
		return fmt.Errorf("%s names the whole trust domain; name a path", pattern)
	case IsReserved(id.Path()):
		// A pattern whose path is not empty and not reserved matches no
		// reserved ID: a wildcard only reaches below its own path.
		what := "is a reserved ID"
		if wildcard {
			what = "covers reserved IDs"
		}
		return fmt.Errorf("%s %s: spiffe://%s%s/... belong to mayfly's agents and CA, never to workloads", pattern, what, td.Name(), ReservedPath)
	}
	return nil
}

// MatchIDPattern reports whether id matches pattern (as CheckIDPattern
// accepts it): equal to it, or below its path when it ends in "/*".
func MatchIDPattern(pattern string, id spiffeid.ID) bool {
	s := id.String()
	if prefix, ok := strings.CutSuffix(pattern, "/*"); ok {
		return strings.HasPrefix(s, prefix+"/")
	}
	return s == pattern
}

// ServiceDNSName returns the Service that name designates when it is a
// Service name of namespace ns: <svc>.<ns>.svc or
// <svc>.<ns>.svc.<clusterDomain>, svc a DNS-1035 label. Whether that Service
// exists is the caller's lookup. A refusal is of rule service-dns-name,
// class forbidden.
func ServiceDNSName(name, ns, clusterDomain string) (string, error) {
	svc, rest, _ := strings.Cut(name, ".")
	if !isDNS1035Label(svc) || (rest != ns+".svc" && rest != ns+".svc."+clusterDomain) {
		return "", Deny(RuleServiceDNSName, ClassForbidden,
			"dns name %q is not a Service name of namespace %s (<service>.%s.svc or <service>.%s.svc.%s)",
			truncate(name, 253), ns, ns, ns, clusterDomain)
	}
	return svc, nil
}

// isDNS1035Label: 1 to 63 of [a-z0-9-], starting with a letter, not ending
// with '-' (what a Service name is).
func isDNS1035Label(s string) bool {
	if s == "" || len(s) > 63 || s[0] < 'a' || s[0] > 'z' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
