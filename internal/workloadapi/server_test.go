package workloadapi

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/mayfly-pki/mayfly/internal/test/promtest"
	"github.com/mayfly-pki/mayfly/internal/test/testca"
)

func wantStatus(t *testing.T, err error, code codes.Code, msg string) {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != code || (msg != "" && st.Message() != msg) {
		t.Fatalf("got %v, want %v %q", err, code, msg)
	}
}

// firstX509 opens a FetchX509SVID stream and returns its first message or error.
func firstX509(ctx context.Context, c workload.SpiffeWorkloadAPIClient) (*workload.X509SVIDResponse, error) {
	stream, err := c.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err != nil {
		return nil, err
	}
	return stream.Recv()
}

func firstBundles(ctx context.Context, c workload.SpiffeWorkloadAPIClient) (*workload.X509BundlesResponse, error) {
	stream, err := c.FetchX509Bundles(ctx, &workload.X509BundlesRequest{})
	if err != nil {
		return nil, err
	}
	return stream.Recv()
}

// calls are the service's methods, each called once and returning the
// first error (nil for a received message).
var calls = map[string]func(context.Context, workload.SpiffeWorkloadAPIClient) error{
	"FetchX509SVID": func(ctx context.Context, c workload.SpiffeWorkloadAPIClient) error {
		_, err := firstX509(ctx, c)
		return err
	},
	"FetchX509Bundles": func(ctx context.Context, c workload.SpiffeWorkloadAPIClient) error {
		_, err := firstBundles(ctx, c)
		return err
	},
	"FetchJWTSVID": func(ctx context.Context, c workload.SpiffeWorkloadAPIClient) error {
		_, err := c.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"x"}})
		return err
	},
	"ValidateJWTSVID": func(ctx context.Context, c workload.SpiffeWorkloadAPIClient) error {
		_, err := c.ValidateJWTSVID(ctx, &workload.ValidateJWTSVIDRequest{Audience: "x", Svid: "y"})
		return err
	},
	"FetchJWTBundles": func(ctx context.Context, c workload.SpiffeWorkloadAPIClient) error {
		s, err := c.FetchJWTBundles(ctx, &workload.JWTBundlesRequest{})
		if err != nil {
			return err
		}
		_, err = s.Recv()
		return err
	},
	"FetchWITSVID": func(ctx context.Context, c workload.SpiffeWorkloadAPIClient) error {
		s, err := c.FetchWITSVID(ctx, &workload.WITSVIDRequest{})
		if err != nil {
			return err
		}
		_, err = s.Recv()
		return err
	},
}

func TestNew_requires_attestor_and_source(t *testing.T) {
	if _, err := New(Config{Source: newFakeSource()}); err == nil {
		t.Error("New without Attestor: no error")
	}
	if _, err := New(Config{Attestor: &fakeAttestor{}}); err == nil {
		t.Error("New without Source: no error")
	}
}

func TestSecurityHeader(t *testing.T) {
	env := startServer(t, Config{})
	env.source.set("a", issue(t, env.ca, "spiffe://example.org/ns/default/sa/w"))
	c := rawClient(t, env.path)
	for name, call := range calls {
		t.Run(name+"/missing_is_InvalidArgument", func(t *testing.T) {
			err := call(testContext(t), c)
			wantStatus(t, err, codes.InvalidArgument, "security header missing from request")
		})
		t.Run(name+"/false_is_InvalidArgument", func(t *testing.T) {
			ctx := metadata.AppendToOutgoingContext(testContext(t), SecurityHeader, "false")
			wantStatus(t, call(ctx, c), codes.InvalidArgument, "security header missing from request")
		})
		t.Run(name+"/twice_is_InvalidArgument", func(t *testing.T) {
			ctx := metadata.AppendToOutgoingContext(withHeader(testContext(t)), SecurityHeader, "true")
			wantStatus(t, call(ctx, c), codes.InvalidArgument, "security header missing from request")
		})
	}
	if n := env.attestor.calls.Load(); n != 0 {
		t.Errorf("attestor called %d times for requests without header", n)
	}
	t.Run("present_is_served", func(t *testing.T) {
		if _, err := firstX509(withHeader(testContext(t)), c); err != nil {
			t.Fatal(err)
		}
	})
}

func TestUnimplementedMethods(t *testing.T) {
	env := startServer(t, Config{})
	c := rawClient(t, env.path)
	for _, name := range []string{"FetchJWTSVID", "ValidateJWTSVID", "FetchJWTBundles"} {
		t.Run(name+"/JWT_is_Unimplemented", func(t *testing.T) {
			wantStatus(t, calls[name](withHeader(testContext(t)), c), codes.Unimplemented, "JWT-SVIDs are not served by this agent")
		})
	}
	t.Run("FetchWITSVID/is_Unimplemented", func(t *testing.T) {
		wantStatus(t, calls["FetchWITSVID"](withHeader(testContext(t)), c), codes.Unimplemented, "")
	})
}

