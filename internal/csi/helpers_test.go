package csi

import (
	"context"
	"crypto"
	"crypto/x509"
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
	ids      *fakeIdentities
	mounter  *fakeMounter
	creds    *credentials
	stateDir string
	podsDir  string
	sockDir  string
}

func newEnv(t testing.TB) *testEnv {
	t.Helper()
	root := t.TempDir()
	e := &testEnv{
		t: t, ids: &fakeIdentities{}, mounter: newFakeMounter(), creds: newCredentials(t),
		stateDir: filepath.Join(root, "state", "volumes"),
		podsDir:  filepath.Join(root, "pods"),
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

func (e *testEnv) newDriver(ids Identities) *Driver {
	e.t.Helper()
	d, err := New(Config{NodeName: "node-1", StateDir: e.stateDir, SocketDir: e.sockDir, Identities: ids, Mounter: e.mounter})
	if err != nil {
		e.t.Fatal(err)
	}
	return d
}

// target returns a target path for a pod's volume; its parent exists, as
// the kubelet creates it.
func (e *testEnv) target(pod string) string {
	parent := filepath.Join(e.podsDir, pod, "volumes", "kubernetes.io~csi", "certs")
	if err := os.MkdirAll(parent, 0o750); err != nil {
		e.t.Fatal(err)
	}
	return filepath.Join(parent, "mount")
}

// podContext is the volume context of an inline volume of pod "web-0".
func podContext(extra map[string]string) map[string]string {
	m := map[string]string{
		ctxEphemeral:      "true",
		ctxPodName:        "web-0",
		ctxPodNamespace:   "team-a",
		ctxPodUID:         "0b0f7a57-2c3e-4c1e-9d7c-6a4b3c2d1e0f",
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
