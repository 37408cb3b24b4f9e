package csi

import (
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// TokenExpiryMargin is how long before its exp a pod token stops being
// sent: a request takes time, and the CA checks the token against its own
// clock.
const TokenExpiryMargin = 30 * time.Second

// waitingForToken is the reason a volume's renewals go to the CA without the
// pod's token.
const waitingForToken = "waiting for a fresh pod token from kubelet"

// PodTokenSource gives the ServiceAccount token of a volume's pod for a
// request to the CA (CSIDriver tokenRequests).
type PodTokenSource interface {
	// PodToken returns the latest token the kubelet passed for the pod while
	// it is valid, and "" when the kubelet passed none or the last one has
	// expired: an expired token is never handed out (the CA would refuse
	// it). The next NodePublishVolume (the kubelet republishes every 60-90 s
	// with requiresRepublish: true) brings a fresh one.
	PodToken() string
}

// TokenStatus describes the pod token of a volume, for status and tests.
type TokenStatus struct {
	// Present is false when the kubelet passed no token since the volume
	// was published or the agent started.
	Present bool `json:"present"`
	// Expires is the token's exp (zero when not Present).
	Expires time.Time `json:"expires,omitzero"`
	// Received is when the kubelet last passed a token.
	Received time.Time `json:"received,omitzero"`
	// Waiting, when set, says why renewals go to the CA without a token.
	Waiting string `json:"waiting,omitempty"`
}

// podToken holds the latest ServiceAccount token the kubelet passed for one
// pod, shared by the pod's volumes. It lives in memory only: the volume
// records hold no secret, and after an agent restart the kubelet's next
// republish brings a token again.
type podToken struct {
	clock     rotate.Clock
	log       *slog.Logger
	namespace string
	pod       string

	mu       sync.Mutex
	token    string
	exp      time.Time
	received time.Time
	warned   bool // the expiry of this token was logged
	volumes  int  // volumes using this holder (guarded by Driver.mu)
}

// set stores a token the kubelet passed, replacing the previous one unless
// that one lives longer (a republish never makes the token older).
func (t *podToken) set(token string, exp time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.received = t.clock.Now()
	if token == t.token || (t.token != "" && exp.Before(t.exp)) {
		return
	}
	if t.warned {
		t.log.Info("fresh pod token from kubelet; renewals carry it again", "namespace", t.namespace, "pod", t.pod, "token_expires", exp.UTC())
	}
	t.token, t.exp, t.warned = token, exp, false
}

// PodToken implements PodTokenSource.
func (t *podToken) PodToken() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.token == "" {
		return ""
	}
	if t.clock.Now().Before(t.exp.Add(-TokenExpiryMargin)) {
		return t.token
	}
	if !t.warned {
		t.warned = true
		t.log.Warn(waitingForToken+"; the request goes to the CA without the pod's token until the kubelet republishes the volume (requiresRepublish: true in the CSIDriver)",
			"namespace", t.namespace, "pod", t.pod, "token_expired", t.exp.UTC(), "token_received", t.received.UTC())
	}
	return ""
}

func (t *podToken) status() TokenStatus {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.token == "" {
		return TokenStatus{}
	}
	s := TokenStatus{Present: true, Expires: t.exp, Received: t.received}
	if !t.clock.Now().Before(t.exp.Add(-TokenExpiryMargin)) {
		s.Waiting = waitingForToken + " (the last one expired at " + t.exp.UTC().Format(time.RFC3339) + ")"
	}
	return s
}

// tokenExpiry returns the exp claim of a JWT, read without verifying the
// signature: it only decides when the driver stops passing the token on;
// the CA verifies the token itself. ok is false when token is not a JWT
// with a numeric exp.
func tokenExpiry(token string) (exp time.Time, ok bool) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return time.Time{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}, false
	}
	var claims struct {
		Exp *float64 `json:"exp"` // NumericDate (RFC 7519)
	}
	if err := json.Unmarshal(payload, &claims); err != nil || claims.Exp == nil {
		return time.Time{}, false
	}
	if secs := *claims.Exp; secs > 0 && secs < 1<<40 {
		return time.Unix(int64(secs), 0), true
	}
	return time.Time{}, false
}
