package deploytest

import (
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mayflyv1alpha1 "github.com/mayfly-pki/mayfly/api/mayfly/v1alpha1"
	"github.com/mayfly-pki/mayfly/internal/app/caapp"
	"github.com/mayfly-pki/mayfly/internal/test/cluster"
	"github.com/mayfly-pki/mayfly/internal/test/logbuf"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
)

// TestChartRBACRunsTheCA runs the CA with the configuration the chart
// renders, as the chart's ServiceAccount with the chart's RBAC applied for
// real (impersonation): the least-privilege grants of an opted-in install
// are enough for every part of the CA (state, leader election, adoption,
// trust bundle, WorkloadCertificates, PodCertificateRequests), and nothing
// it does is refused. Secrets are written in the opted-in namespace only;
// the other's WorkloadCertificate reports NamespaceNotEnabled.
func TestChartRBACRunsTheCA(t *testing.T) {
	const ns = "pki"
	objs := renderChart(t, ns, "trustDomain=acme.internal",
		"workloadCertificates.namespaces={team-a}", "trustBundle.namespaces={team-a}")
	c := cluster.Start(t)
	ctx := context.Background()
	a := newApplier(t, c)
	a.installCRDs(ctx, t, objs)
	for _, name := range []string{ns, "team-a", "team-b"} {
		a.createNamespace(ctx, t, name)
	}
	var caCM corev1.ConfigMap
	for _, o := range objs {
		switch o.GetKind() {
		case "ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding":
			if _, err := a.apply(ctx, o, false); err != nil {
				t.Fatalf("applying %s %s: %v", o.GetKind(), o.GetName(), err)
			}
		case "ConfigMap":
			if o.GetName() == "mayfly-ca-config" {
				convert(t, o, &caCM)
			}
		}
	}
	cfg, err := caapp.Parse([]byte(caCM.Data["ca.yaml"]))
	if err != nil {
		t.Fatal(err)
	}
	cfg.HealthAddress = ""
	cfg.StatusSocket = filepath.Join(t.TempDir(), "status.sock")

	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if err := mayflyv1alpha1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	admin, err := client.New(c.Config, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	for _, team := range []string{"team-a", "team-b"} {
		for _, o := range []client.Object{
			&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: team, Name: "web"}},
			&mayflyv1alpha1.WorkloadCertificate{
				ObjectMeta: metav1.ObjectMeta{Namespace: team, Name: "web"},
				Spec:       mayflyv1alpha1.WorkloadCertificateSpec{ServiceAccountName: "web", SecretName: "web-tls"},
			},
		} {
			if err := admin.Create(ctx, o); err != nil {
				t.Fatal(err)
			}
		}
	}

	caUser := rest.CopyConfig(c.Config)
	caUser.Impersonate = rest.ImpersonationConfig{
		UserName: "system:serviceaccount:" + ns + ":mayfly-ca",
		Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	logs := &logbuf.Buffer{}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- caapp.Run(runCtx, cfg, caapp.Options{
			RestConfig: caUser, Listener: lis, Replica: "mayfly-ca-0",
			Logger: slog.New(slog.NewJSONHandler(logs, nil)),
		})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("CA run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("the CA did not stop within 30s")
		}
	})

	get := func(ctx context.Context, o client.Object, namespace, name string) error {
		return admin.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, o)
	}
	wait.Until(t, "trust bundle in the CA's namespace and team-a, a Secret in team-a", 2*time.Minute, 100*time.Millisecond, func(ctx context.Context) (bool, string) {
		for _, k := range []client.ObjectKey{{Namespace: ns, Name: "mayfly-trust-bundle"}, {Namespace: "team-a", Name: "mayfly-trust-bundle"}} {
			if err := get(ctx, &corev1.ConfigMap{}, k.Namespace, k.Name); err != nil {
				return false, "ConfigMap " + k.String() + ": " + err.Error()
			}
		}
		if err := get(ctx, &corev1.Secret{}, "team-a", "web-tls"); err != nil {
			return false, "Secret team-a/web-tls: " + err.Error()
		}
		return true, ""
	})
	wait.Until(t, "team-b's WorkloadCertificate reports NamespaceNotEnabled", time.Minute, 100*time.Millisecond, func(ctx context.Context) (bool, string) {
		var wc mayflyv1alpha1.WorkloadCertificate
		if err := get(ctx, &wc, "team-b", "web"); err != nil {
			return false, err.Error()
		}
		cond := meta.FindStatusCondition(wc.Status.Conditions, mayflyv1alpha1.ConditionFailed)
		if cond == nil || cond.Reason != mayflyv1alpha1.ReasonNamespaceNotEnabled {
			return false, "conditions " + strings.TrimSpace(strings.Join(condStrings(wc.Status.Conditions), ", "))
		}
		return true, ""
	})
	if err := get(ctx, &corev1.Secret{}, "team-b", "web-tls"); !apierrors.IsNotFound(err) {
		t.Errorf("Secret team-b/web-tls: %v, want none", err)
	}
	if err := get(ctx, &corev1.ConfigMap{}, "team-b", "mayfly-trust-bundle"); !apierrors.IsNotFound(err) {
		t.Errorf("trust bundle in team-b: %v, want none", err)
	}
	if s := logs.String(); strings.Contains(s, "forbidden") {
		t.Errorf("the CA ran into RBAC denials with the chart's grants:\n%s", s)
	}
}

func condStrings(cs []metav1.Condition) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Type+"="+string(c.Status)+"/"+c.Reason)
	}
	return out
}
