package cluster_test

import (
	"context"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mayfly-pki/mayfly/internal/test/cluster"
)

// TestSmoke proves the envtest control plane built from source answers the
// APIs mayfly depends on: bound ServiceAccount tokens carrying the node name,
// TokenReview, PodCertificateRequests and ClusterTrustBundles.
func TestSmoke(t *testing.T) {
	c := cluster.Start(t)
	ctx := context.Background()
	const ns, sa, node = "smoke", "agent", "node-a"

	mustCreate(t, func() error {
		_, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		return err
	})
	mustCreate(t, func() error {
		_, err := c.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{})
		return err
	})
	pod := cluster.CreatePod(t, c.Client, ns, "agent-x", sa, node)

	exp := int64(600)
	tr, err := c.Client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			Audiences:         []string{"mayfly-ca"},
			ExpirationSeconds: &exp,
			BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token request: %v", err)
	}

	review, err := c.Client.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: tr.Status.Token, Audiences: []string{"mayfly-ca"}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token review: %v", err)
	}
	if !review.Status.Authenticated {
		t.Fatalf("token not authenticated: %s", review.Status.Error)
	}
	if got, want := review.Status.User.Username, "system:serviceaccount:smoke:agent"; got != want {
		t.Errorf("username = %q, want %q", got, want)
	}
	if got := review.Status.User.Extra["authentication.kubernetes.io/node-name"]; len(got) != 1 || got[0] != node {
		t.Errorf("node-name extra = %v, want [%s]", got, node)
	}
	if got := review.Status.User.Extra["authentication.kubernetes.io/pod-uid"]; len(got) != 1 || got[0] != string(pod.UID) {
		t.Errorf("pod-uid extra = %v, want [%s]", got, pod.UID)
	}

	wrong, err := c.Client.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: tr.Status.Token, Audiences: []string{"someone-else"}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token review (wrong audience): %v", err)
	}
	if wrong.Status.Authenticated {
		t.Error("token with audience mayfly-ca authenticated for another audience")
	}

	if _, err := c.Client.CertificatesV1().PodCertificateRequests(ns).List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("list podcertificaterequests: %v", err)
	}
	if _, err := c.Client.CertificatesV1().ClusterTrustBundles().List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("list clustertrustbundles: %v", err)
	}
}

func mustCreate(t *testing.T, f func() error) {
	t.Helper()
	if err := f(); err != nil {
		t.Fatal(err)
	}
}
