package agent

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	gojwtsvid "github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mayfly-pki/mayfly/internal/csi"
	"github.com/mayfly-pki/mayfly/internal/test/filemode"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
	"github.com/mayfly-pki/mayfly/pkg/jwtsvid"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// csiJWTNode is one agent's CSI driver with real identities and token
// writers against fake CAs (X.509 and JWT), on a fake clock that starts at
// the real time, so that go-spiffe (which validates against time.Now)
// reads the first tokens as an outside program would.
type csiJWTNode struct {
	clk      *rotate.FakeClock
	x509     *fakeCA
	jwt      *fakeJWTCA
	kubelet  string
	stateDir string
}

const csiJWTPod = "3f1e2d4c-aaaa-bbbb-cccc-0123456789ab"

func newCSIJWTNode(t *testing.T) *csiJWTNode {
	t.Helper()
	clk := rotate.NewFakeClock(time.Now().Truncate(time.Second))
	n := &csiJWTNode{clk: clk, x509: newFakeCA(t, clk), jwt: newFakeJWTCA(t, clk), kubelet: t.TempDir()}
	n.stateDir = filepath.Join(n.kubelet, "plugins", csi.DriverName, "volumes")
	n.x509.pod(csiJWTPod, idWeb)
	n.jwt.pods = map[string]string{csiJWTPod: idWeb}
	return n
}

// start runs an agent's worth of CSI driver until ctx ends: a restart is a
// second start on the same directories.
func (n *csiJWTNode) start(ctx context.Context, t *testing.T) *csi.Driver {
	t.Helper()
	b := &Batcher{Signer: n.x509}
	go func() { _ = b.Start(ctx) }()
	m := NewManager(ManagerConfig{Batcher: b, Bundle: staticBundle(n.x509.tca.Bundle()), TrustDomain: n.x509.tca.TrustDomain, Clock: n.clk, Policy: testPolicy()})
	go func() { _ = m.Start(ctx) }()
	cache, err := NewJWTCache(n.jwt, n.clk, nil)
	if err != nil {
		t.Fatal(err)
	}
	vols := &VolumeIdentities{Manager: m, Pods: &PodIndex{Now: n.clk.Now}, JWT: NewJWTFiles(cache, n.clk, nil, nil)}
	// The token writers stop with the agent (its run closes them when
	// its context ends).
	stopWriters := context.AfterFunc(ctx, vols.JWT.Close)
	t.Cleanup(func() {
		stopWriters()
		vols.JWT.Close()
	})
	d, err := csi.New(csi.Config{NodeName: "node-a", StateDir: n.stateDir, KubeletDir: n.kubelet, Clock: n.clk, Identities: vols, Tokens: vols, PublishTimeout: waitTimeout})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	return d
}

// publishReq is the kubelet's request for volume id of pod uid with attrs.
func (n *csiJWTNode) publishReq(t *testing.T, id, uid string, attrs map[string]string) *csipb.NodePublishVolumeRequest {
	t.Helper()
	target := filepath.Join(n.kubelet, "pods", uid, "volumes", "kubernetes.io~csi", id, "mount")
	if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
		t.Fatal(err)
	}
	vctx := map[string]string{
		"csi.storage.k8s.io/ephemeral": "true", "csi.storage.k8s.io/pod.name": "web-0", "csi.storage.k8s.io/pod.namespace": "default",
		"csi.storage.k8s.io/pod.uid": uid, "csi.storage.k8s.io/serviceAccount.name": "web",
	}
	for k, v := range attrs {
		vctx[k] = v
	}
	return &csipb.NodePublishVolumeRequest{
		VolumeId: id, TargetPath: target, VolumeContext: vctx,
		VolumeCapability: &csipb.VolumeCapability{AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{}},
			AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}},
	}
}

// readToken reads path as a program in the pod does; "" while it is missing.
func readToken(t *testing.T, path string) string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	return string(raw)
}

