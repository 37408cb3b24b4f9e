package kubenodes_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/issuer"
	"github.com/mayfly-pki/mayfly/internal/kubenodes"
	"github.com/mayfly-pki/mayfly/internal/test/background"
	"github.com/mayfly-pki/mayfly/internal/test/cluster"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
)

const (
	agentNS = "mayfly-system"
	agentSA = "mayfly-agent"
	appNS   = "apps"
	otherNS = "other"
	nodeA   = "node-a"
	nodeB   = "node-b"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

// env is a running API server with the CA-side cache, attestor and
// authorizer wired to it.
type env struct {
	t      *testing.T
	c      *cluster.Cluster
	client kubernetes.Interface
	cache  *kubenodes.PodCache
	att    *kubenodes.TokenAttestor
	authz  *kubenodes.PodAuthorizer
}

func newEnv(t *testing.T, opts ...cluster.Option) *env {
	t.Helper()
	c := cluster.Start(t, opts...)
	e := &env{t: t, c: c, client: c.Client}
	for _, ns := range []string{agentNS, appNS, otherNS} {
		e.create(func(ctx context.Context) error {
			_, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
			return err
		})
	}
	for _, sa := range [][2]string{{agentNS, agentSA}, {agentNS, "not-the-agent"}, {appNS, "web"}, {appNS, "db"}} {
		e.create(func(ctx context.Context) error {
			_, err := c.Client.CoreV1().ServiceAccounts(sa[0]).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa[1]}}, metav1.CreateOptions{})
			return err
		})
	}
	for _, svc := range [][2]string{{appNS, "web"}, {otherNS, "db"}} {
		e.create(func(ctx context.Context) error {
			_, err := c.Client.CoreV1().Services(svc[0]).Create(ctx, &corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Name: svc[1]},
				Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 443}}},
			}, metav1.CreateOptions{})
			return err
		})
	}

	e.cache = kubenodes.NewPodCache(c.Client, 0)
	ctx := background.Run(t, "pod cache", e.cache.Start)
	syncCtx, syncCancel := context.WithTimeout(ctx, 30*time.Second)
	defer syncCancel()
	if !e.cache.WaitSynced(syncCtx) {
		t.Fatal("pod cache did not sync within 30s")
	}
	e.eventually("services in the cache", func() bool {
		return e.cache.HasService(appNS, "web") && e.cache.HasService(otherNS, "db")
	})

	cfg := kubenodes.Config{
		TrustDomain:         td,
		AgentNamespace:      agentNS,
		AgentServiceAccount: agentSA,
		Client:              c.Client,
		Cache:               e.cache,
	}
	var err error
	if e.att, err = kubenodes.NewTokenAttestor(cfg); err != nil {
		t.Fatal(err)
	}
	if e.authz, err = kubenodes.NewPodAuthorizer(cfg); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *env) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	e.t.Cleanup(cancel)
	return ctx
}

func (e *env) create(f func(context.Context) error) {
	e.t.Helper()
	if err := f(e.ctx()); err != nil {
		e.t.Fatal(err)
	}
}

// eventually polls a cache condition (never sleeps for a fixed time).
func (e *env) eventually(what string, cond func() bool) {
	e.t.Helper()
	wait.Within(e.t, what, 20*time.Second, 10*time.Millisecond, cond)
}

