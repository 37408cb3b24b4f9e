package csi

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mayfly-pki/mayfly/internal/test/testca"
	"github.com/mayfly-pki/mayfly/pkg/pki"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// fakeIdentities is an Identities whose credentials the test pushes.
type fakeIdentities struct {
	mu      sync.Mutex
	current *rotate.Credential
	err     error
	tracks  []*fakeTrack
}

type fakeTrack struct {
	id     VolumeIdentity
	sink   rotate.Sink
	active bool
}

// renew does what the agent's identity manager does for a renewal of a
// tracked volume: it asks the pod token source anew and returns the token
// the request to the CA carries ("" for none).
func (f *fakeIdentities) renew(t testing.TB) []string {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	var sent []string
	for _, tr := range f.tracks {
		if tr.active {
			if tr.id.PodToken == nil {
				t.Fatal("a tracked volume has no pod token source")
			}
			sent = append(sent, tr.id.PodToken.PodToken())
		}
	}
	return sent
}

// Track records the sink and delivers the current credential, if any, from
// another goroutine, as a rotator does.
func (f *fakeIdentities) Track(id VolumeIdentity, sink rotate.Sink) (func(), error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	tr := &fakeTrack{id: id, sink: sink, active: true}
	f.tracks = append(f.tracks, tr)
	if cur := f.current; cur != nil {
		go func() { _ = sink.Put(context.Background(), cur) }()
	}
	return func() {
		f.mu.Lock()
		tr.active = false
		f.mu.Unlock()
	}, nil
}

// push makes c current and puts it to every active sink before returning.
func (f *fakeIdentities) push(t testing.TB, c *rotate.Credential) {
	t.Helper()
	f.mu.Lock()
	f.current = c
	var sinks []rotate.Sink
	for _, tr := range f.tracks {
		if tr.active {
			sinks = append(sinks, tr.sink)
		}
	}
	f.mu.Unlock()
	for _, s := range sinks {
		if err := s.Put(context.Background(), c); err != nil {
			t.Fatalf("put: %v", err)
		}
	}
}

// active returns the identities tracked now.
func (f *fakeIdentities) active() []VolumeIdentity {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []VolumeIdentity
	for _, tr := range f.tracks {
		if tr.active {
			out = append(out, tr.id)
		}
	}
	return out
}

func (f *fakeIdentities) trackCalls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.tracks)
}

// fakeMounter records bind mounts in memory.
type fakeMounter struct {
	mu     sync.Mutex
	mounts map[string][]string // target -> stack of sources
	err    error
}

func newFakeMounter() *fakeMounter { return &fakeMounter{mounts: map[string][]string{}} }

func (m *fakeMounter) BindReadOnly(source, target string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil {
		return m.err
	}
	if _, err := os.Stat(target); err != nil {
		return fmt.Errorf("fake mount: target: %w", err)
	}
	m.mounts[target] = append(m.mounts[target], source)
	return nil
}

func (m *fakeMounter) Unmount(target string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.mounts[target]
	if len(s) == 0 {
		return errors.New("fake mount: not mounted")
	}
	if len(s) == 1 {
		delete(m.mounts, target)
	} else {
		m.mounts[target] = s[:len(s)-1]
	}
	return nil
}

func (m *fakeMounter) IsMountPoint(target string) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.mounts[target]) > 0, nil
}

func (m *fakeMounter) source(target string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.mounts[target]
	if len(s) == 0 {
		return ""
	}
	return s[len(s)-1]
}

// credentials issues workload credentials from one test CA.
type credentials struct {
	t  testing.TB
	ca *testca.CA
	id spiffeid.ID
}

func newCredentials(t testing.TB) *credentials {
	t.Helper()
	ca := testca.New(t)
	id, err := pki.WorkloadID(ca.TrustDomain, "team-a", "web")
	if err != nil {
		t.Fatal(err)
	}
	return &credentials{t: t, ca: ca, id: id}
}

func (c *credentials) issue() *rotate.Credential {
	c.t.Helper()
	chain, key := c.ca.IssueWorkload(c.t, c.id, time.Hour)
	return &rotate.Credential{Certificates: chain, Key: key, Bundle: c.ca.Bundle()}
}

type testEnv struct {
	t        testing.TB
	d        *Driver
	clock    *rotate.FakeClock
	kubelet  string // the kubelet's root directory
	ids      *fakeIdentities
	mounter  *fakeMounter
	creds    *credentials
	stateDir string
	podsDir  string
	sockDir  string
}

