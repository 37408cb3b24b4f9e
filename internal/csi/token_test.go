package csi

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/mayfly-pki/mayfly/internal/test/logbuf"
)

// newLoggedEnv is newEnv with the driver's log captured.
func newLoggedEnv(t *testing.T) (*testEnv, *logbuf.Buffer) {
	t.Helper()
	e := newEnv(t)
	logs := &logbuf.Buffer{}
	d, err := New(Config{
		NodeName: "node-1", StateDir: e.stateDir, SocketDir: e.sockDir, KubeletDir: e.kubelet, Clock: e.clock,
		Identities: e.ids, Mounter: e.mounter, Logger: slog.New(slog.NewTextHandler(logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	e.d = d
	return e, logs
}

func volumeStatus(t *testing.T, d *Driver, id string) VolumeStatus {
	t.Helper()
	for _, s := range d.Status() {
		if s.VolumeID == id {
			return s
		}
	}
	t.Fatalf("volume %s not in the driver's status", id)
	return VolumeStatus{}
}

// TestRepublishRefreshesTheToken drives a volume past the expiry of the
// token of its first publish: the kubelet republished it meanwhile (as it
// does every 60-90 s with requiresRepublish: true) with a fresh token, so
// renewals keep going to the CA with a valid token, the new one.
func TestRepublishRefreshesTheToken(t *testing.T) {
	e, logs := newLoggedEnv(t)
	e.ids.push(t, e.creds.issue())
	target := e.target("certs")
	start := e.clock.Now()
	first := fakeJWT(start.Add(time.Hour), "first")
	mustPublish(t, e.d, publishRequest(volID, target, podContext(map[string]string{ctxTokens: tokenContext(first)})))
	if got := e.ids.renew(t); len(got) != 1 || got[0] != first {
		t.Fatalf("renewal sends %q, want the first token", got)
	}

	// The kubelet republishes every minute or so; its token manager gets a
	// new token at 80% of the old one's life (48 min of 60).
	var second string
	for i := 1; i <= 100; i++ {
		e.clock.Advance(time.Minute)
		tok := first
		if e.clock.Now().Sub(start) >= 48*time.Minute {
			if second == "" {
				second = fakeJWT(e.clock.Now().Add(time.Hour), "second")
			}
			tok = second
		}
		mustPublish(t, e.d, publishRequest(volID, target, podContext(map[string]string{ctxTokens: tokenContext(tok)})))
	}
	if !e.clock.Now().After(start.Add(time.Hour)) {
		t.Fatal("the test did not pass the first token's expiry")
	}
	got := e.ids.renew(t)
	if len(got) != 1 || got[0] != second {
		t.Fatalf("renewal after the first token expired sends %q, want the token of the latest republish", got)
	}
	st := volumeStatus(t, e.d, volID).Token
	if !st.Present || !st.Expires.Equal(start.Add(48*time.Minute+time.Hour)) || st.Waiting != "" {
		t.Fatalf("token status %+v, want the second token's expiry and no waiting", st)
	}
	if n := e.ids.trackCalls(); n != 1 {
		t.Fatalf("Track called %d times; a republish must not track again", n)
	}
	if strings.Contains(logs.String(), "waiting for a fresh pod token") {
		t.Fatalf("the driver waited for a token although republishes brought one:\n%s", logs)
	}

	t.Run("an older token does not replace a newer one", func(t *testing.T) {
		mustPublish(t, e.d, publishRequest(volID, target, podContext(map[string]string{ctxTokens: tokenContext(fakeJWT(start.Add(time.Hour), "stale"))})))
		if got := e.ids.renew(t); got[0] != second {
			t.Fatalf("renewal sends %q, want the newest token", got)
		}
	})
	t.Run("a republish without tokens keeps the token", func(t *testing.T) {
		mustPublish(t, e.d, publishRequest(volID, target, podContext(nil)))
		if got := e.ids.renew(t); got[0] != second {
			t.Fatalf("renewal sends %q, want the newest token", got)
		}
	})
}

// TestExpiredTokenIsNotSent: no republish arrived (requiresRepublish off, or
// the kubelet down), so the token of the first publish expires. Renewals do
// not carry it (the CA would refuse an expired token); the volume's status
// and the log say why, and the next republish repairs it.
func TestExpiredTokenIsNotSent(t *testing.T) {
	e, logs := newLoggedEnv(t)
	e.ids.push(t, e.creds.issue())
	target := e.target("certs")
	exp := e.clock.Now().Add(time.Hour)
	token := fakeJWT(exp, "only")
	mustPublish(t, e.d, publishRequest(volID, target, podContext(map[string]string{ctxTokens: tokenContext(token)})))

	e.clock.Set(exp.Add(-TokenExpiryMargin - time.Second))
	if got := e.ids.renew(t); got[0] != token {
		t.Fatalf("renewal before the margin sends %q, want the token", got)
	}
	e.clock.Set(exp.Add(-TokenExpiryMargin))
	if got := e.ids.renew(t); got[0] != "" {
		t.Fatal("renewal within the expiry margin sends the token")
	}
	e.clock.Set(exp.Add(time.Hour))
	for range 3 {
		if got := e.ids.renew(t); got[0] != "" {
			t.Fatal("renewal sends an expired token")
		}
	}
	st := volumeStatus(t, e.d, volID).Token
	if !st.Present || !strings.Contains(st.Waiting, "waiting for a fresh pod token from kubelet") || !strings.Contains(st.Waiting, exp.UTC().Format(time.RFC3339)) {
		t.Fatalf("token status %+v, want it to say the driver waits for a fresh token since %s", st, exp)
	}
	out := logs.String()
	if n := strings.Count(out, "waiting for a fresh pod token from kubelet"); n != 1 {
		t.Fatalf("the wait is logged %d times, want once:\n%s", n, out)
	}
	if strings.Contains(out, token) || strings.Contains(out, "only") {
		t.Fatalf("the log holds the token:\n%s", out)
	}

	fresh := fakeJWT(e.clock.Now().Add(time.Hour), "fresh")
	mustPublish(t, e.d, publishRequest(volID, target, podContext(map[string]string{ctxTokens: tokenContext(fresh)})))
	if got := e.ids.renew(t); got[0] != fresh {
		t.Fatalf("renewal after a republish sends %q, want the fresh token", got)
	}
	if st := volumeStatus(t, e.d, volID).Token; st.Waiting != "" {
		t.Fatalf("still waiting after a fresh token: %+v", st)
	}
}

// TestTokenIsSharedByThePodsVolumes: the token belongs to the pod; when one
// of its volumes goes, the other keeps receiving the kubelet's tokens.
func TestTokenIsSharedByThePodsVolumes(t *testing.T) {
	e := newIssuedEnv(t)
	a, b := e.target("a"), e.target("b")
	first := fakeJWT(e.clock.Now().Add(time.Hour), "first")
	mustPublish(t, e.d, publishRequest("csi-a", a, podContext(map[string]string{ctxTokens: tokenContext(first)})))
	mustPublish(t, e.d, publishRequest("csi-b", b, podContext(map[string]string{ctxTokens: tokenContext(first)})))
	if _, err := e.d.NodeUnpublishVolume(context.Background(), &csipb.NodeUnpublishVolumeRequest{VolumeId: "csi-a", TargetPath: a}); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(50 * time.Minute)
	second := fakeJWT(e.clock.Now().Add(time.Hour), "second")
	mustPublish(t, e.d, publishRequest("csi-b", b, podContext(map[string]string{ctxTokens: tokenContext(second)})))
	e.clock.Advance(30 * time.Minute)
	if got := e.ids.renew(t); len(got) != 1 || got[0] != second {
		t.Fatalf("renewal sends %q, want the token of the remaining volume's republish", got)
	}
}

func TestTokenExpiry(t *testing.T) {
	exp := time.Date(2026, 12, 6, 13, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name  string
		token string
		ok    bool
	}{
		{"kubelet JWT", fakeJWT(exp, "x"), true},
		{"two parts", "a.b", false},
		{"payload not base64", "a.!!!.c", false},
		{"payload not JSON", "a.bm90IGpzb24.c", false},
		{"no exp", "a.eyJzdWIiOiJ4In0.c", false},
		{"exp a string", "a.eyJleHAiOiIxIn0.c", false},
		{"exp negative", "a.eyJleHAiOi0xfQ.c", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := tokenExpiry(tc.token)
			if ok != tc.ok || (ok && !got.Equal(exp)) {
				t.Fatalf("tokenExpiry = %s, %v; want %s, %v", got, ok, exp, tc.ok)
			}
		})
	}
	t.Run("kubelet expirationTimestamp when the token has no exp", func(t *testing.T) {
		tok, got, err := parseToken(`{"mayfly-ca":{"token":"opaque","expirationTimestamp":"2026-12-06T13:00:00Z"}}`, DefaultTokenAudience)
		if err != nil || tok != "opaque" || !got.Equal(exp) {
			t.Fatalf("parseToken = %q, %s, %v", tok, got, err)
		}
	})
}
