package pki

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

const (
	// MaxIDLength is the maximum length in bytes of a whole SPIFFE ID URI.
	MaxIDLength = 2048
	// MaxTrustDomainLength is the maximum length in bytes of a trust domain name.
	MaxTrustDomainLength = 255

	spiffeScheme = "spiffe://"
)

// ErrInvalidID is wrapped by every error of ParseID, ParseTrustDomain,
// WorkloadID and AgentID.
var ErrInvalidID = errors.New("invalid SPIFFE ID")

// ParseID parses s as a SPIFFE ID under the rules of the SPIFFE ID
// specification, checked more strictly than go-spiffe does (lengths, and a
// precise reason per violation): scheme "spiffe", a lowercase trust domain of
// [a-z0-9.-_] of at most 255 bytes, the whole URI at most 2048 bytes, path
// segments of [A-Za-z0-9.-_] that are neither empty nor "." or "..", and no
// percent-encoding, query, fragment, userinfo or port.
func ParseID(s string) (spiffeid.ID, error) {
	if len(s) > MaxIDLength {
		return spiffeid.ID{}, fmt.Errorf("%w: length %d exceeds %d bytes", ErrInvalidID, len(s), MaxIDLength)
	}
	if s == "" {
		return spiffeid.ID{}, fmt.Errorf("%w: empty", ErrInvalidID)
	}
	if !strings.HasPrefix(s, spiffeScheme) {
		if i := strings.Index(s, ":"); i > 0 && s[:i] != "spiffe" && strings.EqualFold(s[:i], "spiffe") {
			return spiffeid.ID{}, fmt.Errorf("%w: scheme must be lowercase \"spiffe\"", ErrInvalidID)
		}
		return spiffeid.ID{}, fmt.Errorf("%w: must start with %q", ErrInvalidID, spiffeScheme)
	}
	rest := s[len(spiffeScheme):]
	tdEnd := strings.IndexByte(rest, '/')
	if tdEnd < 0 {
		tdEnd = len(rest)
	}
	if err := checkTrustDomainName(rest[:tdEnd], len(spiffeScheme)); err != nil {
		return spiffeid.ID{}, err
	}
	if err := checkIDPath(rest[tdEnd:], len(spiffeScheme)+tdEnd); err != nil {
		return spiffeid.ID{}, err
	}
	id, err := spiffeid.FromString(s)
	if err != nil {
		// Unreachable when the checks above are at least as strict as go-spiffe.
		return spiffeid.ID{}, fmt.Errorf("%w: %w", ErrInvalidID, err)
	}
	return id, nil
}

// ParseTrustDomain parses a bare trust domain name such as "example.org"
// under the same rules as the trust domain part of ParseID.
func ParseTrustDomain(name string) (spiffeid.TrustDomain, error) {
	if err := checkTrustDomainName(name, 0); err != nil {
		return spiffeid.TrustDomain{}, err
	}
	td, err := spiffeid.TrustDomainFromString(name)
	if err != nil {
		return spiffeid.TrustDomain{}, fmt.Errorf("%w: %w", ErrInvalidID, err)
	}
	return td, nil
}

// checkTrustDomainName checks a trust domain name; off is its byte offset in
// the string the caller parses, used in error messages.
func checkTrustDomainName(td string, off int) error {
	if td == "" {
		return fmt.Errorf("%w: missing trust domain", ErrInvalidID)
	}
	if len(td) > MaxTrustDomainLength {
		return fmt.Errorf("%w: trust domain length %d exceeds %d bytes", ErrInvalidID, len(td), MaxTrustDomainLength)
	}
	for i := 0; i < len(td); i++ {
		c := td[i]
		switch {
		case isTrustDomainChar(c):
			continue
		case c >= 'A' && c <= 'Z':
			return fmt.Errorf("%w: trust domain must be lowercase (byte %d)", ErrInvalidID, off+i)
		case c == '@':
			return fmt.Errorf("%w: userinfo is not allowed (byte %d)", ErrInvalidID, off+i)
		case c == ':':
			return fmt.Errorf("%w: port is not allowed (byte %d)", ErrInvalidID, off+i)
		case c == '%':
			return fmt.Errorf("%w: percent-encoding is not allowed (byte %d)", ErrInvalidID, off+i)
		case c == '?':
			return fmt.Errorf("%w: query is not allowed (byte %d)", ErrInvalidID, off+i)
		case c == '#':
			return fmt.Errorf("%w: fragment is not allowed (byte %d)", ErrInvalidID, off+i)
		default:
			return fmt.Errorf("%w: trust domain has invalid character %q at byte %d; allowed are [a-z0-9.-_]", ErrInvalidID, c, off+i)
		}
	}
	return nil
}

