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
	return func(context.Context) (*issuerv1.AttestAgentRequest, error) {
		tok, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("kubernetes.tokenFile: %w", err)
		}
		return &issuerv1.AttestAgentRequest{Credential: &issuerv1.AttestAgentRequest_ServiceAccountToken{ServiceAccountToken: strings.TrimSpace(string(tok))}}, nil
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
