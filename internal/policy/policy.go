// Package policy is the CA's issuance policy in one place: what the CA may
// issue, to whom, and why it refuses. Every issuing path of the CA uses it —
// the issuer API (agents, and workloads in standalone and Kubernetes mode),
// the PodCertificateRequest signer and the WorkloadCertificate controller —
// so a rule added here holds on all of them.
//
// A rule is a small named type: the pki.SignOption rules (Kinds, IDShape,
// ReservedIDs, TTLBounds, KeyTypes, DNSNames) run inside pki.Signer, in the
// order the rule sets (WorkloadRules, AgentRules, ServerRules) list them;
// the rules that need more than the request (ServiceDNSName for Kubernetes
// Services, CheckIDPattern and MatchIDPattern for the standalone node
// policies, PodOnNode, PodNotTerminated and PodActive for pods) are
// functions their callers apply before signing. Each refusal is an *Error
// that names its rule and its class:
//
//	policy: rule ttl-bounds: ttl 48h0m0s is above the maximum 24h0m0s
//
// The Class says whose fault a refusal is and so what a client sees:
// ClassForbidden (the caller may not have this: PermissionDenied),
// ClassBadRequest (the request is malformed: bad CSR, TTL, key or name:
// InvalidArgument), ClassUnavailable (the CA cannot sign now, e.g. its
// signing key is not valid at this moment: Unavailable) and ClassInternal (a
// failure of the CA itself: Internal, without detail). ClassOf classes any
// error, including pkg/pki's sentinels, so the issuer maps each outcome to
// its gRPC code in one switch.
//
// What stays in pkg/pki: the facts of the certificate format and of mayfly's
// certificate profile, which hold whoever asks — SPIFFE ID syntax, the shape
// of an X.509-SVID, supported key types, DNS name syntax (pki.CheckDNSName),
// the component policy OID on agent leaves, the trust domain name
// constraint of intermediates — and the default lifetime bounds of the
// design (pki.MinWorkloadTTL, pki.MaxWorkloadTTL), which the agent side
// reads too. This package decides which of the certificates pki can make the
// CA does make for leaves. pki's own generic options (pkg/pki/options.go)
// remain for intermediates (the authority's DefaultIntermediateOptions) and
// tests; no leaf-signing path of the CA uses them.
//
// Reserved identities: every SPIFFE ID under spiffe://<td>/mayfly/ belongs to
// mayfly's own components (agents, the CA). ReservedIDs refuses them to
// workloads in every mode, and CheckIDPattern refuses standalone node
// policies that could grant them.
package policy

import (
	"errors"
	"fmt"

	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// Class says whose fault a refusal is, and so what a client sees.
type Class int

// The classes; ClassOf returns one for any error.
const (
	// ClassNone is the class of no error.
	ClassNone Class = iota
	// ClassInternal: the CA failed; the detail is for its log only.
	ClassInternal
	// ClassBadRequest: the request is malformed or out of bounds (CSR, TTL,
	// key type, DNS name syntax); the same request never succeeds.
	ClassBadRequest
	// ClassForbidden: the caller may not obtain what it asked for.
	ClassForbidden
	// ClassUnavailable: the CA cannot sign right now (its signing key is
	// not loaded or not valid at this moment); retry later.
	ClassUnavailable
)

func (c Class) String() string {
	switch c {
	case ClassNone:
		return "none"
	case ClassBadRequest:
		return "bad request"
	case ClassForbidden:
		return "forbidden"
	case ClassUnavailable:
		return "unavailable"
	}
	return "internal"
}

// Error is a refusal by a named rule.
type Error struct {
	// Rule names the rule that refused, e.g. "ttl-bounds".
	Rule string
	// Class is ClassForbidden, ClassBadRequest, ClassUnavailable or
	// ClassInternal.
	Class Class
	// Reason says what is wrong, for the caller.
	Reason string
}

func (e *Error) Error() string { return "policy: rule " + e.Rule + ": " + e.Reason }

// Deny returns an *Error of rule and class with a formatted reason.
func Deny(rule string, class Class, format string, args ...any) error {
	return &Error{Rule: rule, Class: class, Reason: fmt.Sprintf(format, args...)}
}

// RuleOf returns the name of the rule that refused err, or "" when err is
// not a refusal of this package.
func RuleOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Rule
	}
	return ""
}

// ClassOf returns the class of err: the class of an *Error; for pkg/pki's
// errors ClassBadRequest (a malformed CSR, key, ID or request, or a refusal
// of one of pki's own options) or ClassUnavailable (the signing authority is
// unusable now, pki.ErrAuthority); ClassInternal for anything else, and
// ClassNone for nil.
func ClassOf(err error) Class {
	var e *Error
	switch {
	case err == nil:
		return ClassNone
	case errors.As(err, &e) && e.Class != ClassNone:
		return e.Class
	case errors.Is(err, pki.ErrAuthority):
		return ClassUnavailable
	case errors.Is(err, pki.ErrInvalidRequest), errors.Is(err, pki.ErrPolicy),
		errors.Is(err, pki.ErrInvalidID),
		errors.Is(err, pki.ErrCSRMalformed), errors.Is(err, pki.ErrCSRSignature), errors.Is(err, pki.ErrCSRTooLarge),
		errors.Is(err, pki.ErrUnsupportedKey), errors.Is(err, pki.ErrWeakKey):
		return ClassBadRequest
	}
	return ClassInternal
}