// checkIDPath checks the path part of a SPIFFE ID ("" or "/seg/seg...").
func checkIDPath(path string, off int) error {
	if path == "" {
		return nil
	}
	// path[0] == '/' here: the caller split at the first slash.
	start := 1
	for i := 1; i <= len(path); i++ {
		if i < len(path) && path[i] != '/' {
			c := path[i]
			if isPathChar(c) {
				continue
			}
			switch c {
			case '%':
				return fmt.Errorf("%w: percent-encoding is not allowed (byte %d)", ErrInvalidID, off+i)
			case '?':
				return fmt.Errorf("%w: query is not allowed (byte %d)", ErrInvalidID, off+i)
			case '#':
				return fmt.Errorf("%w: fragment is not allowed (byte %d)", ErrInvalidID, off+i)
			default:
				return fmt.Errorf("%w: path has invalid character %q at byte %d; allowed are [A-Za-z0-9.-_]", ErrInvalidID, c, off+i)
			}
		}
		switch seg := path[start:i]; seg {
		case "":
			if i == len(path) {
				return fmt.Errorf("%w: trailing slash is not allowed", ErrInvalidID)
			}
			return fmt.Errorf("%w: empty path segment at byte %d", ErrInvalidID, off+i)
		case ".", "..":
			return fmt.Errorf("%w: path segment %q is not allowed (byte %d)", ErrInvalidID, seg, off+start)
		}
		start = i + 1
	}
	return nil
}

func isTrustDomainChar(c byte) bool {
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_'
}

func isPathChar(c byte) bool {
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_'
}

// checkSegment checks one path segment given by a caller; field names it in
// the error.
func checkSegment(field, seg string) error {
	switch seg {
	case "":
		return fmt.Errorf("%w: %s: must not be empty", ErrInvalidID, field)
	case ".", "..":
		return fmt.Errorf("%w: %s: %q is not allowed", ErrInvalidID, field, seg)
	}
	for i := 0; i < len(seg); i++ {
		if !isPathChar(seg[i]) {
			return fmt.Errorf("%w: %s: invalid character %q at byte %d; allowed are [A-Za-z0-9.-_]", ErrInvalidID, field, seg[i], i)
		}
	}
	return nil
}

func idFromSegments(td spiffeid.TrustDomain, segs ...string) (spiffeid.ID, error) {
	if td.IsZero() {
		return spiffeid.ID{}, fmt.Errorf("%w: trust domain is empty", ErrInvalidID)
	}
	var b strings.Builder
	b.WriteString(spiffeScheme)
	b.WriteString(td.Name())
	for _, s := range segs {
		b.WriteByte('/')
		b.WriteString(s)
	}
	return ParseID(b.String())
}

// WorkloadID returns the SPIFFE ID of a Kubernetes workload,
// spiffe://<td>/ns/<namespace>/sa/<serviceAccount>.
func WorkloadID(td spiffeid.TrustDomain, namespace, serviceAccount string) (spiffeid.ID, error) {
	if err := checkSegment("namespace", namespace); err != nil {
		return spiffeid.ID{}, err
	}
	if err := checkSegment("serviceAccount", serviceAccount); err != nil {
		return spiffeid.ID{}, err
	}
	return idFromSegments(td, "ns", namespace, "sa", serviceAccount)
}

// AgentID returns the SPIFFE ID of the node agent on a node,
// spiffe://<td>/mayfly/agent/<nodeName>.
func AgentID(td spiffeid.TrustDomain, nodeName string) (spiffeid.ID, error) {
	if err := checkSegment("nodeName", nodeName); err != nil {
		return spiffeid.ID{}, err
	}
	return idFromSegments(td, "mayfly", "agent", nodeName)
}

// Workload returns the namespace and service account of a workload ID of the
// form spiffe://<td>/ns/<namespace>/sa/<serviceAccount>; ok is false for any
// other shape.
func Workload(id spiffeid.ID) (namespace, serviceAccount string, ok bool) {
	segs := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(segs) != 4 || segs[0] != "ns" || segs[2] != "sa" {
		return "", "", false
	}
	return segs[1], segs[3], true
}

// Agent returns the node name of an agent ID of the form
// spiffe://<td>/mayfly/agent/<nodeName>; ok is false for any other shape.
func Agent(id spiffeid.ID) (nodeName string, ok bool) {
	segs := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(segs) != 3 || segs[0] != "mayfly" || segs[1] != "agent" {
		return "", false
	}
	return segs[2], true
}