// TestCSIVolumeJWTToken: a volume with jwtAudience holds jwt.token (0600)
// once published, which go-spiffe validates against the JWT bundle for
// either audience; the file is replaced at the token's half-life and not
// before; after an agent restart the resumed volume's token is kept by the
// new agent; unpublishing removes the volume with its token and stops its
// writer.
func TestCSIVolumeJWTToken(t *testing.T) {
	n := newCSIJWTNode(t)
	ctx1, stop1 := context.WithCancel(t.Context())
	d := n.start(ctx1, t)
	req := n.publishReq(t, "csi-jwt", csiJWTPod, map[string]string{"jwtAudience": "vault, https://sts.example.com"})
	if _, err := d.NodePublishVolume(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(req.TargetPath, csi.JWTFileName)
	first := readToken(t, path)
	if first == "" {
		t.Fatal("jwt.token missing once NodePublishVolume returned")
	}
	filemode.Want(t, path, 0o600)

	// An outside program: go-spiffe, the JWT bundle, its audience.
	bundle := n.jwtBundle(t)
	for _, aud := range []string{"vault", "https://sts.example.com"} {
		svid, err := gojwtsvid.ParseAndValidate(first, bundle, []string{aud})
		if err != nil {
			t.Fatalf("go-spiffe refused jwt.token for %s: %v", aud, err)
		}
		if svid.ID.String() != idWeb {
			t.Fatalf("jwt.token names %s, want %s", svid.ID, idWeb)
		}
	}
	if _, err := gojwtsvid.ParseAndValidate(first, bundle, []string{"other"}); err == nil {
		t.Fatal("go-spiffe accepted jwt.token for an audience it was not asked for")
	}

	// Half-life of the fake CA's 5m tokens: 2m30s.
	calls := n.jwt.calls.Load()
	n.clk.Advance(150*time.Second - time.Second)
	if readToken(t, path) != first || n.jwt.calls.Load() != calls {
		t.Fatal("jwt.token replaced before its half-life")
	}
	n.clk.Advance(time.Second)
	wait.For(t, "jwt.token replaced at its half-life", func() bool { return readToken(t, path) != first })
	second := readToken(t, path)
	checkFakeToken(t, n, second, n.clk.Now())
	filemode.Want(t, path, 0o600)

	// The agent restarts: its writers stop with it, the new one resumes
	// the volume from its record and keeps the token.
	stop1()
	calls = n.jwt.calls.Load()
	d2 := n.start(t.Context(), t)
	wait.For(t, "the restarted agent asks for the resumed volume's token", func() bool { return n.jwt.calls.Load() > calls })
	n.clk.Advance(150 * time.Second)
	wait.For(t, "the resumed volume's token renewed at its half-life", func() bool {
		tok := readToken(t, path)
		return tok != second && tok != "" && n.jwt.calls.Load() >= calls+2
	})
	checkFakeToken(t, n, readToken(t, path), n.clk.Now())

	if _, err := d2.NodeUnpublishVolume(t.Context(), &csipb.NodeUnpublishVolumeRequest{VolumeId: req.VolumeId, TargetPath: req.TargetPath}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(req.TargetPath); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("target after unpublish: %v", err)
	}
	if _, err := os.Stat(filepath.Join(n.stateDir, req.VolumeId+".json")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("record after unpublish: %v", err)
	}
	calls = n.jwt.calls.Load()
	n.clk.Advance(time.Hour)
	if _, err := os.Stat(req.TargetPath); !errors.Is(err, fs.ErrNotExist) || n.jwt.calls.Load() != calls {
		t.Fatalf("a token writer ran after unpublish (target: %v, CA calls %d -> %d)", err, calls, n.jwt.calls.Load())
	}
}

// jwtBundle is the JWT bundle of the fake CA: its one signing key.
func (n *csiJWTNode) jwtBundle(t *testing.T) *jwtbundle.Bundle {
	t.Helper()
	kid, err := jwtsvid.KeyID(n.jwt.pub)
	if err != nil {
		t.Fatal(err)
	}
	bundle := jwtbundle.New(n.x509.tca.TrustDomain)
	if err := bundle.AddJWTAuthority(kid, n.jwt.pub); err != nil {
		t.Fatal(err)
	}
	return bundle
}

// checkFakeToken validates tok against the fake CA's key at now, the fake
// clock's time (go-spiffe, on time.Now, would see tokens of a later fake
// time as issued in the future).
func checkFakeToken(t *testing.T, n *csiJWTNode, tok string, now time.Time) {
	t.Helper()
	bundle := n.jwtBundle(t)
	c, err := jwtsvid.Validate(tok, "vault", bundle, now)
	if err != nil {
		t.Fatalf("token refused at %s: %v", now, err)
	}
	if c.Subject.String() != idWeb {
		t.Fatalf("token names %s, want %s", c.Subject, idWeb)
	}
}

// fileGroup is the group ID of fi.
func fileGroup(fi fs.FileInfo) int64 {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return -1
	}
	return int64(st.Gid)
}

// TestCSIVolumeJWTTokenGroup: with the pod's fsGroup the token is 0640 and
// the group's, as the key is.
func TestCSIVolumeJWTTokenGroup(t *testing.T) {
	n := newCSIJWTNode(t)
	d := n.start(t.Context(), t)
	req := n.publishReq(t, "csi-jwt-group", csiJWTPod, map[string]string{"jwtAudience": "vault"})
	gid := int64(os.Getgid()) // a group this process may give files to
	req.VolumeCapability.GetMount().VolumeMountGroup = strconv.FormatInt(gid, 10)
	if _, err := d.NodePublishVolume(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(req.TargetPath, csi.JWTFileName)
	filemode.Want(t, path, 0o640)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if g := fileGroup(fi); g != gid {
		t.Fatalf("jwt.token group %d, want %d", g, gid)
	}
}

// TestCSIVolumeJWTTokenRefused: when the CA refuses the token of the
// volume's pod, NodePublishVolume answers PermissionDenied with the CA's
// reason and leaves nothing behind: no target, no record, no writer.
func TestCSIVolumeJWTTokenRefused(t *testing.T) {
	n := newCSIJWTNode(t)
	const stranger = "9d9d9d9d-0000-1111-2222-333333333333"
	n.x509.pod(stranger, idWeb) // the certificate alone would be issued
	d := n.start(t.Context(), t)
	req := n.publishReq(t, "csi-jwt-denied", stranger, map[string]string{"jwtAudience": "vault"})
	_, err := d.NodePublishVolume(t.Context(), req)
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("NodePublishVolume for a pod the CA refuses: %v, want PermissionDenied", err)
	}
	if st, _ := status.FromError(err); !strings.Contains(st.Message(), "jwtAudience") || !strings.Contains(st.Message(), "is not on this node") {
		t.Fatalf("refusal %q does not say why", st.Message())
	}
	if _, err := os.Stat(req.TargetPath); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("target after a refused publish: %v", err)
	}
	if _, err := os.Stat(filepath.Join(n.stateDir, req.VolumeId+".json")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("record after a refused publish: %v", err)
	}
	if len(d.Volumes()) != 0 {
		t.Fatalf("volumes after a refused publish: %v", d.Volumes())
	}
	calls := n.jwt.calls.Load()
	n.clk.Advance(time.Hour)
	if n.jwt.calls.Load() != calls {
		t.Fatal("the refused volume's token writer kept asking the CA")
	}
}
