package agentapp_test

import (
	"context"
	"crypto/x509"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/fileconsumer"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
)

// TestEndToEndRootRotationFileConsumers: programs that know nothing of
// SPIFFE (a plain crypto/tls server and client reading tls.crt, tls.key
// and ca.crt from their writeDir directories for every handshake, and
// verifying against ca.crt alone) do mutual TLS every 500ms through a root
// rotation requested as `ca rotate-root` does, next to a go-spiffe pair on
// the Workload API. No handshake may fail: every ca.crt holds the next root
// before any leaf under it is written, without waiting for a leaf rotation.
func TestEndToEndRootRotationFileConsumers(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test with a real root rotation (about 30s); skipped with -short")
	}
	s := startStack(t, "20s")
	m := startMTLS(t, s)
	dirs := certDirs(t, s.writeDir, serverID, clientID)
	files, err := fileconsumer.Listen(dirs[serverID], dirs[clientID])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { files.Close() })
	if err := files.Handshake(); err != nil {
		t.Fatalf("file consumers before the rotation: %v", err)
	}
	before := readDir(t, dirs[serverID])
	if len(before.Roots) != 1 {
		t.Fatalf("ca.crt holds %d roots before the rotation, want 1", len(before.Roots))
	}
	oldRoot := before.Roots[0]

	store, err := authority.NewDirStore(s.stateDir)
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	if err := authority.RequestRootRotation(context.Background(), store); err != nil {
		t.Fatalf("RequestRootRotation: %v", err)
	}
	var (
		handshakes, failed int
		trusted            time.Duration // every ca.crt holds two roots
		onNew              = map[spiffeid.ID]time.Duration{}
	)
	wait.Until(t, "both directories hold leaves under the new root", 90*time.Second, 500*time.Millisecond, func(context.Context) (bool, string) {
		handshakes++
		if err := files.Handshake(); err != nil {
			failed++
			t.Errorf("file consumers: handshake %d failed during the root rotation: %v", handshakes, err)
		}
		if err := m.handshake(); err != nil {
			failed++
			t.Errorf("go-spiffe pair: handshake %d failed during the root rotation: %v", handshakes, err)
		}
		now := map[spiffeid.ID]*fileconsumer.Files{}
		for id, dir := range dirs {
			now[id] = readDir(t, dir)
		}
		for id, f := range now {
			top := f.Chain[len(f.Chain)-1]
			if top.CheckSignatureFrom(oldRoot) == nil {
				continue
			}
			// A leaf under another root: every ca.crt must hold that
			// root already, and the old one still.
			for other, o := range now {
				if !slices.ContainsFunc(o.Roots, oldRoot.Equal) {
					t.Fatalf("%s's ca.crt dropped the old root while leaves under it are valid", other)
				}
				if !slices.ContainsFunc(o.Roots, func(r *x509.Certificate) bool { return top.CheckSignatureFrom(r) == nil }) {
					t.Fatalf("%s holds a leaf under a root that %s's ca.crt does not hold", id, other)
				}
			}
			if _, ok := onNew[id]; !ok {
				onNew[id] = time.Since(began)
			}
		}
		if trusted == 0 && len(now[serverID].Roots) == 2 && len(now[clientID].Roots) == 2 {
			trusted = time.Since(began)
			if len(onNew) != 0 {
				t.Fatal("a leaf under the next root was written before every ca.crt held it")
			}
		}
		return len(onNew) == 2, fmt.Sprintf("every ca.crt holds the next root: %v; directories on it: %d", trusted != 0, len(onNew))
	})
	if trusted == 0 {
		t.Fatal("the leaves moved to a new root without every ca.crt holding both first")
	}
	t.Logf("root rotation, file consumers: every ca.crt held the next root %v after the request; leaves under it after %v (server) and %v (client); %d handshakes of each pair, %d failed",
		trusted.Round(100*time.Millisecond), onNew[serverID].Round(100*time.Millisecond), onNew[clientID].Round(100*time.Millisecond), handshakes, failed)
}

// certDirs waits until writeDir holds a directory for each of ids and
// returns them, found by the SPIFFE ID of the leaf each holds (the layout
// of writeDir is not the point here).
func certDirs(t *testing.T, writeDir string, ids ...spiffeid.ID) map[spiffeid.ID]string {
	t.Helper()
	out := map[spiffeid.ID]string{}
	wait.For(t, "a certificate directory for each registration", func() bool {
		_ = filepath.WalkDir(writeDir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.Name() != fileconsumer.CertFile || filepath.Base(filepath.Dir(path))[0] == '.' {
				return nil
			}
			f, err := fileconsumer.Read(filepath.Dir(path))
			if err != nil || len(f.Chain[0].URIs) != 1 {
				return nil
			}
			if id, err := spiffeid.FromURI(f.Chain[0].URIs[0]); err == nil {
				out[id] = filepath.Dir(path)
			}
			return nil
		})
		for _, id := range ids {
			if out[id] == "" {
				return false
			}
		}
		return true
	})
	return out
}

func readDir(t *testing.T, dir string) *fileconsumer.Files {
	t.Helper()
	f, err := fileconsumer.Read(dir)
	if err != nil {
		t.Fatalf("reading %s: %v", dir, err)
	}
	return f
}

// TestEndToEndTaintFileConsumers: `ca taint --authority intermediate`
// (on the store of the running CA, as the command does) while two plain
// file consumers and the go-spiffe pair do mTLS every 500 ms: issuance
// moves off the tainted intermediate, both directories get leaves under a
// new one, and no handshake fails on the way.
func TestEndToEndTaintFileConsumers(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test with a real taint (about 30s); skipped with -short")
	}
	s := startStack(t, "20s")
	m := startMTLS(t, s)
	dirs := certDirs(t, s.writeDir, serverID, clientID)
	files, err := fileconsumer.Listen(dirs[serverID], dirs[clientID])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { files.Close() })
	tainted := readDir(t, dirs[serverID]).Chain[1]

	store, err := authority.NewDirStore(s.stateDir)
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	if _, err := authority.TaintAuthority(context.Background(), store, authority.TaintRequest{Role: authority.RoleIntermediate}, time.Now()); err != nil {
		t.Fatalf("TaintAuthority: %v", err)
	}
	handshakes, failed := 0, 0
	wait.Until(t, "both directories hold leaves under a new intermediate", 90*time.Second, 500*time.Millisecond, func(context.Context) (bool, string) {
		handshakes++
		if err := files.Handshake(); err != nil {
			failed++
			t.Errorf("file consumers: handshake %d failed during the taint: %v", handshakes, err)
		}
		if err := m.handshake(); err != nil {
			failed++
			t.Errorf("go-spiffe pair: handshake %d failed during the taint: %v", handshakes, err)
		}
		moved := 0
		for _, dir := range dirs {
			if f := readDir(t, dir); len(f.Chain) > 1 && !f.Chain[1].Equal(tainted) {
				moved++
			}
		}
		return moved == len(dirs), fmt.Sprintf("%d of %d directories under a new intermediate", moved, len(dirs))
	})
	t.Logf("intermediate taint, file consumers: both directories under a new intermediate %v after the taint; %d handshakes of each pair, %d failed",
		time.Since(began).Round(100*time.Millisecond), handshakes, failed)
}
