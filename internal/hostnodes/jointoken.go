// Package hostnodes is the CA side of plain Linux hosts (standalone mode), without
// Kubernetes: agents attest with single-use join tokens, and each node may
// obtain only the SPIFFE IDs its configuration grants.
package hostnodes

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/issuer"
	"github.com/mayfly-pki/mayfly/pkg/atomicfile"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// JoinTokenFile is the file in the CA's state directory that holds the
// hashes of unused join tokens.
const JoinTokenFile = "join-tokens.json" //nolint:gosec // a file name, not a credential

// tokenPrefix marks mayfly join tokens, so that a leaked one is easy to
// recognise (secret scanners) and a wrong string is told apart early.
const tokenPrefix = "mfjt_"

const (
	maxTokenTTL    = 24 * time.Hour
	maxTokenLength = 256
)

// ErrBadToken is wrapped by every refusal of a join token.
var ErrBadToken = errors.New("join token refused")

// JoinTokens stores join tokens hashed (SHA-256) in a 0600 file, and
// consumes each on first use under an exclusive lock, so that one token
// attests one agent once.
type JoinTokens struct {
	dir string
	now func() time.Time
}

// NewJoinTokens returns the token store in dir (the CA state directory).
func NewJoinTokens(dir string, now func() time.Time) *JoinTokens {
	if now == nil {
		now = time.Now
	}
	return &JoinTokens{dir: dir, now: now}
}

type tokenRecord struct {
	Hash      string    `json:"sha256"`
	Node      string    `json:"node"`
	ExpiresAt time.Time `json:"expiresAt"`
}

// Create makes a token for node valid for ttl and returns it. Only its hash
// is stored; the token is shown once.
func (j *JoinTokens) Create(node string, ttl time.Duration) (string, error) {
	if _, err := pki.AgentID(spiffeidPlaceholder, node); err != nil {
		return "", fmt.Errorf("--node: %w", err)
	}
	if ttl <= 0 || ttl > maxTokenTTL {
		return "", fmt.Errorf("--ttl: must be in (0, %s], got %s", maxTokenTTL, ttl)
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	token := tokenPrefix + base64.RawURLEncoding.EncodeToString(raw)
	err := j.update(func(recs []tokenRecord) ([]tokenRecord, bool) {
		now := j.now()
		kept := recs[:0]
		for _, r := range recs {
			if now.Before(r.ExpiresAt) {
				kept = append(kept, r)
			}
		}
		return append(kept, tokenRecord{Hash: hashToken(token), Node: node, ExpiresAt: now.Add(ttl).UTC()}), true
	})
	if err != nil {
		return "", err
	}
	return token, nil
}

// Consume checks token and removes it; it returns the node it was made for.
// Only a successful consume rewrites the file (pruning expired tokens as it
// does): an unknown, used, expired or malformed token leaves it untouched,
// so that bogus attestations cannot make the CA write to disk.
func (j *JoinTokens) Consume(token string) (string, error) {
	if !strings.HasPrefix(token, tokenPrefix) || len(token) > maxTokenLength {
		return "", fmt.Errorf("%w: not a mayfly join token (they start with %q)", ErrBadToken, tokenPrefix)
	}
	h := hashToken(token)
	var node string
	var found, expired bool
	err := j.update(func(recs []tokenRecord) ([]tokenRecord, bool) {
		now := j.now()
		kept := recs[:0]
		for _, r := range recs {
			match := subtle.ConstantTimeCompare([]byte(r.Hash), []byte(h)) == 1
			switch {
			case match && now.Before(r.ExpiresAt):
				found, node = true, r.Node
			case match:
				expired = true
			case now.Before(r.ExpiresAt):
				kept = append(kept, r)
			}
		}
		return kept, found
	})
	switch {
	case err != nil:
		return "", err
	case expired:
		return "", fmt.Errorf("%w: the token expired; create a new one with `ca token create`", ErrBadToken)
	case !found:
		return "", fmt.Errorf("%w: unknown or already used token; join tokens are single-use", ErrBadToken)
	}
	return node, nil
}

// update runs f on the stored records under an exclusive lock and writes
// what it returns when it reports a change.
func (j *JoinTokens) update(f func([]tokenRecord) ([]tokenRecord, bool)) error {
	if err := os.MkdirAll(j.dir, 0o700); err != nil {
		return fmt.Errorf("join tokens: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(j.dir, ".join-tokens.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("join tokens: %w", err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("join tokens: lock: %w", err)
	}
	defer unix.Flock(int(lock.Fd()), unix.LOCK_UN) //nolint:errcheck // closing the file releases it anyway

	path := filepath.Join(j.dir, JoinTokenFile)
	var recs []tokenRecord
	raw, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("join tokens: %w", err)
	default:
		if err := json.Unmarshal(raw, &recs); err != nil {
			return fmt.Errorf("join tokens: %s is corrupt (%w); delete it and create new tokens", path, err)
		}
	}
	recs, changed := f(recs)
	if !changed {
		return nil
	}
	out, err := json.MarshalIndent(recs, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(path, out, 0o600); err != nil {
		return fmt.Errorf("join tokens: %w", err)
	}
	return nil
}

func hashToken(t string) string {
	sum := sha256.Sum256([]byte(t))
	return hex.EncodeToString(sum[:])
}

// Attestor attests agents by join token (issuer.AgentAttestor).
type Attestor struct{ Tokens *JoinTokens }

// AttestAgent consumes the request's join token and returns its node.
func (a Attestor) AttestAgent(_ context.Context, req *issuerv1.AttestAgentRequest) (string, error) {
	tok := req.GetJoinToken()
	if tok == "" {
		if req.GetServiceAccountToken() != "" {
			return "", issuer.Deny(issuerv1.Denial_INVALID_ARGUMENT, "this CA runs in standalone mode: attest with a join token, not a ServiceAccount token")
		}
		return "", issuer.Deny(issuerv1.Denial_INVALID_ARGUMENT, "join_token is empty")
	}
	node, err := a.Tokens.Consume(tok)
	if errors.Is(err, ErrBadToken) {
		return "", issuer.Deny(issuerv1.Denial_PERMISSION_DENIED, "%v", err)
	}
	if err != nil {
		return "", err
	}
	return node, nil
}

// Revoke drops the unused join tokens made for node (an eviction): it
// returns how many it dropped.
func (j *JoinTokens) Revoke(node string) (int, error) {
	n := 0
	err := j.update(func(recs []tokenRecord) ([]tokenRecord, bool) {
		kept := recs[:0]
		for _, r := range recs {
			if r.Node == node {
				n++
				continue
			}
			kept = append(kept, r)
		}
		return kept, n > 0
	})
	return n, err
}
