package policy_test

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mayfly-pki/mayfly/internal/policy"
	"github.com/mayfly-pki/mayfly/internal/test/testca"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func key(t *testing.T, kt pki.KeyType) crypto.Signer {
	t.Helper()
	k, err := pki.GenerateKey(kt, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestRules has one row per rule and outcome: the rule alone applied to a
// request, the rule it names in a refusal and the class.
func TestRules(t *testing.T) {
	ec := key(t, pki.KeyTypeECDSAP256).Public()
	rsa3072 := key(t, pki.KeyTypeRSA3072).Public() // a supported type the rule may leave out
	workload := func(id string) pki.SignRequest {
		return pki.SignRequest{Kind: pki.KindWorkload, PublicKey: ec, ID: spiffeid.RequireFromString(id), TTL: time.Hour}
	}
	web := workload("spiffe://example.org/ns/default/sa/web")
	with := func(r pki.SignRequest, f func(*pki.SignRequest)) pki.SignRequest { f(&r); return r }
	agent := pki.SignRequest{Kind: pki.KindAgent, PublicKey: ec, ID: spiffeid.RequireFromString("spiffe://example.org/mayfly/agent/node-a"), TTL: time.Hour}

	tests := []struct {
		name      string
		rule      policy.Rule
		req       pki.SignRequest
		wantClass policy.Class // ClassNone: allowed
		wantText  string
	}{
		{"kind: listed kind passes", policy.Kinds{pki.KindWorkload}, web, policy.ClassNone, ""},
		{"kind: other kind is our mistake", policy.Kinds{pki.KindWorkload}, agent, policy.ClassInternal, `kind "agent"`},

		{"id-shape: workload /ns/sa passes", policy.IDShape{}, web, policy.ClassNone, ""},
		{"id-shape: free-form workload ID is forbidden", policy.IDShape{}, workload("spiffe://example.org/demo/web"), policy.ClassForbidden, `"/demo/web" does not fit kind workload`},
		{"id-shape: agent /mayfly/agent/<node> passes", policy.IDShape{}, agent, policy.ClassNone, ""},
		{"id-shape: agent ID of a workload shape is forbidden", policy.IDShape{}, with(agent, func(r *pki.SignRequest) { r.ID = web.ID }), policy.ClassForbidden, "does not fit kind agent"},

		{"reserved-id: ordinary workload ID passes", policy.ReservedIDs{}, workload("spiffe://example.org/svc/web"), policy.ClassNone, ""},
		{"reserved-id: workload posing as another node's agent is forbidden", policy.ReservedIDs{}, workload("spiffe://example.org/mayfly/agent/other-node"), policy.ClassForbidden, "reserved for mayfly's own components"},
		{"reserved-id: workload posing as the CA is forbidden", policy.ReservedIDs{}, workload("spiffe://example.org/mayfly/ca"), policy.ClassForbidden, "spiffe://example.org/mayfly/ca is reserved"},
		{"reserved-id: the reserved path itself is forbidden", policy.ReservedIDs{}, workload("spiffe://example.org/mayfly"), policy.ClassForbidden, "reserved"},
		{"reserved-id: a look-alike path passes", policy.ReservedIDs{}, workload("spiffe://example.org/mayflyer/x"), policy.ClassNone, ""},
		{"reserved-id: agents may have their own IDs", policy.ReservedIDs{}, agent, policy.ClassNone, ""},

		{"ttl-bounds: ttl at the minimum passes", policy.TTLBounds{Min: time.Hour, Max: 24 * time.Hour}, web, policy.ClassNone, ""},
		{"ttl-bounds: ttl above the maximum is a bad request", policy.TTLBounds{Min: 5 * time.Minute, Max: 24 * time.Hour}, with(web, func(r *pki.SignRequest) { r.TTL = 48 * time.Hour }), policy.ClassBadRequest, "ttl 48h0m0s is above the maximum 24h0m0s"},
		{"ttl-bounds: ttl below the minimum is a bad request", policy.TTLBounds{Min: 5 * time.Minute, Max: 24 * time.Hour}, with(web, func(r *pki.SignRequest) { r.TTL = time.Minute }), policy.ClassBadRequest, "ttl 1m0s is below the minimum 5m0s"},

		{"key-type: listed type passes", policy.KeyTypes{pki.KeyTypeECDSAP256}, web, policy.ClassNone, ""},
		{"key-type: unlisted type is a bad request", policy.KeyTypes{pki.KeyTypeECDSAP256}, with(web, func(r *pki.SignRequest) { r.PublicKey = rsa3072 }), policy.ClassBadRequest, "key type rsa-3072 is not one of"},
		{"key-type: unknown key is a bad request", policy.KeyTypes(pki.KeyTypes()), with(web, func(r *pki.SignRequest) { r.PublicKey = "not a key" }), policy.ClassBadRequest, "unsupported key"},

		{"dns-names: valid names pass", policy.DNSNames{Max: 2}, with(web, func(r *pki.SignRequest) { r.DNSNames = []string{"a.example", "b.example"} }), policy.ClassNone, ""},
		{"dns-names: too many names is a bad request", policy.DNSNames{Max: 1}, with(web, func(r *pki.SignRequest) { r.DNSNames = []string{"a.example", "b.example"} }), policy.ClassBadRequest, "2 DNS names, at most 1"},
		{"dns-names: none allowed", policy.DNSNames{}, with(web, func(r *pki.SignRequest) { r.DNSNames = []string{"a.example"} }), policy.ClassBadRequest, "at most 0"},
		{"dns-names: invalid name is a bad request naming its index", policy.DNSNames{Max: 2}, with(web, func(r *pki.SignRequest) { r.DNSNames = []string{"a.example", "*.example"} }), policy.ClassBadRequest, "dnsNames[1]"},
		{"dns-names: duplicate is a bad request", policy.DNSNames{Max: 2}, with(web, func(r *pki.SignRequest) { r.DNSNames = []string{"a.example", "a.example"} }), policy.ClassBadRequest, `dnsNames[1]: duplicate "a.example"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := tc.req
			err := tc.rule.Apply(&req, &x509.Certificate{})
			if tc.wantClass == policy.ClassNone {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if got := policy.ClassOf(err); got != tc.wantClass {
				t.Fatalf("err = %v, want class %v", err, tc.wantClass)
			}
			if got := policy.RuleOf(err); got != tc.rule.Name() {
				t.Fatalf("rule = %q, want %q", got, tc.rule.Name())
			}
			if want := "policy: rule " + tc.rule.Name() + ": "; !strings.HasPrefix(err.Error(), want) || !strings.Contains(err.Error(), tc.wantText) {
				t.Fatalf("message %q, want prefix %q and %q", err, want, tc.wantText)
			}
		})
	}
}

// TestWorkloadRules signs through pki.Signer with the rule sets: the
// impersonation of an agent or of the CA cannot be issued to a workload,
// whatever the mode.
func TestWorkloadRules(t *testing.T) {
	ca := testca.New(t)
	sign := func(rules []pki.SignOption, kind pki.Kind, id string, ttl time.Duration) error {
		s := pki.Signer{Authority: ca.Authority(), Now: time.Now, Rand: rand.Reader, Options: rules}
		_, _, err := s.Sign(pki.SignRequest{Kind: kind, PublicKey: key(t, pki.KeyTypeECDSAP256).Public(), ID: spiffeid.RequireFromString(id), TTL: ttl})
		return err
	}
	standalone := policy.WorkloadRules(policy.WorkloadLimits{MinTTL: 5 * time.Minute, MaxTTL: 24 * time.Hour, MaxDNSNames: 32})
	kubernetes := policy.WorkloadRules(policy.WorkloadLimits{MinTTL: 5 * time.Minute, MaxTTL: 24 * time.Hour, KubernetesIDs: true})
	tests := []struct {
		name     string
		rules    []pki.SignOption
		kind     pki.Kind
		id       string
		ttl      time.Duration
		wantRule string // "": issued
	}{
		{"standalone workload is issued", standalone, pki.KindWorkload, "spiffe://example.org/svc/web", time.Hour, ""},
		{"standalone workload cannot be another node's agent", standalone, pki.KindWorkload, "spiffe://example.org/mayfly/agent/x", time.Hour, policy.RuleReservedID},
		{"standalone workload cannot be the CA", standalone, pki.KindWorkload, "spiffe://example.org/mayfly/ca", time.Hour, policy.RuleReservedID},
		{"kubernetes workload is issued", kubernetes, pki.KindWorkload, "spiffe://example.org/ns/default/sa/web", time.Hour, ""},
		{"kubernetes workload cannot be an agent", kubernetes, pki.KindWorkload, "spiffe://example.org/mayfly/agent/x", time.Hour, policy.RuleReservedID},
		{"workload ttl is checked by its rule", standalone, pki.KindWorkload, "spiffe://example.org/svc/web", 48 * time.Hour, policy.RuleTTLBounds},
		{"workload rules refuse agent kind", standalone, pki.KindAgent, "spiffe://example.org/mayfly/agent/x", time.Hour, policy.RuleKind},
		{"agent rules issue an agent", policy.AgentRules(), pki.KindAgent, "spiffe://example.org/mayfly/agent/x", time.Hour, ""},
		{"agent rules refuse a non-agent ID", policy.AgentRules(), pki.KindAgent, "spiffe://example.org/mayfly/ca", time.Hour, policy.RuleIDShape},
		{"server rules issue the CA's certificate", policy.ServerRules(), pki.KindAgent, "spiffe://example.org/mayfly/ca", time.Hour, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := sign(tc.rules, tc.kind, tc.id, tc.ttl)
			if got := policy.RuleOf(err); got != tc.wantRule || (tc.wantRule == "") != (err == nil) {
				t.Fatalf("err = %v (rule %q), want rule %q", err, got, tc.wantRule)
			}
		})
	}
}

func TestClassOf(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want policy.Class
	}{
		{"nil has no class", nil, policy.ClassNone},
		{"a refusal keeps its class", policy.Deny("r", policy.ClassForbidden, "no"), policy.ClassForbidden},
		{"a wrapped refusal keeps its class", fmt.Errorf("sign: %w", policy.Deny("r", policy.ClassBadRequest, "no")), policy.ClassBadRequest},
		{"unusable signing authority is unavailable", fmt.Errorf("sign: %w", pki.ErrAuthority), policy.ClassUnavailable},
		{"malformed CSR is a bad request", fmt.Errorf("x: %w", pki.ErrCSRMalformed), policy.ClassBadRequest},
		{"bad CSR signature is a bad request", pki.ErrCSRSignature, policy.ClassBadRequest},
		{"weak key is a bad request", pki.ErrWeakKey, policy.ClassBadRequest},
		{"unsupported key is a bad request", pki.ErrUnsupportedKey, policy.ClassBadRequest},
		{"invalid sign request is a bad request", pki.ErrInvalidRequest, policy.ClassBadRequest},
		{"pki's own option refusal is a bad request", pki.ErrPolicy, policy.ClassBadRequest},
		{"invalid SPIFFE ID is a bad request", pki.ErrInvalidID, policy.ClassBadRequest},
		{"self-check failure is internal", fmt.Errorf("self-check: %w", pki.ErrNotSVID), policy.ClassInternal},
		{"anything else is internal", errors.New("disk on fire"), policy.ClassInternal},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := policy.ClassOf(tc.err); got != tc.want {
				t.Fatalf("ClassOf(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

func TestCheckIDPattern(t *testing.T) {
	tests := []struct {
		pattern string
		want    string // "": valid
	}{
		{"spiffe://example.org/svc/web", ""},
		{"spiffe://example.org/svc/*", ""},
		{"spiffe://example.org/mayflyer/*", ""},
		{"spiffe://example.org/mayfly/*", "covers reserved IDs: spiffe://example.org/mayfly/... belong to mayfly's agents and CA"},
		{"spiffe://example.org/mayfly/agent/*", "covers reserved IDs"},
		{"spiffe://example.org/mayfly/agent/node-b", "is a reserved ID"},
		{"spiffe://example.org/mayfly/ca", "reserved"},
		{"spiffe://example.org/mayfly", "reserved"},
		{"spiffe://example.org/*", "names the whole trust domain"},
		{"spiffe://other.org/svc/*", "not in trust domain example.org"},
		{"spiffe://example.org/a//b", "empty path segment"},
		{"web", "must start with"},
	}
	for _, tc := range tests {
		t.Run(tc.pattern, func(t *testing.T) {
			err := policy.CheckIDPattern(td, tc.pattern)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestMatchIDPattern(t *testing.T) {
	tests := []struct {
		pattern, id string
		want        bool
	}{
		{"spiffe://example.org/svc/web", "spiffe://example.org/svc/web", true},
		{"spiffe://example.org/svc/web", "spiffe://example.org/svc/web/x", false},
		{"spiffe://example.org/svc/*", "spiffe://example.org/svc/web", true},
		{"spiffe://example.org/svc/*", "spiffe://example.org/svc", false},
		{"spiffe://example.org/svc/*", "spiffe://example.org/svcx/web", false},
	}
	for _, tc := range tests {
		if got := policy.MatchIDPattern(tc.pattern, spiffeid.RequireFromString(tc.id)); got != tc.want {
			t.Errorf("MatchIDPattern(%s, %s) = %v, want %v", tc.pattern, tc.id, got, tc.want)
		}
	}
}

func TestServiceDNSName(t *testing.T) {
	tests := []struct {
		name, dns string
		wantSvc   string // "": refused
	}{
		{"short Service name", "web.shop.svc", "web"},
		{"Service name with cluster domain", "web.shop.svc.cluster.local", "web"},
		{"other namespace is refused", "web.other.svc", ""},
		{"other cluster domain is refused", "web.shop.svc.example.com", ""},
		{"no Service label is refused", ".shop.svc", ""},
		{"Service label starting with a digit is refused", "1web.shop.svc", ""},
		{"bare host is refused", "web", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			svc, err := policy.ServiceDNSName(tc.dns, "shop", "cluster.local")
			if tc.wantSvc != "" {
				if err != nil || svc != tc.wantSvc {
					t.Fatalf("= %q, %v; want %q", svc, err, tc.wantSvc)
				}
				return
			}
			if policy.ClassOf(err) != policy.ClassForbidden || policy.RuleOf(err) != policy.RuleServiceDNSName {
				t.Fatalf("err = %v, want a forbidden %s refusal", err, policy.RuleServiceDNSName)
			}
		})
	}
}

// TestPodOf: the pod the rules judge keeps what they read of the API's pod.
func TestPodOf(t *testing.T) {
	now := metav1.Now()
	full := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: "apps", Name: "web-1", UID: "uid-1", DeletionTimestamp: &now,
			Labels:      map[string]string{"app": "web"},
			Annotations: map[string]string{policy.MirrorPodAnnotation: "hash", "other": "x"},
		},
		Spec:   corev1.PodSpec{NodeName: "node-a", ServiceAccountName: "web", Containers: []corev1.Container{{Name: "app"}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning},
	}
	want := policy.Pod{Namespace: "apps", Name: "web-1", UID: "uid-1", ServiceAccount: "web", NodeName: "node-a",
		Phase: corev1.PodRunning, Terminating: true, Mirror: true}
	if got := policy.PodOf(full); got != want {
		t.Errorf("PodOf = %+v, want %+v", got, want)
	}
	if got := policy.PodOf(&corev1.Pod{}); got != (policy.Pod{}) {
		t.Errorf("PodOf(empty pod) = %+v, want the zero Pod", got)
	}
}

func TestPodRules(t *testing.T) {
	pod := func(node string, phase corev1.PodPhase, deleting bool) *policy.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "web-1"}, Spec: corev1.PodSpec{NodeName: node}, Status: corev1.PodStatus{Phase: phase}}
		if deleting {
			now := metav1.Now()
			p.DeletionTimestamp = &now
		}
		out := policy.PodOf(p)
		return &out
	}
	tests := []struct {
		name     string
		check    func() error
		wantRule string // "": allowed
		wantText string
	}{
		{"pod-node: pod on the node passes", func() error { return policy.PodOnNode(pod("node-a", corev1.PodRunning, false), "node-a") }, "", ""},
		{"pod-node: pod on another node is refused", func() error { return policy.PodOnNode(pod("node-a", corev1.PodRunning, false), "node-b") }, policy.RulePodNode, `scheduled on node "node-a", not on the requesting node "node-b"`},
		{"pod-node: unscheduled pod is refused", func() error { return policy.PodOnNode(pod("", corev1.PodPending, false), "node-b") }, policy.RulePodNode, `scheduled on node ""`},
		{"pod-phase: running pod passes", func() error { return policy.PodNotTerminated(pod("n", corev1.PodRunning, false)) }, "", ""},
		{"pod-phase: pod without a phase is not terminated", func() error { return policy.PodNotTerminated(pod("n", "", false)) }, "", ""},
		{"pod-phase: deleting pod is refused", func() error { return policy.PodNotTerminated(pod("n", corev1.PodRunning, true)) }, policy.RulePodPhase, "is terminating"},
		{"pod-phase: succeeded pod is refused", func() error { return policy.PodNotTerminated(pod("n", corev1.PodSucceeded, false)) }, policy.RulePodPhase, "phase Succeeded"},
		{"pod-phase: failed pod is refused", func() error { return policy.PodNotTerminated(pod("n", corev1.PodFailed, false)) }, policy.RulePodPhase, "phase Failed"},
		{"pod-phase: active pending pod passes", func() error { return policy.PodActive(pod("n", corev1.PodPending, false)) }, "", ""},
		{"pod-phase: active requires a known live phase", func() error { return policy.PodActive(pod("n", corev1.PodUnknown, false)) }, policy.RulePodPhase, `phase "Unknown", not Pending or Running`},
		{"pod-phase: active refuses a deleting pod", func() error { return policy.PodActive(pod("n", corev1.PodRunning, true)) }, policy.RulePodPhase, "is terminating"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.check()
			if tc.wantRule == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if policy.RuleOf(err) != tc.wantRule || policy.ClassOf(err) != policy.ClassForbidden || !strings.Contains(err.Error(), tc.wantText) {
				t.Fatalf("err = %v, want a forbidden %s refusal with %q", err, tc.wantRule, tc.wantText)
			}
		})
	}
}