func TestAttestationFailure_is_PermissionDenied_and_audited(t *testing.T) {
	var logs logBuffer
	env := startServer(t, Config{
		Attestor: &fakeAttestor{err: errors.New("pid 4242: no pod for cgroup")},
		Logger:   logs.logger(),
	})
	c := rawClient(t, env.path)
	for _, name := range []string{"FetchX509SVID", "FetchX509Bundles"} {
		t.Run(name, func(t *testing.T) {
			wantStatus(t, calls[name](withHeader(testContext(t)), c), codes.PermissionDenied, "workload attestation failed")
			if l := logs.String(); !strings.Contains(l, "workload attestation failed") || !strings.Contains(l, "method="+name) || !strings.Contains(l, "pid 4242") {
				t.Errorf("no audit line for %s in %q", name, l)
			}
		})
	}
}

func TestNoIdentity_is_PermissionDenied(t *testing.T) {
	env := startServer(t, Config{})
	c := rawClient(t, env.path)
	for _, name := range []string{"FetchX509SVID", "FetchX509Bundles"} {
		t.Run(name, func(t *testing.T) {
			wantStatus(t, calls[name](withHeader(testContext(t)), c), codes.PermissionDenied, "no identity issued")
		})
	}
}

func TestSourceErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		code codes.Code
	}{
		{"plain_error_is_Unavailable", errors.New("issuer unreachable"), codes.Unavailable},
		{"status_error_is_passed_through", status.Error(codes.ResourceExhausted, "too many"), codes.ResourceExhausted},
		{"deadline_is_DeadlineExceeded", context.DeadlineExceeded, codes.DeadlineExceeded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs logBuffer
			env := startServer(t, Config{Logger: logs.logger()})
			env.source.setErr(tc.err)
			_, err := firstX509(withHeader(testContext(t)), rawClient(t, env.path))
			wantStatus(t, err, tc.code, "")
			if tc.code == codes.Unavailable && strings.Contains(err.Error(), "issuer unreachable") {
				t.Errorf("internal error leaked to the client: %v", err)
			}
		})
	}
}

func TestFetchX509SVID_response(t *testing.T) {
	env := startServer(t, Config{})
	other := testca.New(t, testca.WithTrustDomain("other.org"))
	env.source.setBundle(other.TrustDomain, other.Bundle())
	a := issue(t, env.ca, "spiffe://example.org/ns/a/sa/a")
	a.Hint = "internal"
	b := issue(t, env.ca, "spiffe://example.org/ns/a/sa/b")
	env.source.set("a", a, b)

	resp, err := firstX509(withHeader(testContext(t)), rawClient(t, env.path))
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Svids) != 2 {
		t.Fatalf("got %d SVIDs, want 2", len(resp.Svids))
	}
	for i, want := range []Identity{a, b} {
		got := resp.Svids[i]
		if got.SpiffeId != want.ID.String() || got.Hint != want.Hint {
			t.Errorf("svid %d: id %q hint %q, want %q %q", i, got.SpiffeId, got.Hint, want.ID, want.Hint)
		}
		if !bytes.Equal(got.X509Svid, concatDER(want.Chain)) {
			t.Errorf("svid %d: chain is not the DER chain leaf first", i)
		}
		if !bytes.Equal(got.Bundle, env.ca.Root.Raw) {
			t.Errorf("svid %d: bundle is not the root", i)
		}
		key, err := x509.ParsePKCS8PrivateKey(got.X509SvidKey)
		if err != nil {
			t.Fatalf("svid %d: key: %v", i, err)
		}
		if !want.Chain[0].PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(key.(crypto.Signer).Public()) {
			t.Errorf("svid %d: key does not match the leaf", i)
		}
	}
	if fed := resp.FederatedBundles; len(fed) != 1 || !bytes.Equal(fed["spiffe://other.org"], other.Root.Raw) {
		t.Errorf("federated bundles = %v keys, want spiffe://other.org only", len(fed))
	}
}

