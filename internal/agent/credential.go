package agent

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/pkg/readlimit"
)

// MaxTokenFileSize bounds what the agent reads from a token file (a
// projected ServiceAccount token, a join token): real ones are a few KiB.
const MaxTokenFileSize = 64 << 10

// ServiceAccountToken is the Kubernetes bootstrap credential: the
// projected ServiceAccount token in file path, read anew at every
// attestation (the kubelet rotates it).
func ServiceAccountToken(path string) Credential {
	return func(ctx context.Context) (*issuerv1.AttestAgentRequest, error) {
		tok, err := ServiceAccountRenewalToken(path)(ctx)
		if err != nil {
			return nil, err
		}
		return &issuerv1.AttestAgentRequest{Credential: &issuerv1.AttestAgentRequest_ServiceAccountToken{ServiceAccountToken: tok}}, nil
	}
}

// RenewalToken returns the token sent with RenewAgent (Kubernetes mode).
type RenewalToken func(ctx context.Context) (string, error)

// ServiceAccountRenewalToken reads the projected ServiceAccount token in
// file path anew for each renewal: the CA reviews it to check that the agent
// pod still runs on its node.
func ServiceAccountRenewalToken(path string) RenewalToken {
	return func(context.Context) (string, error) {
		tok, err := readlimit.File(path, MaxTokenFileSize)
		if err != nil {
			return "", fmt.Errorf("kubernetes.tokenFile: %w", err)
		}
		return strings.TrimSpace(string(tok)), nil
	}
}

// JoinToken is the standalone bootstrap credential: a single-use token
// the CA consumes when it attests the agent. The agent keeps it while the
// CA cannot be reached (an agent may start before its CA), and forgets it
// once the CA attested the agent or refused the token for good; after
// that, or without a token, Credential fails saying how the node gets a
// new one.
type JoinToken struct {
	node string

	mu     sync.Mutex
	token  string
	reason string // why the token was forgotten
}

// NewJoinToken returns the join token credential of node ("" for none).
func NewJoinToken(token, node string) *JoinToken {
	return &JoinToken{token: token, node: node, reason: "no join token was given"}
}

// Credential returns the attestation request with the token (a
// Credential).
func (j *JoinToken) Credential(context.Context) (*issuerv1.AttestAgentRequest, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.token == "" {
		return nil, fmt.Errorf("%s: create a new one with `ca token create --node %s` and pass it with --join-token or standalone.joinTokenFile", j.reason, j.node)
	}
	return &issuerv1.AttestAgentRequest{Credential: &issuerv1.AttestAgentRequest_JoinToken{JoinToken: j.token}}, nil
}

// Settle takes the outcome of an attestation with the token
// (CAConfig.OnAttested): success or a definitive refusal (PermissionDenied,
// InvalidArgument, Unauthenticated: the token is unknown, used or expired,
// or the request is wrong) forgets it; any other failure (the CA is
// unreachable, overloaded or cannot sign yet) keeps it for the next
// attempt.
func (j *JoinToken) Settle(err error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	switch code := status.Code(err); {
	case err == nil:
		j.token, j.reason = "", "the join token was used already (join tokens are single-use)"
	case code == codes.PermissionDenied, code == codes.InvalidArgument, code == codes.Unauthenticated:
		j.token, j.reason = "", "the CA refused the join token ("+status.Convert(err).Message()+")"
	}
}
