package caapp_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/eviction"
	"github.com/mayfly-pki/mayfly/internal/test/cluster"
	"github.com/mayfly-pki/mayfly/internal/test/testca"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// TestKubernetesAgentRevocation runs a Kubernetes-mode CA against an API
// server: renewal needs the agent pod's fresh token, a deleted agent pod's
// agent cannot renew, and an eviction in the Secret refuses the node's agent.
func TestKubernetesAgentRevocation(t *testing.T) {
	c := startCluster(t, "mayfly-system")
	ctx := context.Background()
	kube := c.Client
	create(t, kube.CoreV1().ServiceAccounts("mayfly-system").Create, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "mayfly-agent"}})
	pods := map[string]*corev1.Pod{}
	tokens := map[string]string{}
	for _, node := range []string{"node-a", "node-b"} {
		pods[node] = cluster.CreatePod(t, kube, "mayfly-system", "agent-"+node, "mayfly-agent", node)
		tokens[node] = agentToken(t, kube, pods[node])
	}

	clock := rotate.NewFakeClock(time.Now())
	r := startReplica(t, c, clock)
	roots := trustRoots(t, kube)
	dial := func(cert *tls.Certificate) issuerv1.IssuerClient {
		return dialCA(t, r.addr, clock.Now, func() []*x509.Certificate { return roots }, cert)
	}
	attest := func(node string) *tls.Certificate {
		key := testca.Key(t)
		var cert *tls.Certificate
		wait.For(t, "attestation of "+node+" (pod cache synced)", func() bool {
			resp, err := dial(nil).AttestAgent(ctx, &issuerv1.AttestAgentRequest{Csr: testca.CSR(t, key), Credential: &issuerv1.AttestAgentRequest_ServiceAccountToken{ServiceAccountToken: tokens[node]}})
			if err != nil {
				t.Logf("attest: %v", err)
				return false
			}
			cert = &tls.Certificate{Certificate: resp.GetCertificateChain(), PrivateKey: key}
			return true
		})
		return cert
	}
	renew := func(cert *tls.Certificate, token string) error {
		_, err := dial(cert).RenewAgent(ctx, &issuerv1.RenewAgentRequest{Csr: testca.CSR(t, testca.Key(t)), ServiceAccountToken: token})
		return err
	}
	wantCode := func(what string, err error, code codes.Code, msg string) {
		t.Helper()
		if status.Code(err) != code || !strings.Contains(status.Convert(err).Message(), msg) {
			t.Fatalf("%s: err = %v, want %s containing %q", what, err, code, msg)
		}
	}
	certA, certB := attest("node-a"), attest("node-b")

	if err := renew(certA, tokens["node-a"]); err != nil {
		t.Fatalf("renewal with the agent pod's token: %v", err)
	}
	wantCode("renewal without a token", renew(certA, ""), codes.InvalidArgument, "upgrade")
	wantCode("renewal with another node's agent token", renew(certA, tokens["node-b"]), codes.PermissionDenied, `agent SVID is for node "node-a"`)

	// node-b's agent pod goes away: its SVID cannot be renewed.
	if err := kube.CoreV1().Pods("mayfly-system").Delete(ctx, pods["node-b"].Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "renewal of the deleted pod's agent to be refused", func() bool {
		return status.Code(renew(certB, tokens["node-b"])) == codes.PermissionDenied
	})

	// An operator evicts node-a (what `ca agent evict` writes).
	store := eviction.SecretStore{Client: kube, Namespace: "mayfly-system"}
	if err := store.Update(ctx, func(l eviction.List) (eviction.List, error) { return l.Evict("node-a", time.Now(), time.Time{}) }); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "the replica to read the eviction", func() bool {
		clock.Advance(eviction.DefaultPollInterval)
		return status.Code(renew(certA, tokens["node-a"])) == codes.Unauthenticated
	})
	wantCode("renewal after the eviction", renew(certA, tokens["node-a"]), codes.Unauthenticated, "evicted")
	_, err := dial(nil).AttestAgent(ctx, &issuerv1.AttestAgentRequest{Csr: testca.CSR(t, testca.Key(t)), Credential: &issuerv1.AttestAgentRequest_ServiceAccountToken{ServiceAccountToken: tokens["node-a"]}})
	wantCode("attestation of the evicted node", err, codes.PermissionDenied, "ca agent unevict node-a")
	if !strings.Contains(r.logs.String(), "before the node was evicted") {
		t.Fatal("no audit line of the refused renewal")
	}
}
