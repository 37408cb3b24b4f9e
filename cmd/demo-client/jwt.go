package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/mayfly-pki/mayfly/internal/demo"
)

// jwtDemo fetches a JWT-SVID for audience "demo-server" from the Workload
// API and validates it twice: by the agent (ValidateJWTSVID) and locally
// against the JWT bundle the agent serves (go-spiffe's ParseAndValidate).
// The agent holds the CA's JWT keys once its bundle stream delivered them:
// it tries for up to 30 seconds.
func jwtDemo(ctx context.Context, ids demo.IDs) error {
	c, err := workloadapi.New(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var svid *jwtsvid.SVID
	for {
		if svid, err = c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "demo-server", Subject: ids.Self}); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("FetchJWTSVID: %w", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
	byAgent, err := c.ValidateJWTSVID(ctx, svid.Marshal(), "demo-server")
	if err != nil {
		return fmt.Errorf("ValidateJWTSVID: %w", err)
	}
	bundles, err := c.FetchJWTBundles(ctx)
	if err != nil {
		return fmt.Errorf("FetchJWTBundles: %w", err)
	}
	local, err := jwtsvid.ParseAndValidate(svid.Marshal(), bundles, []string{"demo-server"})
	if err != nil {
		return fmt.Errorf("ParseAndValidate: %w", err)
	}
	b, _ := bundles.GetJWTBundleForTrustDomain(ids.Self.TrustDomain())
	fmt.Printf("%s jwt-svid ok  sub %s aud %v expires in %.0fs | validated by the agent (%s) and by go-spiffe against a JWT bundle of %d keys\n",
		time.Now().Format("15:04:05"), local.ID, local.Audience, time.Until(local.Expiry).Seconds(), byAgent.ID, len(b.JWTAuthorities()))
	// A token for another audience is refused, with the reason.
	_, err = c.ValidateJWTSVID(ctx, svid.Marshal(), "someone-else")
	if err == nil {
		return fmt.Errorf("ValidateJWTSVID accepted a token for another audience")
	}
	fmt.Printf("%s jwt-svid for another audience refused: %v\n", time.Now().Format("15:04:05"), err)
	return nil
}
