package issuer

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/eviction"
	"github.com/mayfly-pki/mayfly/internal/policy"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// NodeChecker says whether a node may still run an agent at all
// (standalone: it is listed in the CA's nodes). It is asked on every call
// of an agent, attestation included, and returns a refusal (a *Denial or a
// policy error) when the node may not.
type NodeChecker interface {
	CheckNode(node string) error
}

// RenewalChecker re-checks, on every RenewAgent, that the agent of node may
// keep its identity (Kubernetes: the request's fresh ServiceAccount token
// is bound to a running agent pod on node). It returns a *Denial when not.
type RenewalChecker interface {
	CheckRenewal(ctx context.Context, node string, req *issuerv1.RenewAgentRequest) error
}

// EvictionSource is the list of evicted nodes (eviction.Source), and
// signals its changes so that open streams of evicted agents are closed.
type EvictionSource interface {
	List() (eviction.List, error)
	Subscribe() (<-chan struct{}, func())
}

// ErrAgentTooOld is wrapped by the refusal of a renewal past the maximum
// agent age: the agent must attest anew.
var ErrAgentTooOld = errors.New("agent SVID too old to renew")

// agentPeer is the agent behind a call: its node, its SVID, and when it
// first attested.
type agentPeer struct {
	node       string
	leaf       *x509.Certificate
	attestedAt time.Time
}

// attestedAtOf returns the attestation time an agent SVID carries; an SVID
// issued before the extension existed counts as attested at its notBefore
// (no later than that), and keeps that time on renewal.
func attestedAtOf(leaf *x509.Certificate) (time.Time, error) {
	t, ok, err := pki.AttestedAt(leaf)
	switch {
	case err != nil:
		return time.Time{}, err
	case !ok:
		return leaf.NotBefore, nil
	}
	return t, nil
}

// checkAgent re-checks an authenticated agent against the CA's current
// view: its node is still allowed, and was not evicted after the agent
// attested. A refusal is a gRPC status.
func (s *Server) checkAgent(p agentPeer) error {
	if s.cfg.Nodes != nil {
		if err := s.cfg.Nodes.CheckNode(p.node); err != nil {
			return statusFor(err)
		}
	}
	if s.cfg.Evictions != nil {
		l, err := s.cfg.Evictions.List()
		if err != nil {
			return status.Errorf(codes.Unavailable, "%v; retry with backoff", err)
		}
		if err := l.CheckAgent(p.node, p.attestedAt); err != nil {
			return status.Error(codes.Unauthenticated, err.Error())
		}
	}
	return nil
}

// checkAttest refuses an attestation of a node that may not run an agent
// or is evicted.
func (s *Server) checkAttest(node string) error {
	if s.cfg.Nodes != nil {
		if err := s.cfg.Nodes.CheckNode(node); err != nil {
			return err
		}
	}
	if s.cfg.Evictions != nil {
		l, err := s.cfg.Evictions.List()
		if err != nil {
			return Deny(issuerv1.Denial_UNAVAILABLE, "%v; retry with backoff", err)
		}
		if err := l.CheckAttest(node, s.cfg.Now()); err != nil {
			return Deny(issuerv1.Denial_PERMISSION_DENIED, "%v", err)
		}
	}
	return nil
}

// checkRenewal applies what only renewal checks: the maximum age since the
// original attestation, then the mode's renewal check.
func (s *Server) checkRenewal(ctx context.Context, p agentPeer, req *issuerv1.RenewAgentRequest) error {
	if maxAge := s.cfg.AgentMaxAge; maxAge > 0 {
		if age := s.cfg.Now().Sub(p.attestedAt); age > maxAge {
			return status.Errorf(codes.Unauthenticated, "%v: the agent of node %s attested at %s, %s ago, beyond agents.maxAge %s; re-attest with the bootstrap credential",
				ErrAgentTooOld, p.node, p.attestedAt.UTC().Format(time.RFC3339), age.Truncate(time.Second), maxAge)
		}
	}
	if s.cfg.Renewal != nil {
		if err := s.cfg.Renewal.CheckRenewal(ctx, p.node, req); err != nil {
			return err
		}
	}
	return nil
}

// agentSigner returns the agent signer of sg recording attestedAt.
func agentSigner(sg *signers, attestedAt time.Time) *pki.Signer {
	sig := *sg.agent
	sig.Options = append(slices.Clip(sig.Options), policy.AttestedAt{Time: attestedAt})
	return &sig
}

// evictions returns the signal of changes to the eviction list (nil, never
// signalled, without one) and a function to unsubscribe.
func (s *Server) evictions() (<-chan struct{}, func()) {
	if s.cfg.Evictions == nil {
		return nil, func() {}
	}
	return s.cfg.Evictions.Subscribe()
}

// revokedNow returns why p's bundle stream must close after a change of
// the eviction list, or nil. A list that cannot be read keeps the stream
// (new calls are refused until it is read).
func (s *Server) revokedNow(p agentPeer) error {
	l, err := s.cfg.Evictions.List()
	if err != nil {
		return nil
	}
	if err := l.CheckAgent(p.node, p.attestedAt); err != nil {
		return fmt.Errorf("closing the bundle stream: %w", err)
	}
	return nil
}