// pod creates a pod of ns/sa on node (unscheduled when node is empty) and
// waits until the cache holds it.
func (e *env) pod(ns, name, sa, node string) *corev1.Pod {
	e.t.Helper()
	pod, err := e.client.CoreV1().Pods(ns).Create(e.ctx(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			ServiceAccountName: sa,
			NodeName:           node,
			Containers:         []corev1.Container{{Name: "app", Image: "example.invalid/app"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	e.eventually("pod "+ns+"/"+name+" in the cache", func() bool {
		_, ok := e.cache.ByUID(string(pod.UID))
		return ok
	})
	return pod
}

type tokenOpt func(*authenticationv1.TokenRequest)

func audience(aud string) tokenOpt {
	return func(r *authenticationv1.TokenRequest) { r.Spec.Audiences = []string{aud} }
}

func unbound(r *authenticationv1.TokenRequest) { r.Spec.BoundObjectRef = nil }

// token returns a token of the pod's ServiceAccount, bound to the pod,
// with audience mayfly-ca unless an option changes it.
func (e *env) token(pod *corev1.Pod, opts ...tokenOpt) string {
	e.t.Helper()
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences: []string{kubenodes.DefaultAudience},
		BoundObjectRef: &authenticationv1.BoundObjectReference{
			Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID,
		},
	}}
	for _, o := range opts {
		o(req)
	}
	tr, err := e.client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(e.ctx(), pod.Spec.ServiceAccountName, req, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	return tr.Status.Token
}

// checkDenial fails unless err is a *issuer.Denial with code whose message
// contains want and none of the tokens.
func checkDenial(t *testing.T, err error, code issuerv1.Denial_Code, want string, tokens ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want a denial %s", code)
	}
	d := issuer.DenialOf(err)
	if d.Code != code {
		t.Errorf("code = %s (%q), want %s", d.Code, d.Message, code)
	}
	if !strings.Contains(d.Message, want) {
		t.Errorf("message = %q, want it to contain %q", d.Message, want)
	}
	for _, tok := range tokens {
		if tok == "" {
			continue
		}
		for _, s := range []string{d.Message, err.Error()} {
			if strings.Contains(s, tok) || strings.Contains(s, tok[:min(len(tok), 16)]) {
				t.Errorf("error %q contains the token", s)
			}
		}
	}
}

func TestKubernetes(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	t.Run("TokenAttestor", func(t *testing.T) { testAttestor(t, e) })
	t.Run("Renewal", func(t *testing.T) { testRenewal(t, e) })
	t.Run("PodAuthorizer", func(t *testing.T) { testAuthorizer(t, e) })
}

func testAttestor(t *testing.T, e *env) {
	agent := e.pod(agentNS, "agent-a", agentSA, nodeA)
	impostor := e.pod(agentNS, "impostor", "not-the-agent", nodeA)
	unscheduled := e.pod(agentNS, "agent-pending", agentSA, "")
	good := e.token(agent)

	tests := []struct {
		name  string
		req   *issuerv1.AttestAgentRequest
		code  issuerv1.Denial_Code
		want  string // node when code is 0, else part of the message
		token string
	}{
		{name: "good_token_gives_node_name", req: saReq(good), want: nodeA},
		{name: "wrong_audience_is_denied", token: e.token(agent, audience("someone-else")),
			code: issuerv1.Denial_PERMISSION_DENIED, want: "token rejected"},
		{name: "token_of_another_service_account_is_denied", token: e.token(impostor),
			code: issuerv1.Denial_PERMISSION_DENIED, want: "not to the agent ServiceAccount"},
		{name: "token_not_bound_to_a_pod_is_denied", token: e.token(agent, unbound),
			code: issuerv1.Denial_PERMISSION_DENIED, want: "not bound to a pod"},
		{name: "token_of_unscheduled_pod_is_denied", token: e.token(unscheduled),
			code: issuerv1.Denial_PERMISSION_DENIED, want: "not scheduled on a node"},
		{name: "garbage_token_is_denied", token: "garbage.not-a.jwt-at-all-0123456789",
			code: issuerv1.Denial_PERMISSION_DENIED, want: "token rejected"},
		{name: "empty_credential_is_invalid", req: &issuerv1.AttestAgentRequest{},
			code: issuerv1.Denial_INVALID_ARGUMENT, want: "empty"},
		{name: "join_token_is_invalid", req: &issuerv1.AttestAgentRequest{Credential: &issuerv1.AttestAgentRequest_JoinToken{JoinToken: "abc"}},
			code: issuerv1.Denial_INVALID_ARGUMENT, want: "Kubernetes mode"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := tc.req
			if req == nil {
				req = saReq(tc.token)
			}
			node, err := e.att.AttestAgent(e.ctx(), req)
			if tc.code == 0 {
				if err != nil || node != tc.want {
					t.Fatalf("AttestAgent = %q, %v; want %q", node, err, tc.want)
				}
				return
			}
			checkDenial(t, err, tc.code, tc.want, tc.token, req.GetServiceAccountToken())
		})
	}

	t.Run("force_deleted_pod_is_denied_within_review_cache", func(t *testing.T) {
		pod := e.pod(agentNS, "agent-force", agentSA, nodeB)
		tok := e.token(pod)
		// Review once while the pod exists, so that the API server caches
		// the good review for 10s.
		if node, err := e.att.AttestAgent(e.ctx(), saReq(tok)); err != nil || node != nodeB {
			t.Fatalf("before delete: AttestAgent = %q, %v; want %q", node, err, nodeB)
		}
		reviewed := time.Now()
		if err := e.client.CoreV1().Pods(agentNS).Delete(e.ctx(), pod.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
			t.Fatal(err)
		}
		e.eventually("deletion seen by the cache", func() bool {
			_, ok := e.cache.ByUID(string(pod.UID))
			return !ok
		})
		_, err := e.att.AttestAgent(e.ctx(), saReq(tok))
		if elapsed := time.Since(reviewed); elapsed > 9*time.Second {
			t.Logf("%s passed since the first review: the API server's review cache may have expired", elapsed)
		}
		checkDenial(t, err, issuerv1.Denial_PERMISSION_DENIED, "no longer exists", tok)
	})

	t.Run("terminating_pod_is_denied", func(t *testing.T) {
		pod := e.pod(agentNS, "agent-terminating", agentSA, nodeB)
		tok := e.token(pod)
		if err := e.client.CoreV1().Pods(agentNS).Delete(e.ctx(), pod.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		e.eventually("deletionTimestamp seen by the cache", func() bool {
			p, ok := e.cache.ByUID(string(pod.UID))
			return ok && p.Terminating
		})
		_, err := e.att.AttestAgent(e.ctx(), saReq(tok))
		checkDenial(t, err, issuerv1.Denial_PERMISSION_DENIED, "terminating", tok)
	})
}

func saReq(tok string) *issuerv1.AttestAgentRequest {
	return &issuerv1.AttestAgentRequest{Credential: &issuerv1.AttestAgentRequest_ServiceAccountToken{ServiceAccountToken: tok}}
}

func testAuthorizer(t *testing.T, e *env) {
	web := e.pod(appNS, "web-1", "web", nodeA)
	db := e.pod(appNS, "db-1", "db", nodeA)
	done := e.pod(appNS, "job-1", "web", nodeA)
	done.Status.Phase = corev1.PodSucceeded
	if _, err := e.client.CoreV1().Pods(appNS).UpdateStatus(e.ctx(), done, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.eventually("succeeded phase in the cache", func() bool {
		p, ok := e.cache.ByUID(string(done.UID))
		return ok && p.Phase == corev1.PodSucceeded
	})
	leaving := e.pod(appNS, "web-leaving", "web", nodeA)
	if err := e.client.CoreV1().Pods(appNS).Delete(e.ctx(), leaving.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.eventually("deletionTimestamp in the cache", func() bool {
		p, ok := e.cache.ByUID(string(leaving.UID))
		return ok && p.Terminating
	})
	webToken := e.token(web)
	dbToken := e.token(db)
	wrongAud := e.token(web, audience("someone-else"))
	webID := "spiffe://example.org/ns/apps/sa/web"

	tests := []struct {
		name   string
		node   string
		req    *issuerv1.WorkloadRequest
		code   issuerv1.Denial_Code
		want   string // SPIFFE ID when code is 0, else part of the message
		tokens []string
	}{
		{name: "pod_on_the_node_gets_its_ns_sa_identity", node: nodeA,
			req: &issuerv1.WorkloadRequest{PodUid: string(web.UID)}, want: webID},
		{name: "pod_on_another_node_is_denied", node: nodeB,
			req:  &issuerv1.WorkloadRequest{PodUid: string(web.UID)},
			code: issuerv1.Denial_PERMISSION_DENIED, want: `pod apps/web-1 is scheduled on node "node-a", not on the requesting node "node-b"`},
		{name: "unknown_uid_is_not_found", node: nodeA,
			req:  &issuerv1.WorkloadRequest{PodUid: "00000000-0000-0000-0000-000000000000"},
			code: issuerv1.Denial_NOT_FOUND, want: "not found"},
		{name: "succeeded_pod_is_denied", node: nodeA,
			req:  &issuerv1.WorkloadRequest{PodUid: string(done.UID)},
			code: issuerv1.Denial_PERMISSION_DENIED, want: "Succeeded"},
		{name: "terminating_pod_is_denied", node: nodeA,
			req:  &issuerv1.WorkloadRequest{PodUid: string(leaving.UID)},
			code: issuerv1.Denial_PERMISSION_DENIED, want: "terminating"},
		{name: "spiffe_id_is_invalid_in_kubernetes_mode", node: nodeA,
			req:  &issuerv1.WorkloadRequest{SpiffeId: webID},
			code: issuerv1.Denial_INVALID_ARGUMENT, want: "spiffe_id is for standalone mode"},
		{name: "missing_pod_uid_is_invalid", node: nodeA,
			req:  &issuerv1.WorkloadRequest{},
			code: issuerv1.Denial_INVALID_ARGUMENT, want: "pod_uid"},
		{name: "dns_names_of_own_namespace_service_are_allowed", node: nodeA,
			req:  &issuerv1.WorkloadRequest{PodUid: string(web.UID), DnsNames: []string{"web.apps.svc", "web.apps.svc.cluster.local"}},
			want: webID},
		{name: "dns_name_of_other_namespace_service_is_denied", node: nodeA,
			req:  &issuerv1.WorkloadRequest{PodUid: string(web.UID), DnsNames: []string{"web.apps.svc", "db.other.svc"}},
			code: issuerv1.Denial_PERMISSION_DENIED, want: `"db.other.svc"`},
		{name: "dns_name_of_missing_service_is_denied", node: nodeA,
			req:  &issuerv1.WorkloadRequest{PodUid: string(web.UID), DnsNames: []string{"nope.apps.svc"}},
			code: issuerv1.Denial_PERMISSION_DENIED, want: "no Service apps/nope"},
		{name: "dns_name_under_foreign_domain_is_denied", node: nodeA,
			req:  &issuerv1.WorkloadRequest{PodUid: string(web.UID), DnsNames: []string{"web.apps.svc.evil.example"}},
			code: issuerv1.Denial_PERMISSION_DENIED, want: `"web.apps.svc.evil.example"`},
		{name: "pod_token_of_the_pod_is_allowed", node: nodeA,
			req:  &issuerv1.WorkloadRequest{PodUid: string(web.UID), PodToken: webToken},
			want: webID},
		{name: "pod_token_of_another_pod_is_denied", node: nodeA,
			req:  &issuerv1.WorkloadRequest{PodUid: string(web.UID), PodToken: dbToken},
			code: issuerv1.Denial_PERMISSION_DENIED, want: "not bound to pod apps/web-1", tokens: []string{dbToken}},
		{name: "pod_token_for_another_audience_is_denied", node: nodeA,
			req:  &issuerv1.WorkloadRequest{PodUid: string(web.UID), PodToken: wrongAud},
			code: issuerv1.Denial_PERMISSION_DENIED, want: "pod_token", tokens: []string{wrongAud}},
		{name: "garbage_pod_token_is_denied", node: nodeA,
			req:  &issuerv1.WorkloadRequest{PodUid: string(web.UID), PodToken: "garbage-token-0123456789abcdef"},
			code: issuerv1.Denial_PERMISSION_DENIED, want: "pod_token", tokens: []string{"garbage-token-0123456789abcdef"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g, err := e.authz.AuthorizeWorkload(e.ctx(), tc.node, tc.req)
			if tc.code != 0 {
				checkDenial(t, err, tc.code, tc.want, tc.tokens...)
				return
			}
			if err != nil {
				t.Fatalf("AuthorizeWorkload: %v", err)
			}
			if g.ID.String() != tc.want {
				t.Errorf("ID = %s, want %s", g.ID, tc.want)
			}
			if want := "pod apps/web-1"; g.Subject != want {
				t.Errorf("Subject = %q, want %q", g.Subject, want)
			}
			if strings.Join(g.DNSNames, ",") != strings.Join(tc.req.GetDnsNames(), ",") {
				t.Errorf("DNSNames = %v, want %v", g.DNSNames, tc.req.GetDnsNames())
			}
		})
	}
	t.Run("cached_token_review_is_still_bound_to_its_pod_and_goes_with_it", func(t *testing.T) {
		pod := e.pod(appNS, "web-cached", "web", nodeA)
		tok := e.token(pod)
		for range 2 { // the second answer comes from the review cache
			if _, err := e.authz.AuthorizeWorkload(e.ctx(), nodeA, &issuerv1.WorkloadRequest{PodUid: string(pod.UID), PodToken: tok}); err != nil {
				t.Fatalf("with the pod's token: %v", err)
			}
		}
		_, err := e.authz.AuthorizeWorkload(e.ctx(), nodeA, &issuerv1.WorkloadRequest{PodUid: string(web.UID), PodToken: tok})
		checkDenial(t, err, issuerv1.Denial_PERMISSION_DENIED, "not bound to pod apps/web-1", tok)
		if err := e.client.CoreV1().Pods(appNS).Delete(e.ctx(), pod.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
			t.Fatal(err)
		}
		e.eventually("the deleted pod leaves the cache", func() bool { _, ok := e.cache.ByUID(string(pod.UID)); return !ok })
		_, err = e.authz.AuthorizeWorkload(e.ctx(), nodeA, &issuerv1.WorkloadRequest{PodUid: string(pod.UID), PodToken: tok})
		checkDenial(t, err, issuerv1.Denial_NOT_FOUND, "not found", tok)
	})
	t.Run("require_pod_token_refuses_requests_without_one", func(t *testing.T) {
		strict, err := kubenodes.NewPodAuthorizer(kubenodes.Config{TrustDomain: td, Client: e.c.Client, Cache: e.cache, RequirePodToken: true})
		if err != nil {
			t.Fatal(err)
		}
		_, err = strict.AuthorizeWorkload(e.ctx(), nodeA, &issuerv1.WorkloadRequest{PodUid: string(web.UID)})
		checkDenial(t, err, issuerv1.Denial_PERMISSION_DENIED, "pod_token required")
		g, err := strict.AuthorizeWorkload(e.ctx(), nodeA, &issuerv1.WorkloadRequest{PodUid: string(web.UID), PodToken: webToken})
		if err != nil || g.ID.String() != webID {
			t.Fatalf("with the pod's token: %v, %v", g.ID, err)
		}
	})
}

// TestAPIServerDown stops the API server mid-run: pods already in the cache
// keep being authorized, while new attestations fail closed.
func TestAPIServerDown(t *testing.T) {
	t.Parallel()
	// Without a watch termination grace period the API server waits for
	// the cache's open watches until envtest kills it after 20s.
	e := newEnv(t, func(env *envtest.Environment) {
		env.ControlPlane.GetAPIServer().Configure().Set("shutdown-watch-termination-grace-period", "1s")
	})
	agent := e.pod(agentNS, "agent-a", agentSA, nodeA)
	web := e.pod(appNS, "web-1", "web", nodeA)
	tok := e.token(agent)

	if err := e.c.Env.Stop(); err != nil {
		t.Fatalf("stopping the API server: %v", err)
	}

	g, err := e.authz.AuthorizeWorkload(e.ctx(), nodeA, &issuerv1.WorkloadRequest{PodUid: string(web.UID), DnsNames: []string{"web.apps.svc"}})
	if err != nil {
		t.Fatalf("cached pod: AuthorizeWorkload: %v", err)
	}
	if want := "spiffe://example.org/ns/apps/sa/web"; g.ID.String() != want {
		t.Errorf("ID = %s, want %s", g.ID, want)
	}
	_, err = e.authz.AuthorizeWorkload(e.ctx(), nodeB, &issuerv1.WorkloadRequest{PodUid: string(web.UID)})
	checkDenial(t, err, issuerv1.Denial_PERMISSION_DENIED, "not on the requesting node")

	_, err = e.att.AttestAgent(e.ctx(), saReq(tok))
	var d *issuer.Denial
	if !errors.As(err, &d) || (d.Code != issuerv1.Denial_UNAVAILABLE && d.Code != issuerv1.Denial_PERMISSION_DENIED) {
		t.Fatalf("AttestAgent with the API server down = %v, want UNAVAILABLE or PERMISSION_DENIED", err)
	}
	checkDenial(t, err, d.Code, "", tok)
	t.Logf("attestation with the API server down: %s: %v", d.Code, err)
}

func TestConfigValidation(t *testing.T) {
	cache := kubenodes.NewPodCache(nil, 0)
	tests := []struct {
		name string
		cfg  kubenodes.Config
		att  string // error of NewTokenAttestor
		auth string // error of NewPodAuthorizer
	}{
		{name: "missing_client", cfg: kubenodes.Config{Cache: cache, TrustDomain: td, AgentNamespace: "a", AgentServiceAccount: "b"},
			att: "client", auth: "client"},
		{name: "missing_cache", cfg: kubenodes.Config{Client: dummyClient(), TrustDomain: td, AgentNamespace: "a", AgentServiceAccount: "b"},
			att: "cache", auth: "cache"},
		{name: "missing_agent_identity_and_trust_domain", cfg: kubenodes.Config{Client: dummyClient(), Cache: cache},
			att: "agentNamespace", auth: "trustDomain"},
		{name: "bad_cluster_domain", cfg: kubenodes.Config{Client: dummyClient(), Cache: cache, TrustDomain: td, ClusterDomain: "Cluster..Local", AgentNamespace: "a", AgentServiceAccount: "b"},
			auth: "clusterDomain"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := kubenodes.NewTokenAttestor(tc.cfg)
			checkErr(t, "NewTokenAttestor", err, tc.att)
			_, err = kubenodes.NewPodAuthorizer(tc.cfg)
			checkErr(t, "NewPodAuthorizer", err, tc.auth)
		})
	}
}

func checkErr(t *testing.T, what string, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Errorf("%s: %v, want no error", what, err)
	case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
		t.Errorf("%s: %v, want an error naming %q", what, err, want)
	}
}

func dummyClient() kubernetes.Interface {
	return kubernetes.NewForConfigOrDie(&rest.Config{Host: "https://127.0.0.1:1"})
}

func renewReq(tok string) *issuerv1.RenewAgentRequest {
	return &issuerv1.RenewAgentRequest{ServiceAccountToken: tok}
}

func testRenewal(t *testing.T, e *env) {
	agent := e.pod(agentNS, "agent-renew", agentSA, nodeA)
	impostor := e.pod(agentNS, "impostor-renew", "not-the-agent", nodeA)
	tok := e.token(agent)

	t.Run("fresh_token_of_the_agent_pod_on_the_node_renews", func(t *testing.T) {
		if err := e.att.CheckRenewal(e.ctx(), nodeA, renewReq(tok)); err != nil {
			t.Fatalf("CheckRenewal: %v", err)
		}
	})
	t.Run("node_mismatch_is_denied", func(t *testing.T) {
		err := e.att.CheckRenewal(e.ctx(), nodeB, renewReq(tok))
		checkDenial(t, err, issuerv1.Denial_PERMISSION_DENIED, `agent SVID is for node "node-b"`, tok)
	})
	t.Run("missing_token_asks_to_upgrade", func(t *testing.T) {
		err := e.att.CheckRenewal(e.ctx(), nodeA, renewReq(""))
		checkDenial(t, err, issuerv1.Denial_INVALID_ARGUMENT, "upgrade")
	})
	t.Run("token_of_another_service_account_is_denied", func(t *testing.T) {
		it := e.token(impostor)
		checkDenial(t, e.att.CheckRenewal(e.ctx(), nodeA, renewReq(it)), issuerv1.Denial_PERMISSION_DENIED, "not to the agent ServiceAccount", it)
	})
	t.Run("garbage_token_is_denied", func(t *testing.T) {
		checkDenial(t, e.att.CheckRenewal(e.ctx(), nodeA, renewReq("garbage.not-a.jwt-at-all-0123456789")), issuerv1.Denial_PERMISSION_DENIED, "token rejected")
	})
	t.Run("deleted_agent_pod_is_denied", func(t *testing.T) {
		if err := e.client.CoreV1().Pods(agentNS).Delete(e.ctx(), agent.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
			t.Fatal(err)
		}
		e.eventually("deletion seen by the cache", func() bool {
			_, ok := e.cache.ByUID(string(agent.UID))
			return !ok
		})
		err := e.att.CheckRenewal(e.ctx(), nodeA, renewReq(tok))
		if err == nil {
			t.Fatal("renewal with the token of a deleted agent pod passed")
		}
		if d := issuer.DenialOf(err); d.Code != issuerv1.Denial_PERMISSION_DENIED {
			t.Fatalf("denial %v, want PERMISSION_DENIED", d)
		}
	})
}
