package deploytest

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/mayfly-pki/mayfly/internal/test/cluster"
)

// access is one SubjectAccessReview and the answer RBAC must give.
type access struct {
	verb, group, resource, subresource, namespace, name string
	allowed                                             bool
}

func (a access) String() string {
	r := a.resource
	if a.subresource != "" {
		r += "/" + a.subresource
	}
	if a.group != "" {
		r += "." + a.group
	}
	where := "cluster-wide"
	if a.namespace != "" {
		where = "in " + a.namespace
	}
	if a.name != "" {
		r += " " + a.name
	}
	return fmt.Sprintf("%s %s %s", a.verb, r, where)
}

func serviceAccountUser(name string) (string, []string) {
	return "system:serviceaccount:" + namespace + ":" + name,
		[]string{"system:serviceaccounts", "system:serviceaccounts:" + namespace, "system:authenticated"}
}

// TestRBAC applies the install's RBAC for real and proves its boundaries
// with SubjectAccessReviews: what the agent and the CA may and may not do.
func TestRBAC(t *testing.T) {
	objs := render(t, ".")
	c := cluster.Start(t)
	ctx := context.Background()
	a := newApplier(t, c)
	a.createNamespaces(ctx, t, objs)
	for _, o := range objs {
		switch o.GetKind() {
		case "ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding":
			if _, err := a.apply(ctx, o, false); err != nil {
				t.Fatalf("applying %s %s: %v", o.GetKind(), o.GetName(), err)
			}
		}
	}

	const certs, other = "certificates.k8s.io", "some-app"
	var agentChecks []access
	// No Secret access anywhere: a compromised node must stay on that node.
	for _, ns := range []string{namespace, "default", "kube-system", other, ""} {
		for _, verb := range []string{"get", "list", "watch", "create", "update", "patch", "delete"} {
			agentChecks = append(agentChecks, access{verb: verb, resource: "secrets", namespace: ns})
		}
		agentChecks = append(agentChecks, access{verb: "get", resource: "secrets", namespace: ns, name: "mayfly-ca"})
	}
	agentChecks = append(agentChecks,
		access{verb: "list", resource: "pods", allowed: true},
		access{verb: "watch", resource: "pods", allowed: true},
		access{verb: "get", resource: "pods", namespace: other, allowed: true},
		access{verb: "list", resource: "pods", namespace: other, allowed: true},
		access{verb: "create", resource: "pods", namespace: other},
		access{verb: "delete", resource: "pods", namespace: other},
		access{verb: "update", resource: "pods", subresource: "status", namespace: other},
		access{verb: "sign", group: certs, resource: "signers", name: "mayfly.dev/workload"},
		access{verb: "sign", group: certs, resource: "signers", name: "mayfly.dev/*"},
		access{verb: "sign", group: certs, resource: "signers", name: "kubernetes.io/kube-apiserver-client"},
		access{verb: "attest", group: certs, resource: "signers", name: "mayfly.dev/workload"},
		access{verb: "update", group: certs, resource: "podcertificaterequests", subresource: "status", namespace: other},
		access{verb: "patch", group: certs, resource: "podcertificaterequests", subresource: "status", namespace: other},
		access{verb: "create", group: certs, resource: "clustertrustbundles"},
		access{verb: "create", group: "authentication.k8s.io", resource: "tokenreviews"},
		access{verb: "create", resource: "serviceaccounts", subresource: "token", namespace: other},
		access{verb: "update", resource: "configmaps", namespace: other, name: "mayfly-trust-bundle"},
		access{verb: "get", group: "mayfly.dev", resource: "workloadcertificates", namespace: other},
	)

	caChecks := []access{
		// The KEP-4317 signer: mayfly's signers only.
		{verb: "sign", group: certs, resource: "signers", name: "mayfly.dev/workload", allowed: true},
		{verb: "attest", group: certs, resource: "signers", name: "mayfly.dev/workload", allowed: true},
		{verb: "sign", group: certs, resource: "signers", name: "kubernetes.io/kube-apiserver-client"},
		{verb: "sign", group: certs, resource: "signers", name: "kubernetes.io/kube-apiserver-client-kubelet"},
		{verb: "sign", group: certs, resource: "signers", name: "kubernetes.io/kubelet-serving"},
		{verb: "sign", group: certs, resource: "signers", name: "kubernetes.io/*"},
		{verb: "sign", group: certs, resource: "signers", name: "example.com/workload"},
		{verb: "approve", group: certs, resource: "signers", name: "mayfly.dev/workload"},
		{verb: "list", group: certs, resource: "podcertificaterequests", allowed: true},
		{verb: "update", group: certs, resource: "podcertificaterequests", subresource: "status", namespace: other, allowed: true},
		{verb: "update", group: certs, resource: "podcertificaterequests", namespace: other},
		{verb: "delete", group: certs, resource: "podcertificaterequests", namespace: other},
		{verb: "create", group: certs, resource: "clustertrustbundles", allowed: true},
		{verb: "delete", group: certs, resource: "clustertrustbundles", name: "mayfly.dev:workload:roots"},
		{verb: "create", group: certs, resource: "certificatesigningrequests", subresource: "approval"},
		// Its own state.
		{verb: "get", resource: "secrets", namespace: namespace, name: "mayfly-ca", allowed: true},
		{verb: "update", resource: "secrets", namespace: namespace, name: "mayfly-ca", allowed: true},
		{verb: "get", resource: "secrets", namespace: namespace, name: "mayfly-agent-evictions", allowed: true},
		{verb: "update", group: "coordination.k8s.io", resource: "leases", namespace: namespace, name: "mayfly-ca", allowed: true},
		{verb: "update", group: "coordination.k8s.io", resource: "leases", namespace: "kube-system", name: "kube-controller-manager"},
		// Attestation and authorization inputs.
		{verb: "create", group: "authentication.k8s.io", resource: "tokenreviews", allowed: true},
		{verb: "watch", resource: "pods", allowed: true},
		{verb: "list", resource: "services", allowed: true},
		{verb: "watch", resource: "namespaces", allowed: true},
		// Trust bundle ConfigMaps, and no other ConfigMap: by default only
		// in its own namespace (trustBundle.namespaces opts others in; the
		// chart matrix in chart_test.go checks those).
		{verb: "update", resource: "configmaps", namespace: namespace, name: "mayfly-trust-bundle", allowed: true},
		{verb: "update", resource: "configmaps", namespace: other, name: "mayfly-trust-bundle"},
		{verb: "create", resource: "configmaps", namespace: other},
		{verb: "list", resource: "configmaps", name: "mayfly-trust-bundle"},
		{verb: "update", resource: "configmaps", namespace: "kube-system", name: "kube-root-ca.crt"},
		{verb: "get", resource: "configmaps", namespace: other, name: "app-config"},
		{verb: "list", resource: "configmaps"},
		{verb: "delete", resource: "configmaps", namespace: other, name: "mayfly-trust-bundle"},
		// Root adoption: its replicas' ConfigMaps in its own namespace, and
		// the Nodes read-only.
		{verb: "update", resource: "configmaps", namespace: namespace, name: "mayfly-adoption-mayfly-ca-0", allowed: true},
		{verb: "watch", resource: "configmaps", namespace: namespace, allowed: true},
		{verb: "update", resource: "configmaps", namespace: other, name: "mayfly-adoption-mayfly-ca-0"},
		{verb: "watch", resource: "nodes", allowed: true},
		{verb: "update", resource: "nodes", name: "node-a"},
		{verb: "delete", resource: "nodes", name: "node-a"},
		// WorkloadCertificate -> Secret is opt-in per namespace
		// (workloadCertificates.namespaces): by default no Secret outside
		// its own namespace. The statuses report NamespaceNotEnabled.
		{verb: "watch", group: "mayfly.dev", resource: "workloadcertificates", allowed: true},
		{verb: "update", group: "mayfly.dev", resource: "workloadcertificates", subresource: "status", namespace: other, allowed: true},
		{verb: "update", group: "mayfly.dev", resource: "workloadcertificates", namespace: other},
		{verb: "create", resource: "secrets", namespace: other},
		{verb: "get", resource: "secrets", namespace: other},
		{verb: "list", resource: "secrets"},
		{verb: "delete", resource: "secrets", namespace: other},
		{verb: "watch", resource: "serviceaccounts"},
		{verb: "update", resource: "serviceaccounts", namespace: other},
		// Nothing that would let it act as someone else or run code.
		{verb: "delete", resource: "namespaces", name: namespace},
		{verb: "delete", resource: "namespaces", name: other},
		{verb: "create", resource: "namespaces"},
		{verb: "create", resource: "pods", namespace: namespace},
		{verb: "create", resource: "pods", namespace: other},
		{verb: "create", resource: "pods", subresource: "exec", namespace: other},
		{verb: "create", resource: "serviceaccounts", subresource: "token", namespace: other, name: "default"},
		{verb: "create", resource: "serviceaccounts", subresource: "token", namespace: "kube-system", name: "default"},
		{verb: "create", resource: "serviceaccounts", subresource: "token", namespace: namespace, name: agentSA},
		{verb: "impersonate", resource: "serviceaccounts", namespace: other},
		{verb: "update", group: "apps", resource: "daemonsets", namespace: namespace, name: agentSA},
		{verb: "escalate", group: "rbac.authorization.k8s.io", resource: "clusterroles"},
		{verb: "bind", group: "rbac.authorization.k8s.io", resource: "clusterroles"},
	}

	for _, sa := range []struct {
		name   string
		checks []access
	}{{agentSA, agentChecks}, {caSA, caChecks}} {
		user, groups := serviceAccountUser(sa.name)
		t.Run(sa.name, func(t *testing.T) {
			for _, chk := range sa.checks {
				sar, err := c.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
					Spec: authorizationv1.SubjectAccessReviewSpec{
						User:   user,
						Groups: groups,
						ResourceAttributes: &authorizationv1.ResourceAttributes{
							Verb: chk.verb, Group: chk.group, Resource: chk.resource, Subresource: chk.subresource,
							Namespace: chk.namespace, Name: chk.name,
						},
					},
				}, metav1.CreateOptions{})
				if err != nil {
					t.Fatalf("SubjectAccessReview %s: %v", chk, err)
				}
				if sar.Status.Allowed != chk.allowed {
					t.Errorf("%s may %s: allowed=%v, want %v (%s)", sa.name, chk, sar.Status.Allowed, chk.allowed, sar.Status.Reason)
				}
			}
		})
	}

	// The agent's effective rules, as the API server computes them for it:
	// reading pods, plus what every authenticated user gets.
	t.Run("agent rules", func(t *testing.T) {
		user, groups := serviceAccountUser(agentSA)
		cfg := rest.CopyConfig(c.Config)
		cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: groups}
		kube, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		// Granted to every authenticated user by the default cluster roles.
		everyone := map[string][]string{
			"authorization.k8s.io/selfsubjectaccessreviews": {"create"},
			"authorization.k8s.io/selfsubjectrulesreviews":  {"create"},
			"authentication.k8s.io/selfsubjectreviews":      {"create"},
			"certificates.k8s.io/clustertrustbundles":       {"get", "list", "watch"}, // public trust anchors
		}
		for _, ns := range []string{namespace, other} {
			rr, err := kube.AuthorizationV1().SelfSubjectRulesReviews().Create(ctx, &authorizationv1.SelfSubjectRulesReview{
				Spec: authorizationv1.SelfSubjectRulesReviewSpec{Namespace: ns},
			}, metav1.CreateOptions{})
			if err != nil {
				t.Fatalf("SelfSubjectRulesReview in %s: %v", ns, err)
			}
			for _, r := range rr.Status.ResourceRules {
				for _, g := range r.APIGroups {
					for _, res := range r.Resources {
						key := strings.TrimPrefix(g+"/"+res, "/")
						switch {
						case everyone[key] != nil && slices.Equal(r.Verbs, everyone[key]):
						case key == "pods" && slices.Equal(r.Verbs, []string{"get", "list", "watch"}) && len(r.ResourceNames) == 0:
						default:
							t.Errorf("in %s the agent may %v %s %v", ns, r.Verbs, key, r.ResourceNames)
						}
					}
				}
			}
		}
	})
}
