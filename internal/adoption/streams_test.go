package adoption_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"slices"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/issuer"
	"github.com/mayfly-pki/mayfly/internal/issuerclient"
	"github.com/mayfly-pki/mayfly/internal/test/cluster"
	"github.com/mayfly-pki/mayfly/internal/test/issuertest"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
)

// joinAttestor accepts the join token "good-<node>".
type joinAttestor struct{}

func (joinAttestor) AttestAgent(_ context.Context, req *issuerv1.AttestAgentRequest) (string, error) {
	if node, ok := strings.CutPrefix(req.GetJoinToken(), "good-"); ok && node != "" {
		return node, nil
	}
	return "", issuer.Deny(issuerv1.Denial_PERMISSION_DENIED, "join token refused")
}

// noWorkloads refuses every workload: these tests only watch bundles.
type noWorkloads struct{}

func (noWorkloads) AuthorizeWorkload(context.Context, string, *issuerv1.WorkloadRequest) (issuer.Grant, error) {
	return issuer.Grant{}, issuer.Deny(issuerv1.Denial_PERMISSION_DENIED, "no workloads here")
}

var td = spiffeid.RequireTrustDomainFromString("example.org")

// serve runs an issuer API for r whose bundle acknowledgements feed r's
// tracker, as the CA wires it.
func (e *env) serve(r *replica) string {
	e.t.Helper()
	_, addr := issuertest.Serve(e.t, issuer.Config{
		TrustDomain: td, Authority: r.mgr, Attestor: joinAttestor{}, Authorizer: noWorkloads{},
		Acks: r.tracker, OnAck: r.mgr.Kick, Now: e.clock.Now, Rand: rand.Reader,
	})
	return addr
}

// agent attests node at the issuer API addr (of replica r), opens a
// WatchBundle stream and acknowledges every bundle it receives, as the
// agent does, until the test ends.
func (e *env) agent(r *replica, addr, node string) {
	e.t.Helper()
	ctx := e.t.Context()
	bundle := func() []*x509.Certificate {
		l, err := r.mgr.Current()
		if err != nil {
			return nil
		}
		return l.Bundle
	}
	var cert *tls.Certificate
	conn, client, err := issuerclient.Dial(issuerclient.Config{Address: addr, TrustDomain: td, Bundle: bundle, Certificate: func() *tls.Certificate { return cert }, Now: e.clock.Now})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = conn.Close() })
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		e.t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		e.t.Fatal(err)
	}
	resp, err := client.AttestAgent(ctx, &issuerv1.AttestAgentRequest{Csr: csr, Credential: &issuerv1.AttestAgentRequest_JoinToken{JoinToken: "good-" + node}})
	if err != nil {
		e.t.Fatalf("AttestAgent(%s): %v", node, err)
	}
	cert = &tls.Certificate{Certificate: resp.GetCertificateChain(), PrivateKey: key}
	// A new connection presents the agent SVID.
	conn2, client2, err := issuerclient.Dial(issuerclient.Config{Address: addr, TrustDomain: td, Bundle: bundle, Certificate: func() *tls.Certificate { return cert }, Now: e.clock.Now})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = conn2.Close() })
	stream, err := client2.WatchBundle(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	go func() {
		for {
			b, err := stream.Recv()
			if err != nil {
				return
			}
			if err := stream.Send(&issuerv1.BundleAck{Version: b.GetVersion()}); err != nil {
				return
			}
		}
	}()
}

// TestKubernetesAdoptionThroughIssuerStreams: two issuer servers, one per
// replica, with one agent each on a real WatchBundle stream. The leader
// activates the next root only once the agent of the other replica
// acknowledged it there.
func TestKubernetesAdoptionThroughIssuerStreams(t *testing.T) {
	c := cluster.Start(t)
	e := newEnv(t, c, "streams", "s1", "s2")
	a, b := e.replica("ca-a"), e.replica("ca-b")
	e.agent(a, e.serve(a), "s1")
	e.agent(b, e.serve(b), "s2")
	l, _ := a.mgr.Current()
	e.settle("both agents hold the first bundle", func() bool { return a.view.Adopted(l.BundleVersion) })

	v, prepared := e.prepare(a)
	// Replica b has not seen the new state yet (its Secret watch is not
	// running here): its agent still holds the old bundle.
	e.settle("s1 holds the new bundle", func() bool { return slices.Equal(e.pending(a, v), []string{"s2"}) })
	a.mgr.RotateOnce(context.Background())
	if e.activated(prepared) {
		t.Fatal("activated while the agent of replica b does not hold the new root")
	}
	if err := b.mgr.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	e.settle("the leader sees s2 on the new bundle through replica b", func() bool { return a.view.Adopted(v) })
	a.mgr.RotateOnce(context.Background())
	if !e.activated(prepared) {
		t.Fatal("not activated although both agents hold the new root")
	}
	// The activation changes the bundle again (the new root first): the
	// agent of the leader acknowledges that too.
	after, _ := a.mgr.Current()
	wait.For(t, "s1 acknowledges the bundle after the activation", func() bool { return a.tracker.Holds("s1", after.BundleVersion) })
}
