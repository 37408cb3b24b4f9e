//go:build linux

package e2e_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/issuerclient"
	"github.com/mayfly-pki/mayfly/internal/test/pemfile"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// caClient calls the CA at addr presenting cert (nil: none), trusting the
// bundle file the CA wrote.
func caClient(t *testing.T, addr, bundleFile string, cert *tls.Certificate) issuerv1.IssuerClient {
	t.Helper()
	roots := pemfile.Certificates(t, bundleFile)
	conn, client, err := issuerclient.Dial(issuerclient.Config{
		Address: addr, TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"),
		Bundle:      func() []*x509.Certificate { return roots },
		Certificate: func() *tls.Certificate { return cert },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return client
}

func renewWith(client issuerv1.IssuerClient) error {
	key, err := pki.GenerateKey(pki.DefaultKeyType, rand.Reader)
	if err != nil {
		return err
	}
	csr, err := pki.CreateCSR(key, rand.Reader)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = client.RenewAgent(ctx, &issuerv1.RenewAgentRequest{Csr: csr})
	return err
}

func wantRefusal(t *testing.T, what string, err error, code codes.Code, msg string) {
	t.Helper()
	if status.Code(err) != code || !strings.Contains(status.Convert(err).Message(), msg) {
		t.Fatalf("%s: err = %v, want %s containing %q", what, err, code, msg)
	}
}

// TestImpersonationChain runs the chain of an impersonation attempt
// against the real binaries: a node policy that could grant mayfly's own
// IDs, a workload asking its agent for another node's agent ID, a workload
// SVID posing as an agent towards the CA, and agents whose node was
// evicted or removed from the CA's configuration.
func TestImpersonationChain(t *testing.T) {
	h := newStandaloneHost(t)
	bundleFile := h.bundleFile()
	const hostB = `  - name: host-b
    allowedIDs: ["spiffe://example.org/b/*"]
`

	t.Run("a_node_policy_covering_mayfly_ids_is_refused_at_start", func(t *testing.T) {
		bad := writeFile(t, filepath.Join(h.work, "ca-bad.yaml"), h.caConfigText(`  - name: host-a
    allowedIDs: ["spiffe://example.org/mayfly/*"]
`))
		_, stderr, err := run(h.caBin, nil, "run", "--config", bad)
		if err == nil || !strings.Contains(stderr, "nodes[0].allowedIDs[0]") || !strings.Contains(stderr, "reserved") {
			t.Fatalf("ca run: err %v, stderr %q; want a refusal naming nodes[0].allowedIDs[0] as reserved", err, stderr)
		}
	})

	caConfig := writeFile(t, filepath.Join(h.work, "ca.yaml"), h.caConfigText(hostA+hostB))
	ca := h.startCA(t, caConfig)

	// The workload asks its agent for its own ID and for host-b's agent ID.
	wantID := fmt.Sprintf("spiffe://example.org/test/user-%d", h.uid)
	otherAgent := "spiffe://example.org/mayfly/agent/host-b"
	writeFile(t, filepath.Join(h.work, "registrations.yaml"), fmt.Sprintf(`
registrations:
  - spiffeID: %s
    selectors: {uid: %d}
  - spiffeID: %s
    selectors: {uid: %d}
`, wantID, h.uid, otherAgent, h.uid))
	socket := filepath.Join(h.work, "run", "agent.sock")
	agentConfig := writeFile(t, filepath.Join(h.work, "agent.yaml"), h.agentConfigText(socket, ""))
	h.startAgent(t, caConfig, agentConfig, socket)

	t.Run("another_agents_id_cannot_be_obtained_through_the_socket", func(t *testing.T) {
		wait.Within(t, "the refused registration in the agent log", 10*time.Second, 50*time.Millisecond, func() bool {
			out, _ := os.ReadFile(filepath.Join(h.work, "agent.log"))
			return bytes.Contains(out, []byte(otherAgent))
		})
		ids := svidIDs(t, socket)
		if len(ids) != 1 || ids[0] != wantID {
			t.Fatalf("the agent serves %v, want only %s", ids, wantID)
		}
	})

	t.Run("a_workload_svid_is_refused_as_agent_client_certificate", func(t *testing.T) {
		svid, err := fetch(socket)
		if err != nil {
			t.Fatal(err)
		}
		cert := &tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
		for _, c := range svid.Certificates {
			cert.Certificate = append(cert.Certificate, c.Raw)
		}
		client := caClient(t, h.caAddr, bundleFile, cert)
		wantRefusal(t, "RenewAgent", renewWith(client), codes.Unauthenticated, "not an agent SVID")
		_, err = client.SignWorkloads(context.Background(), &issuerv1.SignWorkloadsRequest{})
		wantRefusal(t, "SignWorkloads", err, codes.Unauthenticated, "not an agent SVID")
	})

	agentSVID, err := tls.LoadX509KeyPair(filepath.Join(h.work, "agent", "agent-svid.pem"), filepath.Join(h.work, "agent", "agent-key.pem"))
	if err != nil {
		t.Fatalf("the agent's persisted SVID: %v", err)
	}

	t.Run("an_evicted_nodes_agent_cannot_renew", func(t *testing.T) {
		if err := renewWith(caClient(t, h.caAddr, bundleFile, &agentSVID)); err != nil {
			t.Fatalf("RenewAgent with the agent's SVID before the eviction: %v", err)
		}
		out, stderr, err := run(h.caBin, nil, "agent", "evict", "host-a", "--config", caConfig)
		if err != nil || !strings.Contains(out, "host-a evicted") {
			t.Fatalf("ca agent evict: %v, %q %q", err, out, stderr)
		}
		// Every replica polls the evictions every 10s.
		wait.Within(t, "the eviction to take effect", 30*time.Second, 200*time.Millisecond, func() bool {
			return status.Code(renewWith(caClient(t, h.caAddr, bundleFile, &agentSVID))) == codes.Unauthenticated
		})
		wantRefusal(t, "RenewAgent after eviction", renewWith(caClient(t, h.caAddr, bundleFile, &agentSVID)), codes.Unauthenticated, "evicted")
		log, _ := os.ReadFile(filepath.Join(h.work, "ca.log"))
		if !bytes.Contains(log, []byte(`"op":"renew"`)) || !bytes.Contains(log, []byte("before the node was evicted")) {
			t.Fatalf("no audit line of the refused renewal in the CA log")
		}
	})

	t.Run("a_removed_nodes_agent_cannot_renew", func(t *testing.T) {
		tok, stderr, err := run(h.caBin, nil, "token", "create", "--config", caConfig, "--node", "host-b")
		if err != nil {
			t.Fatalf("ca token create: %v\n%s", err, stderr)
		}
		key, err := pki.GenerateKey(pki.DefaultKeyType, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		csr, err := pki.CreateCSR(key, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := caClient(t, h.caAddr, bundleFile, nil).AttestAgent(context.Background(), &issuerv1.AttestAgentRequest{
			Csr: csr, Credential: &issuerv1.AttestAgentRequest_JoinToken{JoinToken: strings.TrimSpace(tok)},
		})
		if err != nil {
			t.Fatalf("AttestAgent host-b: %v", err)
		}
		hostBSVID := &tls.Certificate{Certificate: resp.GetCertificateChain(), PrivateKey: crypto.Signer(key)}

		// The operator removes host-b from the CA's nodes and restarts it.
		ca.stop(t)
		writeFile(t, caConfig, h.caConfigText(hostA))
		start(t, filepath.Join(h.work, "ca2.log"), nil, h.caBin, "run", "--config", caConfig)
		var err2 error
		wait.Within(t, "the restarted CA to answer", 30*time.Second, 100*time.Millisecond, func() bool {
			err2 = renewWith(caClient(t, h.caAddr, bundleFile, hostBSVID))
			return status.Code(err2) != codes.Unavailable
		})
		wantRefusal(t, "RenewAgent of a removed node", err2, codes.PermissionDenied, "no entry in the CA's nodes")
	})
}
