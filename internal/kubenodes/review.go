package kubenodes

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/issuer"
)

// Keys of TokenReview status.user.extra for a token bound to a pod.
const (
	extraPodUID   = "authentication.kubernetes.io/pod-uid"
	extraPodName  = "authentication.kubernetes.io/pod-name"
	extraNodeName = "authentication.kubernetes.io/node-name"
)

// reviewed is what a successful TokenReview says about a token.
type reviewed struct {
	username string
	podUID   string // empty when the token is not bound to a pod
	podName  string
	nodeName string // empty when the pod was not scheduled at issuance
}

// reviewToken asks the API server whether token is valid for audience.
// A refused token is a PERMISSION_DENIED *issuer.Denial; an unreachable API
// server is UNAVAILABLE. No message carries the token.
func reviewToken(ctx context.Context, client kubernetes.Interface, timeout time.Duration, audience, token string) (reviewed, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tr, err := client.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: []string{audience}},
	}, metav1.CreateOptions{})
	switch {
	case apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err):
		// The CA's own credentials or RBAC are wrong: an internal error
		// for the client, the detail for the CA's log.
		return reviewed{}, fmt.Errorf("kubeattest: TokenReview refused to the CA (it needs create on tokenreviews.authentication.k8s.io): %w", err)
	case err != nil:
		return reviewed{}, fmt.Errorf("%w: %w", issuer.Deny(issuerv1.Denial_UNAVAILABLE,
			"the CA cannot reach the Kubernetes API to review the token; retry with backoff"), err)
	}
	st := tr.Status
	if !st.Authenticated {
		return reviewed{}, issuer.Deny(issuerv1.Denial_PERMISSION_DENIED, "token rejected by the TokenReview: %s", reviewError(st.Error, token))
	}
	if !slices.Contains(st.Audiences, audience) {
		return reviewed{}, issuer.Deny(issuerv1.Denial_PERMISSION_DENIED, "token is not valid for audience %q", audience)
	}
	return reviewed{
		username: st.User.Username,
		podUID:   oneExtra(st.User.Extra, extraPodUID),
		podName:  oneExtra(st.User.Extra, extraPodName),
		nodeName: oneExtra(st.User.Extra, extraNodeName),
	}, nil
}

// oneExtra returns the single value of key, or "" when there is not
// exactly one.
func oneExtra(extra map[string]authenticationv1.ExtraValue, key string) string {
	if v := extra[key]; len(v) == 1 {
		return v[0]
	}
	return ""
}

// reviewError makes the API server's reason for a rejection safe to return:
// never the token (nor a long part of it), at most 200 bytes.
func reviewError(msg, token string) string {
	if msg == "" {
		return "not authenticated"
	}
	if strings.Contains(msg, token) || (len(token) >= 16 && strings.Contains(msg, token[:16])) {
		return "invalid token"
	}
	return truncate(msg, 200)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

func serviceAccountUser(namespace, name string) string {
	return "system:serviceaccount:" + namespace + ":" + name
}
