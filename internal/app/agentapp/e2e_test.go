package agentapp_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/mayfly-pki/mayfly/internal/app/agentapp"
	"github.com/mayfly-pki/mayfly/internal/app/caapp"
	"github.com/mayfly-pki/mayfly/internal/hostnodes"
	"github.com/mayfly-pki/mayfly/internal/test/handshake"
	"github.com/mayfly-pki/mayfly/internal/test/logbuf"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

var (
	serverID = spiffeid.RequireFromString("spiffe://example.org/e2e/server")
	clientID = spiffeid.RequireFromString("spiffe://example.org/e2e/client")
)

// stack is a standalone CA and one agent, run in this process.
type stack struct {
	stateDir string // the CA's state directory
	socket   string
	writeDir string
	caLogs   *logbuf.Buffer
	agLogs   *logbuf.Buffer
	// stopCA stops the CA; startCA starts it again on the same address and
	// state directory.
	stopCA  func()
	startCA func()
}

func startStack(t *testing.T, ttl string) *stack {
	t.Helper()
	return startStackWith(t, ttl, `healthAddress: "off"`)
}

// startStackWith is startStack with agentYAML in the agent's configuration
// in place of healthAddress: "off".
func startStackWith(t *testing.T, ttl, agentYAML string) *stack {
	t.Helper()
	return startStackCA(t, ttl, agentYAML, "")
}

// startStackCA is startStackWith with caYAML added to the CA's
// configuration.
func startStackCA(t *testing.T, ttl, agentYAML, caYAML string) *stack {
	t.Helper()
	return startStackClock(t, ttl, agentYAML, caYAML, nil)
}

// startStackClock is startStackCA with the agent on clock (nil: the real
// one); the CA keeps the real clock.
func startStackClock(t *testing.T, ttl, agentYAML, caYAML string, clock rotate.Clock) *stack {
	t.Helper()
	return startStackClocks(t, ttl, agentYAML, caYAML, clock, nil)
}

// startStackClocks is startStackClock with the CA on caClock (nil: the
// real one).
func startStackClocks(t *testing.T, ttl, agentYAML, caYAML string, clock, caClock rotate.Clock) *stack {
	t.Helper()
	dir := t.TempDir()
	stateDir := filepath.Join(dir, "ca")
	caCfg, err := caapp.Parse([]byte(fmt.Sprintf(`
trustDomain: example.org
directory: %s
healthAddress: "off"
workloads: {minTTL: 10s, defaultTTL: 1m, maxTTL: 1h}
nodes:
  - name: host-a
    allowedIDs: ["spiffe://example.org/e2e/*"]
%s
`, stateDir, caYAML)))
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &stack{stateDir: stateDir, caLogs: &logbuf.Buffer{}, agLogs: &logbuf.Buffer{}}
	var wg sync.WaitGroup
	caAddr := lis.Addr().String()
	var caMu sync.Mutex
	var caCancel context.CancelFunc
	var caDone chan struct{}
	s.startCA = func() {
		caMu.Lock()
		defer caMu.Unlock()
		if lis == nil {
			var err error
			if lis, err = net.Listen("tcp", caAddr); err != nil {
				t.Fatalf("CA listen again on %s: %v", caAddr, err)
			}
		}
		cctx, ccancel := context.WithCancel(ctx)
		caCancel, caDone = ccancel, make(chan struct{})
		ready, done, l := make(chan struct{}), caDone, lis
		lis = nil
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(done)
			if err := caapp.Run(cctx, caCfg, caapp.Options{Listener: l, Clock: caClock, Logger: slog.New(slog.NewJSONHandler(s.caLogs, nil)), Ready: func(string) { close(ready) }}); err != nil {
				t.Errorf("CA: %v", err)
			}
		}()
		<-ready
	}
	s.stopCA = func() {
		caMu.Lock()
		defer caMu.Unlock()
		caCancel()
		<-caDone
	}
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		if t.Failed() {
			t.Logf("CA logs:\n%s\nagent logs:\n%s", s.caLogs, s.agLogs)
		}
	})
	s.startCA()

	token, err := hostnodes.NewJoinTokens(stateDir, nil).Create("host-a", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	uid := os.Getuid()
	regs := filepath.Join(dir, "registrations.yaml")
	if err := os.WriteFile(regs, []byte(fmt.Sprintf(`
registrations:
  - spiffeID: %s
    selectors: {uid: %d}
    ttl: %s
  - spiffeID: %s
    selectors: {uid: %d}
    ttl: %s
`, serverID, uid, ttl, clientID, uid, ttl)), 0o600); err != nil {
		t.Fatal(err)
	}
	s.socket = filepath.Join(dir, "run", "agent.sock")
	s.writeDir = filepath.Join(dir, "out")
	agCfg, err := agentapp.Parse([]byte(fmt.Sprintf(`
trustDomain: example.org
server: {address: %s, trustBundleFile: %s}
nodeName: host-a
socketPath: %s
dataDir: %s
writeDir: %s
standalone: {registrationsFile: %s}
%s
`, caAddr, filepath.Join(stateDir, caapp.TrustBundleFile), s.socket, filepath.Join(dir, "agent"), s.writeDir, regs, agentYAML)))
	if err != nil {
		t.Fatal(err)
	}
	agCfg.JoinToken = token
	agReady := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := agentapp.Run(ctx, agCfg, agentapp.Options{Clock: clock, Logger: slog.New(slog.NewJSONHandler(s.agLogs, nil)), Ready: func(string) { close(agReady) }}); err != nil {
			t.Errorf("agent: %v", err)
		}
	}()
	<-agReady
	return s
}

