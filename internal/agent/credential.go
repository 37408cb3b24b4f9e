package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
)

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
		tok, err := os.ReadFile(path)
		if err != nil {
			return "", fmt.Errorf("kubernetes.tokenFile: %w", err)
		}
		return strings.TrimSpace(string(tok)), nil
	}
}

// JoinToken is the standalone bootstrap credential: token, given once (a
// join token is single-use); after that, or without one, it fails saying
// how node gets a new one.
func JoinToken(token, node string) Credential {
	var mu sync.Mutex
	return func(context.Context) (*issuerv1.AttestAgentRequest, error) {
		mu.Lock()
		defer mu.Unlock()
		if token == "" {
			return nil, errors.New("no join token, or it was used already: create one with `ca token create --node " + node + "` and pass it with --join-token")
		}
		t := token
		token = "" // single use
		return &issuerv1.AttestAgentRequest{Credential: &issuerv1.AttestAgentRequest_JoinToken{JoinToken: t}}, nil
	}
}