func TestFetchX509SVID_stream(t *testing.T) {
	env := startServer(t, Config{})
	first := issue(t, env.ca, "spiffe://example.org/ns/default/sa/w")
	env.source.set("a", first)
	ctx, cancel := context.WithCancel(withHeader(testContext(t)))
	defer cancel()
	stream, err := rawClient(t, env.path).FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	recvLeaf := func() *x509.Certificate {
		t.Helper()
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("Recv: %v", err)
		}
		certs, err := x509.ParseCertificates(resp.Svids[0].X509Svid)
		if err != nil {
			t.Fatal(err)
		}
		return certs[0]
	}
	if got := recvLeaf(); !got.Equal(first.Chain[0]) {
		t.Fatalf("first response is not the current SVID")
	}

	t.Run("unchanged_content_is_not_resent", func(t *testing.T) {
		// Same content under new snapshots, then a rotation: if the first
		// signal had produced a message, Recv would return the old leaf.
		same := first
		same.Chain = append([]*x509.Certificate(nil), first.Chain...)
		env.source.set("a", same)
		env.source.notify()
		rotated := issue(t, env.ca, "spiffe://example.org/ns/default/sa/w")
		env.source.set("a", rotated)
		env.source.notify()
		if got := recvLeaf(); !got.Equal(rotated.Chain[0]) {
			t.Fatalf("got serial %s, want the rotated %s", got.SerialNumber, rotated.Chain[0].SerialNumber)
		}
	})
	t.Run("bundle_change_is_pushed", func(t *testing.T) {
		other := testca.New(t, testca.WithTrustDomain("other.org"))
		env.source.setBundle(other.TrustDomain, other.Bundle())
		env.source.notify()
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := resp.FederatedBundles["spiffe://other.org"]; !ok {
			t.Fatal("bundle change not pushed")
		}
	})
	t.Run("identity_removed_ends_stream_with_PermissionDenied", func(t *testing.T) {
		env.source.set("a")
		env.source.notify()
		_, err := stream.Recv()
		wantStatus(t, err, codes.PermissionDenied, "no identity issued")
	})
}

func TestFetchX509SVID_stream_unsubscribes_when_client_leaves(t *testing.T) {
	env := startServer(t, Config{})
	env.source.set("a", issue(t, env.ca, "spiffe://example.org/ns/default/sa/w"))
	ctx, cancel := context.WithCancel(withHeader(testContext(t)))
	if _, err := firstX509(ctx, rawClient(t, env.path)); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case <-env.source.cancelled:
	case <-testContext(t).Done():
		t.Fatal("stream still subscribed after the client left")
	}
}

func TestFetchX509Bundles_stream(t *testing.T) {
	env := startServer(t, Config{})
	env.source.set("a", issue(t, env.ca, "spiffe://example.org/ns/default/sa/w"))
	ctx, cancel := context.WithCancel(withHeader(testContext(t)))
	defer cancel()
	stream, err := rawClient(t, env.path).FetchX509Bundles(ctx, &workload.X509BundlesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Bundles) != 1 || !bytes.Equal(resp.Bundles["spiffe://example.org"], env.ca.Root.Raw) {
		t.Fatalf("bundles = %d entries, want the example.org root", len(resp.Bundles))
	}
	// An identity rotation does not change bundles: nothing is sent, and
	// the next message is the bundle change.
	env.source.set("a", issue(t, env.ca, "spiffe://example.org/ns/default/sa/w"))
	env.source.notify()
	other := testca.New(t, testca.WithTrustDomain("other.org"))
	env.source.setBundle(other.TrustDomain, other.Bundle())
	env.source.notify()
	resp, err = stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Bundles) != 2 || !bytes.Equal(resp.Bundles["spiffe://other.org"], other.Root.Raw) {
		t.Fatalf("bundles = %d entries, want example.org and other.org", len(resp.Bundles))
	}
}