func pick(id spiffeid.ID) workloadapi.X509SourceOption {
	return workloadapi.WithDefaultX509SVIDPicker(func(svids []*x509svid.SVID) *x509svid.SVID {
		for _, s := range svids {
			if s.ID == id {
				return s
			}
		}
		return svids[0]
	})
}

// TestEndToEndMTLSThroughRotations: a go-spiffe server and client, each
// with its own X509Source on the agent's socket, talk mTLS while their
// certificates rotate several times; no handshake may fail.
func TestEndToEndMTLSThroughRotations(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test with real rotations (about 40s); skipped with -short")
	}
	s := startStack(t, "20s")
	m := startMTLS(t, s)

	// A request every 200ms until the server has had 4 certificates.
	serials := map[string]bool{}
	c := handshake.Until(t, "3 rotations of the server certificate", 90*time.Second, 200*time.Millisecond, []handshake.Pair{{Name: "go-spiffe pair", Handshake: m.handshake}}, func(int) (bool, string) {
		if svid, err := m.serverSrc.GetX509SVID(); err == nil {
			serials[svid.Certificates[0].SerialNumber.String()] = true
		}
		return len(serials) >= 4, fmt.Sprintf("%d server certificates seen", len(serials))
	})
	if c.Failed != 0 {
		t.Fatalf("%d of %d handshakes failed", c.Failed, c.Rounds)
	}
	t.Logf("%d requests, 0 failures, %d server certificates", c.Rounds, len(serials))

	// The write-dir sink holds a matching pair for each registration.
	for _, sub := range []string{"e2e/server", "e2e/client"} {
		if _, err := os.Stat(filepath.Join(s.writeDir, sub, "tls.crt")); err != nil {
			t.Errorf("writeDir/%s: %v", sub, err)
		}
	}
}

