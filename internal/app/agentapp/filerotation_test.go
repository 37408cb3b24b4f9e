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
	"github.com/mayfly-pki/mayfly/internal/test/handshake"
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
	dirs, pairs, store := writeDirConsumers(t)
	throughRootRotation(t, "root rotation, writeDir file consumers", dirs, pairs, func() error {
		return authority.RequestRootRotation(context.Background(), store)
	})
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
	dirs, pairs, store := writeDirConsumers(t)
	throughTaint(t, "intermediate taint, writeDir file consumers", dirs, pairs, func() error {
		_, err := authority.TaintAuthority(context.Background(), store, authority.TaintRequest{Role: authority.RoleIntermediate}, time.Now())
		return err
	})
}

// writeDirConsumers starts a stack with 20s certificates, the go-spiffe
// pair on its socket and a file consumer pair on the writeDir directories
// of serverID and clientID, and returns those directories (by "server"
// and "client"), both pairs and the CA's store.
func writeDirConsumers(t *testing.T) (map[string]string, []handshake.Pair, authority.Store) {
	t.Helper()
	s := startStack(t, "20s")
	m := startMTLS(t, s)
	ids := certDirs(t, s.writeDir, serverID, clientID)
	dirs := map[string]string{"server": ids[serverID], "client": ids[clientID]}
	files := listenFiles(t, dirs)
	store, err := authority.NewDirStore(s.stateDir)
	if err != nil {
		t.Fatal(err)
	}
	return dirs, []handshake.Pair{{Name: "file consumers", Handshake: files.Handshake}, {Name: "go-spiffe pair", Handshake: m.handshake}}, store
}

// listenFiles starts a file consumer server on dirs["server"] and its
// client on dirs["client"], and checks one handshake.
func listenFiles(t *testing.T, dirs map[string]string) *fileconsumer.Pair {
	t.Helper()
	files, err := fileconsumer.Listen(dirs["server"], dirs["client"])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { files.Close() })
	if err := files.Handshake(); err != nil {
		t.Fatalf("file consumers at the start: %v", err)
	}
	return files
}

// throughRootRotation requests a root rotation and, every 500ms until
// every directory of dirs holds a leaf under the new root, makes a
// handshake on each pair (none may fail) and checks the files: no ca.crt
// drops the old root, and no directory holds a leaf under a root that
// some ca.crt does not hold yet.
func throughRootRotation(t *testing.T, event string, dirs map[string]string, pairs []handshake.Pair, request func() error) {
	t.Helper()
	before := readDir(t, dirs["server"])
	if len(before.Roots) != 1 {
		t.Fatalf("ca.crt holds %d roots before the rotation, want 1", len(before.Roots))
	}
	oldRoot := before.Roots[0]
	began := time.Now()
	if err := request(); err != nil {
		t.Fatalf("requesting the root rotation: %v", err)
	}
	var (
		trusted time.Duration // every ca.crt holds two roots
		onNew   = map[string]time.Duration{}
	)
	c := handshake.Until(t, event, 2*time.Minute, 500*time.Millisecond, pairs, func(int) (bool, string) {
		now := map[string]*fileconsumer.Files{}
		for name, dir := range dirs {
			now[name] = readDir(t, dir)
		}
		for name, f := range now {
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
					t.Fatalf("%s holds a leaf under a root that %s's ca.crt does not hold", name, other)
				}
			}
			if _, ok := onNew[name]; !ok {
				onNew[name] = time.Since(began)
			}
		}
		both := true
		for _, f := range now {
			both = both && len(f.Roots) == 2
		}
		if trusted == 0 && both {
			// A leaf under the next root seen in the same poll is no
			// fault: both may land between two polls on a loaded
			// machine. The order itself is checked above at every poll
			// that sees such a leaf, and by the handshakes.
			trusted = time.Since(began)
		}
		return len(onNew) == len(dirs), fmt.Sprintf("every ca.crt holds the next root: %v; directories on it: %d", trusted != 0, len(onNew))
	})
	if trusted == 0 {
		t.Fatal("the leaves moved to a new root without every ca.crt holding both first")
	}
	t.Logf("%s: every ca.crt held the next root %v after the request; leaves under it after %v (server) and %v (client); %d handshakes of each pair, %d failed",
		event, trusted.Round(100*time.Millisecond), onNew["server"].Round(100*time.Millisecond), onNew["client"].Round(100*time.Millisecond), c.Rounds, c.Failed)
}

// throughTaint taints the intermediate that signed dirs["server"]'s leaf
// and, every 500ms until every directory holds a leaf under another
// intermediate, makes a handshake on each pair (none may fail).
func throughTaint(t *testing.T, event string, dirs map[string]string, pairs []handshake.Pair, taint func() error) {
	t.Helper()
	tainted := readDir(t, dirs["server"]).Chain[1]
	began := time.Now()
	if err := taint(); err != nil {
		t.Fatalf("tainting the intermediate: %v", err)
	}
	c := handshake.Until(t, event, 2*time.Minute, 500*time.Millisecond, pairs, func(int) (bool, string) {
		moved := 0
		for _, dir := range dirs {
			if f := readDir(t, dir); len(f.Chain) > 1 && !f.Chain[1].Equal(tainted) {
				moved++
			}
		}
		return moved == len(dirs), fmt.Sprintf("%d of %d directories under a new intermediate", moved, len(dirs))
	})
	t.Logf("%s: every directory under a new intermediate %v after the taint; %d handshakes of each pair, %d failed",
		event, time.Since(began).Round(100*time.Millisecond), c.Rounds, c.Failed)
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