func TestMetrics(t *testing.T) {
	env := startServer(t, Config{})
	c := rawClient(t, env.path)
	ctx := testContext(t)
	_ = calls["FetchX509SVID"](ctx, c)             // no header
	_ = calls["FetchX509SVID"](withHeader(ctx), c) // no identity
	_ = calls["FetchJWTSVID"](withHeader(ctx), c)
	// Errors are counted before the status reaches the client.
	for _, tc := range []struct {
		method, code string
		want         float64
	}{
		{"FetchX509SVID", "InvalidArgument", 1},
		{"FetchX509SVID", "PermissionDenied", 1},
		{"FetchJWTSVID", "Unimplemented", 1},
	} {
		if got := counterValue(t, env, tc.method, tc.code); got != tc.want {
			t.Errorf("requests_total{method=%q,code=%q} = %v, want %v", tc.method, tc.code, got, tc.want)
		}
	}
	mfs, err := env.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var attestations uint64
	for _, mf := range mfs {
		if mf.GetName() == "mayfly_agent_attestation_duration_seconds" {
			attestations = mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	if attestations != 1 {
		t.Errorf("attestation histogram count = %d, want 1", attestations)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil || len(problems) > 0 {
		t.Errorf("promlint: %v %v", problems, err)
	}
}

func counterValue(t *testing.T, env *testEnv, method, code string) float64 {
	t.Helper()
	v, _ := promtest.Value(t, env.reg, "mayfly_agent_workload_api_requests_total", "method="+method, "code="+code)
	return v
}

func TestResponseCache(t *testing.T) {
	ca := testca.New(t)
	now := time.Now()
	c := newResponseCache(func() time.Time { return now })
	id := issue(t, ca, "spiffe://example.org/ns/default/sa/w")
	bundles := map[spiffeid.TrustDomain][]*x509.Certificate{ca.TrustDomain: ca.Bundle()}

	t.Run("same_snapshot_is_built_once", func(t *testing.T) {
		r1, err := c.get([]Identity{id}, bundles)
		if err != nil {
			t.Fatal(err)
		}
		r2, err := c.get([]Identity{id}, bundles)
		if err != nil {
			t.Fatal(err)
		}
		if r1 != r2 {
			t.Error("unchanged identity set was built twice")
		}
	})
	t.Run("rotation_builds_a_new_response", func(t *testing.T) {
		r1, _ := c.get([]Identity{id}, bundles)
		r2, err := c.get([]Identity{issue(t, ca, "spiffe://example.org/ns/default/sa/w")}, bundles)
		if err != nil {
			t.Fatal(err)
		}
		if r2 == r1 || r2.sameContent(r1) {
			t.Error("rotated identity served from the old response")
		}
	})
	t.Run("new_bundle_builds_a_new_response", func(t *testing.T) {
		r1, _ := c.get([]Identity{id}, bundles)
		other := testca.New(t, testca.WithTrustDomain("other.org"))
		b2 := map[spiffeid.TrustDomain][]*x509.Certificate{ca.TrustDomain: ca.Bundle(), other.TrustDomain: other.Bundle()}
		r2, err := c.get([]Identity{id}, b2)
		if err != nil {
			t.Fatal(err)
		}
		if r2.sameContent(r1) {
			t.Error("bundle change not seen")
		}
	})
	t.Run("key_not_matching_leaf_is_refused", func(t *testing.T) {
		bad := issue(t, ca, "spiffe://example.org/ns/default/sa/w")
		bad.Key = issue(t, ca, "spiffe://example.org/ns/default/sa/w").Key
		if _, err := c.get([]Identity{bad}, bundles); err == nil {
			t.Error("no error")
		}
	})
	t.Run("missing_bundle_is_refused", func(t *testing.T) {
		if _, err := c.get([]Identity{issue(t, ca, "spiffe://example.org/ns/default/sa/w")}, nil); err == nil {
			t.Error("no error")
		}
	})
	t.Run("expired_entries_are_swept", func(t *testing.T) {
		for range minSweepSize {
			if _, err := c.get([]Identity{issue(t, ca, "spiffe://example.org/ns/default/sa/w")}, bundles); err != nil {
				t.Fatal(err)
			}
		}
		now = now.Add(2 * time.Hour)
		if _, err := c.get([]Identity{issue(t, ca, "spiffe://example.org/ns/default/sa/w")}, bundles); err != nil {
			t.Fatal(err)
		}
		// Entries at or above minSweepSize trigger a sweep on insertion.
		for c.size.Load() < c.sweepAt.Load()-1 {
			if _, err := c.get([]Identity{issue(t, ca, "spiffe://example.org/ns/default/sa/w")}, bundles); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := c.get([]Identity{issue(t, ca, "spiffe://example.org/ns/default/sa/w")}, bundles); err != nil {
			t.Fatal(err)
		}
		n := 0
		c.entries.Range(func(_, _ any) bool { n++; return true })
		if int64(n) != c.size.Load() || n > minSweepSize {
			t.Errorf("after sweep: %d entries, size %d", n, c.size.Load())
		}
	})
}

func TestFetchX509SVID_concurrent_streams_share_the_encoded_response(t *testing.T) {
	env := startServer(t, Config{})
	id := issue(t, env.ca, "spiffe://example.org/ns/default/sa/w")
	env.source.set("a", id)
	want, err := buildX509Response([]Identity{id}, map[spiffeid.TrustDomain][]*x509.Certificate{env.ca.TrustDomain: env.ca.Bundle()})
	if err != nil {
		t.Fatal(err)
	}
	c := rawClient(t, env.path)
	errs := make(chan error, 16)
	for range 16 {
		go func() {
			resp, err := firstX509(withHeader(testContext(t)), c)
			if err == nil && !proto.Equal(resp, want.msg) {
				err = errors.New("received response differs from the built one")
			}
			if err == nil && len(resp.ProtoReflect().GetUnknown()) != 0 {
				err = errors.New("received response has unknown fields")
			}
			errs <- err
		}()
	}
	for range 16 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}
