//go:build linux

// Package e2e_test runs the built binaries as a user runs them: `ca run`,
// `ca token create`, `agent run`, the status commands, signals and restarts,
// with go-spiffe's client fetching from the agent's socket. The packages'
// own tests run the same code in process; this one catches what only the
// mains, flags, files on disk and process lifecycle can get wrong.
package e2e_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/mayfly-pki/mayfly/internal/test/filemode"
	"github.com/mayfly-pki/mayfly/internal/test/loopback"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
)

// binaries builds cmd/ca and cmd/agent (from the build cache when warm).
func binaries(t *testing.T) (ca, agent string) {
	t.Helper()
	dir := t.TempDir()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to build the binaries: %v", err)
	}
	for _, name := range []string{"ca", "agent"} {
		cmd := exec.Command(goBin, "build", "-o", filepath.Join(dir, name), "github.com/mayfly-pki/mayfly/cmd/"+name)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build cmd/%s: %v\n%s", name, err, out)
		}
	}
	return filepath.Join(dir, "ca"), filepath.Join(dir, "agent")
}

// proc is a started binary whose output goes to a log file.
type proc struct {
	cmd  *exec.Cmd
	log  string
	done chan error
}

func start(t *testing.T, logPath string, env []string, bin string, args ...string) *proc {
	t.Helper()
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", bin, err)
	}
	p := &proc{cmd: cmd, log: logPath, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait(); _ = f.Close() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			out, _ := os.ReadFile(logPath)
			t.Logf("%s log:\n%s", filepath.Base(bin), out)
		}
	})
	return p
}

// stop sends SIGTERM and wants a clean exit within a few seconds.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	select {
	case err := <-p.done:
		p.done <- err // for the cleanup
		if err != nil {
			out, _ := os.ReadFile(p.log)
			t.Fatalf("%s exited with %v after SIGTERM; log:\n%s", p.cmd.Path, err, out)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("%s did not exit within 15s of SIGTERM", p.cmd.Path)
	}
}