// TestEndToEndCAOutage: while the CA is down the agent keeps serving the
// certificates it holds (handshakes keep working) and retries with bounded
// backoff; when the CA is back, rotation resumes before anything expired.
func TestEndToEndCAOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test with a real CA outage (about 30s); skipped with -short")
	}
	s := startStack(t, "30s")
	m := startMTLS(t, s)
	handshake, serverSrc := m.handshake, m.serverSrc
	first, err := serverSrc.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	firstSerial := first.Certificates[0].SerialNumber.String()
	notAfter := first.Certificates[0].NotAfter

	s.stopCA()
	before := len(s.agLogs.String())
	// Past the server certificate's renewal point (about half of 30s) with
	// the CA down, until its rotation has failed twice (the agent is in its
	// retry backoff); every handshake keeps working meanwhile.
	wait.Within(t, "two failed rotations of the server certificate while the CA is down", 25*time.Second, 250*time.Millisecond, func() bool {
		if err := handshake(); err != nil {
			t.Fatalf("handshake failed during the CA outage: %v", err)
		}
		failed := 0
		for _, line := range strings.Split(s.agLogs.String()[before:], "\n") {
			if strings.Contains(line, "SVID rotation failed; keeping the current one") && strings.Contains(line, serverID.String()) {
				failed++
			}
		}
		return failed >= 2
	})
	cur, _ := serverSrc.GetX509SVID()
	if cur.Certificates[0].SerialNumber.String() != firstSerial {
		t.Fatal("the certificate changed while the CA was down")
	}

	restarted := time.Now()
	s.startCA()
	wait.Within(t, "a new certificate before the old one expired", time.Until(notAfter), 100*time.Millisecond, func() bool {
		if cur, _ := serverSrc.GetX509SVID(); cur.Certificates[0].SerialNumber.String() != firstSerial {
			return true
		}
		if err := handshake(); err != nil {
			t.Fatalf("handshake failed after the CA came back: %v", err)
		}
		return false
	})
	t.Logf("recovered %s after the CA came back (%s before the old certificate's expiry)",
		time.Since(restarted).Round(10*time.Millisecond), time.Until(notAfter).Round(time.Second))
	if err := handshake(); err != nil {
		t.Fatalf("handshake with the renewed certificate: %v", err)
	}
}

// mtls is a go-spiffe server and client, each with its own X509Source on
// the agent's socket, serving HTTPS with mutual authorization by ID.
type mtls struct {
	serverSrc, clientSrc *workloadapi.X509Source
	// handshake makes one request on a new connection: a full handshake.
	handshake func() error
}

func startMTLS(t *testing.T, s *stack) *mtls {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	addr := workloadapi.WithClientOptions(workloadapi.WithAddr("unix://" + s.socket))
	serverSrc, err := workloadapi.NewX509Source(ctx, addr, pick(serverID))
	if err != nil {
		t.Fatalf("server X509Source: %v\nagent logs:\n%s", err, s.agLogs)
	}
	t.Cleanup(func() { serverSrc.Close() })
	clientSrc, err := workloadapi.NewX509Source(ctx, addr, pick(clientID))
	if err != nil {
		t.Fatalf("client X509Source: %v", err)
	}
	t.Cleanup(func() { clientSrc.Close() })
	// The first Workload API answer may hold one of the two SVIDs alone
	// (an identity whose first attempt failed, e.g. before the agent had
	// its own SVID, is retried after backoff while the other is served),
	// and pick falls back to the first SVID: wait until each source holds
	// its own.
	for id, src := range map[spiffeid.ID]*workloadapi.X509Source{serverID: serverSrc, clientID: clientSrc} {
		wait.Within(t, "the source's own SVID "+id.String(), 30*time.Second, 10*time.Millisecond, func() bool {
			cur, err := src.GetX509SVID()
			return err == nil && cur.ID == id
		})
	}
	return &mtls{serverSrc: serverSrc, clientSrc: clientSrc, handshake: serveMTLS(t, serverSrc, tlsconfig.AuthorizeID(clientID), clientSrc)}
}

// serveMTLS serves "ok" over mTLS with server's SVID, to the clients
// authorize accepts, until the test ends. It returns a handshake: one
// request on a new connection with client's SVID, to a server that must
// be serverID.
func serveMTLS(t *testing.T, server *workloadapi.X509Source, authorize tlsconfig.Authorizer, client *workloadapi.X509Source) func() error {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }),
		TLSConfig:         tlsconfig.MTLSServerConfig(server, server, authorize),
		ReadHeaderTimeout: 5 * time.Second,
	}
	go func() { _ = srv.ServeTLS(lis, "", "") }()
	t.Cleanup(func() { srv.Close() })
	return func() error {
		tr := &http.Transport{TLSClientConfig: tlsconfig.MTLSClientConfig(client, client, tlsconfig.AuthorizeID(serverID)), DisableKeepAlives: true}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("https://" + lis.Addr().String())
		if err != nil {
			return err
		}
		return resp.Body.Close()
	}
}
