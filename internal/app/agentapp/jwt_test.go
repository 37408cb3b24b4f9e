package agentapp_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mayfly-pki/mayfly/internal/test/wait"
)

// TestEndToEndJWTSVID: go-spiffe's JWTSource and jwtsvid.ParseAndValidate,
// unchanged, against the agent's socket with a real CA behind it.
func TestEndToEndJWTSVID(t *testing.T) {
	s := startStack(t, "1m")
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	addr := workloadapi.WithClientOptions(workloadapi.WithAddr("unix://" + s.socket))
	src, err := workloadapi.NewJWTSource(ctx, addr)
	if err != nil {
		t.Fatalf("NewJWTSource: %v", err)
	}
	defer src.Close()
	// The agent holds the CA's JWT keys once its bundle stream delivered
	// them; the source gets them pushed.
	wait.Within(t, "the JWT bundle holds a key", 90*time.Second, 50*time.Millisecond, func() bool {
		b, err := src.GetJWTBundleForTrustDomain(serverID.TrustDomain())
		return err == nil && len(b.JWTAuthorities()) > 0
	})

	svid, err := src.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "api", ExtraAudiences: []string{"vault"}, Subject: serverID})
	if err != nil {
		t.Fatalf("FetchJWTSVID: %v", err)
	}
	if svid.ID != serverID {
		t.Fatalf("JWT-SVID for %s, want %s", svid.ID, serverID)
	}
	got, err := jwtsvid.ParseAndValidate(svid.Marshal(), src, []string{"vault"})
	if err != nil {
		t.Fatalf("go-spiffe ParseAndValidate: %v", err)
	}
	if life := got.Expiry.Sub(time.Now()); life > 5*time.Minute || life < 3*time.Minute {
		t.Errorf("token lives %s more, want about the 5m default", life)
	}

	// The cache answers the same (identity, audience set) with the same
	// token until its half-life, whatever the audience order.
	again, err := src.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "vault", ExtraAudiences: []string{"api"}, Subject: serverID})
	if err != nil || again.Marshal() != svid.Marshal() {
		t.Errorf("second fetch: %v, same token %v", err, err == nil && again.Marshal() == svid.Marshal())
	}

	client, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+s.socket))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	v, err := client.ValidateJWTSVID(ctx, svid.Marshal(), "api")
	if err != nil || v.ID != serverID {
		t.Fatalf("ValidateJWTSVID: %v (%v)", err, v)
	}
	for _, tc := range []struct {
		name, token, audience, want string
	}{
		{"wrong audience", svid.Marshal(), "other", `aud does not contain "other"`},
		{"malformed", "a.b", "api", "segments"},
		{"signature tampered", svid.Marshal()[:len(svid.Marshal())-4] + "AAAA", "api", "signature does not verify"},
	} {
		_, err := client.ValidateJWTSVID(ctx, tc.token, tc.audience)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want InvalidArgument naming %q", tc.name, err, tc.want)
		}
	}
	// An audience is required.
	if _, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Subject: serverID}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("FetchJWTSVID without audience: %v, want InvalidArgument", err)
	}
	// Both identities of the caller, one token each.
	all, err := client.FetchJWTSVIDs(ctx, jwtsvid.Params{Audience: "api"})
	if err != nil || len(all) != 2 {
		t.Fatalf("FetchJWTSVIDs: %d SVIDs, %v; want 2", len(all), err)
	}
}