// run runs a binary to completion and returns its stdout, stderr and error.
func run(bin string, env []string, args ...string) (string, string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.Env = append(os.Environ(), env...)
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

func writeFile(t *testing.T, path, text string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// fetch gets the caller's SVID from the agent's socket with go-spiffe.
func fetch(socket string) (*x509svid.SVID, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("unix://"+socket))
}

// standaloneHost is the one machine of the standalone tests of the
// binaries: the built binaries, a work directory, free loopback addresses
// for the CA's listener and the two health endpoints, and the uid of this
// process (the registrations' selector).
type standaloneHost struct {
	caBin, agentBin               string
	work                          string
	caAddr, caHealth, agentHealth string
	uid                           int
}

// newStandaloneHost builds the binaries; the test is skipped with -short.
func newStandaloneHost(t *testing.T) *standaloneHost {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	h := &standaloneHost{work: t.TempDir(), uid: os.Getuid()}
	h.caBin, h.agentBin = binaries(t)
	h.caAddr, h.caHealth, h.agentHealth = loopback.FreeAddr(t), loopback.FreeAddr(t), loopback.FreeAddr(t)
	return h
}

// hostA is the node policy of the agent's node: test IDs only.
const hostA = `  - name: host-a
    allowedIDs: ["spiffe://example.org/test/*"]
`

// bundleFile is where the CA writes its trust bundle.
func (h *standaloneHost) bundleFile() string { return filepath.Join(h.work, "ca", "trust-bundle.pem") }

// caConfigText is the CA's configuration, its state under work/ca, with
// the node policies nodes (YAML list items).
func (h *standaloneHost) caConfigText(nodes string) string {
	return fmt.Sprintf(`
apiVersion: mayfly.dev/v1alpha1
kind: CAConfig
trustDomain: example.org
directory: %[1]s/ca
listenAddress: %[2]s
healthAddress: %[3]s
workloads: {minTTL: 1m, defaultTTL: 10m, maxTTL: 1h}
nodes:
%[4]s`, h.work, h.caAddr, h.caHealth, nodes)
}

// agentConfigText is the configuration of host-a's agent serving socket,
// its state under work/agent and its registrations in
// work/registrations.yaml, with the lines of extra added.
func (h *standaloneHost) agentConfigText(socket, extra string) string {
	return fmt.Sprintf(`
apiVersion: mayfly.dev/v1alpha1
kind: AgentConfig
trustDomain: example.org
server: {address: %[2]s, trustBundleFile: %[1]s}
nodeName: host-a
socketPath: %[3]s
dataDir: %[4]s/agent
healthAddress: %[5]s
standalone: {registrationsFile: %[4]s/registrations.yaml}
`, h.bundleFile(), h.caAddr, socket, h.work, h.agentHealth) + extra
}

// startCA runs the CA on config (its log in work/ca.log) and waits for
// its trust bundle.
func (h *standaloneHost) startCA(t *testing.T, config string) *proc {
	t.Helper()
	ca := start(t, filepath.Join(h.work, "ca.log"), nil, h.caBin, "run", "--config", config)
	wait.Within(t, "the CA's trust bundle", 30*time.Second, 50*time.Millisecond, func() bool {
		fi, err := os.Stat(h.bundleFile())
		return err == nil && fi.Size() > 0
	})
	return ca
}

// startAgent creates a join token for host-a (ca token create with
// tokenArgs added), runs the agent on agentConfig with it (its log in
// work/agent.log) and waits until socket serves an SVID, which it returns.
func (h *standaloneHost) startAgent(t *testing.T, caConfig, agentConfig, socket string, tokenArgs ...string) (*proc, *x509svid.SVID) {
	t.Helper()
	token, stderr, err := run(h.caBin, nil, append([]string{"token", "create", "--config", caConfig, "--node", "host-a"}, tokenArgs...)...)
	if err != nil {
		t.Fatalf("ca token create: %v\n%s", err, stderr)
	}
	agent := start(t, filepath.Join(h.work, "agent.log"), []string{"MAYFLY_JOIN_TOKEN=" + strings.TrimSpace(token)}, h.agentBin, "run", "--config", agentConfig)
	var svid *x509svid.SVID
	wait.Within(t, "an SVID from the agent's socket", 30*time.Second, 50*time.Millisecond, func() bool {
		svid, err = fetch(socket)
		return err == nil
	})
	return agent, svid
}

func TestBinariesStandalone(t *testing.T) {
	h := newStandaloneHost(t)
	wantID := spiffeid.RequireFromString(fmt.Sprintf("spiffe://example.org/test/user-%d", h.uid))

	caConfig := writeFile(t, filepath.Join(h.work, "ca.yaml"), h.caConfigText(hostA))
	writeFile(t, filepath.Join(h.work, "registrations.yaml"), fmt.Sprintf(`
registrations:
  - spiffeID: %s
    selectors: {uid: %d}
  - spiffeID: spiffe://example.org/elsewhere/not-granted
    selectors: {uid: %d}
`, wantID, h.uid, h.uid))
	socket := filepath.Join(h.work, "run", "agent.sock")
	agentConfig := writeFile(t, filepath.Join(h.work, "agent.yaml"), h.agentConfigText(socket, "writeDir: "+filepath.Join(h.work, "certs")+"\n"))

	// Bad input fails at once, naming what is wrong, and serves nothing.
	if _, stderr, err := run(h.caBin, nil, "run", "--config", filepath.Join(h.work, "missing.yaml")); err == nil || !strings.Contains(stderr, "missing.yaml") {
		t.Errorf("ca run with a missing config: err %v, stderr %q; want a failure naming the file", err, stderr)
	}
	badAgent := writeFile(t, filepath.Join(h.work, "bad-agent.yaml"), "trustDomain: example.org\nsocketPth: /tmp/x.sock\n")
	if _, stderr, err := run(h.agentBin, nil, "run", "--config", badAgent); err == nil || !strings.Contains(stderr, "socketPth") {
		t.Errorf("agent run with a misspelt field: err %v, stderr %q; want a failure naming the field", err, stderr)
	}

	ca := h.startCA(t, caConfig)
	filemode.Want(t, filepath.Join(h.work, "ca"), os.ModeDir|0o700)
	filemode.Want(t, filepath.Join(h.work, "ca", "authority.json"), 0o600)

	agent, svid := h.startAgent(t, caConfig, agentConfig, socket, "--ttl", "5m")
	if svid.ID != wantID {
		t.Fatalf("SVID ID = %s, want %s", svid.ID, wantID)
	}
	verifySVID(t, svid, h.bundleFile())
	filemode.Want(t, socket, os.ModeSocket|0o666)
	filemode.Want(t, filepath.Dir(socket), os.ModeDir|0o755)
	filemode.Want(t, filepath.Join(h.work, "agent"), os.ModeDir|0o700)
	filemode.Want(t, filepath.Join(h.work, "agent", "agent-key.pem"), 0o600)
	keyFile := filepath.Join(h.work, "certs", "test", fmt.Sprintf("user-%d", h.uid), "tls.key") // writeDir/<ID path>
	wait.Within(t, "the writeDir key file", 10*time.Second, 20*time.Millisecond, func() bool {
		_, err := os.Stat(keyFile)
		return err == nil
	})
	filemode.Want(t, keyFile, 0o600)

	// The registration outside the node's grant is reported, not served.
	wait.Within(t, "the refused registration in the agent log", 10*time.Second, 50*time.Millisecond, func() bool {
		out, _ := os.ReadFile(filepath.Join(h.work, "agent.log"))
		return bytes.Contains(out, []byte("spiffe://example.org/elsewhere/not-granted"))
	})
	if ids := svidIDs(t, socket); len(ids) != 1 {
		t.Fatalf("the agent serves %v, want only %s", ids, wantID)
	}

	// The status is on a unix socket in each state directory, not on the
	// TCP health port.
	for _, c := range []struct{ bin, socket, health, want string }{
		{h.agentBin, filepath.Join(h.work, "agent", "status.sock"), h.agentHealth, wantID.String()},
		{h.caBin, filepath.Join(h.work, "ca", "status.sock"), h.caHealth, "example.org"},
	} {
		out, stderr, err := run(c.bin, nil, "status", "--socket", c.socket)
		if err != nil || !strings.Contains(out, c.want) {
			t.Errorf("%s status: err %v, output %q %q; want it to mention %s", filepath.Base(c.bin), err, out, stderr, c.want)
		}
		filemode.Want(t, c.socket, os.ModeSocket|0o600)
		resp, err := http.Get("http://" + c.health + "/status") //nolint:noctx // a local test server
		if err != nil {
			t.Fatalf("GET %s/status: %v", c.health, err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("%s serves /status on its TCP health port (%s)", filepath.Base(c.bin), resp.Status)
		}
	}

	// Restart: the agent comes back without a token (its SVID was saved)
	// and serves again.
	agent.stop(t)
	began := time.Now()
	start(t, filepath.Join(h.work, "agent2.log"), nil, h.agentBin, "run", "--config", agentConfig)
	wait.Within(t, "an SVID after the agent's restart", 30*time.Second, 10*time.Millisecond, func() bool {
		var err error
		svid, err = fetch(socket)
		return err == nil
	})
	t.Logf("agent restart (process start to first SVID served): %v", time.Since(began).Round(time.Millisecond))
	if svid.ID != wantID {
		t.Fatalf("SVID ID after restart = %s, want %s", svid.ID, wantID)
	}
	verifySVID(t, svid, h.bundleFile())
	ca.stop(t)
}

// verifySVID checks the SVID's chain against the CA's trust bundle file.
func verifySVID(t *testing.T, svid *x509svid.SVID, bundleFile string) {
	t.Helper()
	raw, err := os.ReadFile(bundleFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(raw) {
		t.Fatalf("%s holds no certificate", bundleFile)
	}
	inters := x509.NewCertPool()
	for _, c := range svid.Certificates[1:] {
		inters.AddCert(c)
	}
	if _, err := svid.Certificates[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("SVID does not verify against the CA's trust bundle: %v", err)
	}
}

// svidIDs lists every SVID the socket serves this process.
func svidIDs(t *testing.T, socket string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+socket))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	svids, err := c.FetchX509SVIDs(ctx)
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatal(err)
	}
	var ids []string
	for _, s := range svids {
		ids = append(ids, s.ID.String())
	}
	return ids
}
