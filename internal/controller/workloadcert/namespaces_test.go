package workloadcert_test

import (
	"context"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mayflyv1alpha1 "github.com/mayfly-pki/mayfly/api/mayfly/v1alpha1"
	"github.com/mayfly-pki/mayfly/internal/test/cluster"
	"github.com/mayfly-pki/mayfly/internal/test/fakeauthority"
	"github.com/mayfly-pki/mayfly/internal/test/logbuf"
	"github.com/mayfly-pki/mayfly/internal/test/testca"
)

// TestOptInNamespaces runs the controller as a user whose RBAC grants
// Secrets in one namespace only (what the Helm chart grants with
// workloadCertificates.namespaces): it issues there, and a
// WorkloadCertificate in another namespace fails with NamespaceNotEnabled
// without any Secret being listed, read or written there (the API server
// would refuse, and the controller would log errors and never sync).
func TestOptInNamespaces(t *testing.T) {
	c := cluster.Start(t, cluster.WithCRDDirectory(crdDir(t)))
	e := &env{c: c, ca: testca.New(t), logs: &logbuf.Buffer{}, reg: prometheus.NewRegistry(), scheme: newScheme(t), namespaces: []string{"on"}}
	e.auth = fakeauthority.New(fakeauthority.Loaded(e.ca, "v1"), nil)
	var err error
	if e.cl, err = client.New(c.Config, client.Options{Scheme: e.scheme}); err != nil {
		t.Fatal(err)
	}
	e.create(t, namespace("on"), namespace("off"))

	const user = "mayfly-ca-test"
	rules := []rbacv1.PolicyRule{
		{APIGroups: []string{"mayfly.dev"}, Resources: []string{"workloadcertificates"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{"mayfly.dev"}, Resources: []string{"workloadcertificates/status"}, Verbs: []string{"update", "patch"}},
		{APIGroups: []string{"mayfly.dev"}, Resources: []string{"workloadcertificates/finalizers"}, Verbs: []string{"update"}},
		{APIGroups: []string{""}, Resources: []string{"serviceaccounts", "services"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{"", "events.k8s.io"}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
	}
	e.create(t,
		&rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: user}, Rules: rules},
		&rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: user},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: user},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}},
		},
		&rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Namespace: "on", Name: user}, Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get", "list", "watch", "create", "update", "delete"}},
		}},
		&rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Namespace: "on", Name: user},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: user},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}},
		},
	)
	cfg := rest.CopyConfig(c.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: []string{"system:authenticated"}}
	e.runController(t, cfg, 0, e.reg)

	e.create(t, serviceAccount("on", "web"), serviceAccount("off", "web"),
		workloadCert("on", "web", "web", "web-tls"), workloadCert("off", "web", "web", "web-tls"))

	e.waitSecret(t, "on", "web", "web-tls", "")
	wc := e.waitCondition(t, "off", "web", mayflyv1alpha1.ConditionFailed, metav1.ConditionTrue, mayflyv1alpha1.ReasonNamespaceNotEnabled)
	if msg := meta.FindStatusCondition(wc.Status.Conditions, mayflyv1alpha1.ConditionFailed).Message; !strings.Contains(msg, "workloadCertificates.namespaces") {
		t.Errorf("the message does not say what to change: %q", msg)
	}
	var s corev1.Secret
	if err := e.cl.Get(context.Background(), client.ObjectKey{Namespace: "off", Name: "web-tls"}, &s); !apierrors.IsNotFound(err) {
		t.Errorf("a Secret was written in a namespace that did not opt in (err=%v)", err)
	}
	if strings.Contains(e.logs.String(), "forbidden") {
		t.Errorf("the controller ran into RBAC denials:\n%s", e.logs.String())
	}
}