// socketDir returns a new directory for unix sockets, removed at cleanup:
// under os.TempDir rather than t.TempDir, whose long paths would pass the
// 108-byte limit of a socket path.
func socketDir(t testing.TB, prefix string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

func newEnv(t testing.TB) *testEnv {
	t.Helper()
	root := t.TempDir()
	e := &testEnv{
		t: t, ids: &fakeIdentities{}, mounter: newFakeMounter(), creds: newCredentials(t),
		clock:    rotate.NewFakeClock(time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)),
		kubelet:  filepath.Join(root, "kubelet"),
		stateDir: filepath.Join(root, "kubelet", "plugins", DriverName, "volumes"),
		podsDir:  filepath.Join(root, "kubelet", "pods"),
		sockDir:  filepath.Join(root, "run"),
	}
	for _, dir := range []string{e.podsDir, e.sockDir} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	e.d = e.newDriver(e.ids)
	return e
}

// newIssuedEnv is newEnv with a credential already in the identity
// source: a publish is served at once.
func newIssuedEnv(t testing.TB) *testEnv {
	t.Helper()
	e := newEnv(t)
	e.ids.push(t, e.creds.issue())
	return e
}

func (e *testEnv) newDriver(ids Identities) *Driver {
	e.t.Helper()
	d, err := New(Config{NodeName: "node-1", StateDir: e.stateDir, SocketDir: e.sockDir, KubeletDir: e.kubelet, Clock: e.clock, Identities: ids, Mounter: e.mounter})
	if err != nil {
		e.t.Fatal(err)
	}
	return d
}

// target returns the target path of volume name of the pod of podContext,
// laid out as the kubelet does; its parent exists, as the kubelet creates
// it.
func (e *testEnv) target(name string) string {
	parent := filepath.Join(e.podsDir, testPodUID, "volumes", "kubernetes.io~csi", name)
	if err := os.MkdirAll(parent, 0o750); err != nil {
		e.t.Fatal(err)
	}
	return filepath.Join(parent, "mount")
}

// testPodUID is the UID of the pod of podContext.
const testPodUID = "0b0f7a57-2c3e-4c1e-9d7c-6a4b3c2d1e0f"

// podContext is the volume context of an inline volume of pod "web-0".
func podContext(extra map[string]string) map[string]string {
	m := map[string]string{
		ctxEphemeral:      "true",
		ctxPodName:        "web-0",
		ctxPodNamespace:   "team-a",
		ctxPodUID:         testPodUID,
		ctxServiceAccount: "web",
	}
	for k, v := range extra {
		m[k] = v
	}
	return m
}

func publishRequest(id, target string, vctx map[string]string) *csipb.NodePublishVolumeRequest {
	return &csipb.NodePublishVolumeRequest{
		VolumeId:   id,
		TargetPath: target,
		VolumeCapability: &csipb.VolumeCapability{
			AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{}},
			AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		},
		VolumeContext: vctx,
	}
}

// checkPair parses a chain and key in PEM and fails unless the key belongs
// to the leaf; it returns the leaf.
func checkPair(t testing.TB, certPEM, keyPEM []byte) *x509.Certificate {
	t.Helper()
	leaf, err := matchPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return leaf
}

// matchPair returns the leaf of a PEM chain if the PEM key belongs to it.
func matchPair(certPEM, keyPEM []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(certPEM)
	if block == nil {
		return nil, fmt.Errorf("no PEM block in the certificate file (%d bytes)", len(certPEM))
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse leaf: %w", err)
	}
	key, err := pki.ParsePrivateKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("parse key: %w", err)
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(leaf.PublicKey) {
		return nil, fmt.Errorf("key does not match the certificate (serial %s)", leaf.SerialNumber.Text(16))
	}
	return leaf, nil
}

func strconv64(v int64) string { return strconv.FormatInt(v, 10) }

func fileGID(fi fs.FileInfo) int64 {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return -1
	}
	return int64(st.Gid)
}

// fakeJWT returns a token shaped like the kubelet's: a JWT whose claims
// carry exp; mark makes tokens distinct. Its signature is not valid: the
// driver reads exp without verifying (the CA verifies the token).
func fakeJWT(exp time.Time, mark string) string {
	enc := base64.RawURLEncoding.EncodeToString
	claims := fmt.Sprintf(`{"aud":["mayfly-ca"],"exp":%d,"sub":"system:serviceaccount:team-a:web","mark":%q}`, exp.Unix(), mark)
	return enc([]byte(`{"alg":"RS256","kid":"k"}`)) + "." + enc([]byte(claims)) + ".c2lnbmF0dXJl"
}

// tokenContext is the kubelet's serviceAccount.tokens attribute holding
// token for the audience mayfly-ca.
func tokenContext(token string) string {
	return `{"mayfly-ca":{"token":"` + token + `","expirationTimestamp":"2030-01-01T00:00:00Z"}}`
}
