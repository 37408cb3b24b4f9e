package rotate

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mayfly-pki/mayfly/pkg/atomicfile"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// parsePair parses a chain and a PKCS#8 key and reports whether they match.
func parsePair(t testing.TB, certPEM, keyPEM []byte) (leaf *x509.Certificate, match bool, err error) {
	t.Helper()
	cb, _ := pem.Decode(certPEM)
	if cb == nil || cb.Type != "CERTIFICATE" {
		return nil, false, errors.New("no CERTIFICATE block")
	}
	leaf, err = x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, false, err
	}
	kb, rest := pem.Decode(keyPEM)
	if kb == nil || kb.Type != "PRIVATE KEY" || len(bytes.TrimSpace(rest)) != 0 {
		return nil, false, errors.New("want exactly one PRIVATE KEY block")
	}
	key, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, false, err
	}
	return leaf, pki.KeyMatches(leaf, key.(crypto.Signer)), nil
}

// newSink returns a FileSink into dir, failing the test on error.
func newSink(t *testing.T, dir string, opts FileSinkOptions) *FileSink {
	t.Helper()
	s, err := NewFileSink(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// issueN returns n credentials of ca, valid for an hour.
func issueN(t *testing.T, ca *testCA, n int) []*Credential {
	t.Helper()
	creds := make([]*Credential, n)
	for i := range creds {
		creds[i] = ca.issue(t, time.Now(), time.Now().Add(time.Hour))
	}
	return creds
}

func mode(t *testing.T, path string) fs.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

// version returns the version directory ..data points at, and its inode.
func version(t *testing.T, dir string) (string, os.FileInfo) {
	t.Helper()
	v, err := os.Readlink(filepath.Join(dir, "..data"))
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, v))
	if err != nil {
		t.Fatal(err)
	}
	return v, fi
}

func TestFileSinkWritesLayout(t *testing.T) {
	ca := newTestCA(t)
	dir := filepath.Join(t.TempDir(), "a", "b", "certs")
	s := newSink(t, dir, FileSinkOptions{})
	if got := mode(t, dir); got != 0o700 {
		t.Errorf("created target dir mode = %v, want 0700", got)
	}
	cred := ca.issue(t, time.Now(), time.Now().Add(time.Hour))
	if err := s.Put(context.Background(), cred); err != nil {
		t.Fatal(err)
	}

	for _, name := range []string{"tls.crt", "tls.key", "ca.crt"} {
		target, err := os.Readlink(filepath.Join(dir, name))
		if err != nil || target != filepath.Join("..data", name) {
			t.Errorf("%s: link %q, %v; want a symlink to ..data/%s", name, target, err, name)
		}
	}
	if v, _ := version(t, dir); !strings.HasPrefix(v, "..") {
		t.Fatalf("..data -> %q; want a version directory", v)
	}
	files, err := atomicfile.ReadAtomic(dir, "tls.crt", "tls.key", "ca.crt")
	if err != nil {
		t.Fatal(err)
	}
	leaf, match, err := parsePair(t, files[0], files[1])
	if err != nil || !match || !leaf.Equal(cred.Certificates[0]) {
		t.Fatalf("tls.crt/tls.key: match %v, err %v", match, err)
	}
	if want := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw}); !bytes.Equal(files[2], want) {
		t.Error("ca.crt does not hold the bundle")
	}
}

func TestFileSinkWritesChainLeafFirst(t *testing.T) {
	ca := newTestCA(t)
	cred := ca.issue(t, time.Now(), time.Now().Add(time.Hour))
	cred.Certificates = append(cred.Certificates, ca.cert) // as an intermediate
	dir := t.TempDir()
	s := newSink(t, dir, FileSinkOptions{})
	if err := s.Put(context.Background(), cred); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "tls.crt"))
	if err != nil {
		t.Fatal(err)
	}
	var got []*x509.Certificate
	for blk, rest := pem.Decode(b); blk != nil; blk, rest = pem.Decode(rest) {
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, c)
	}
	if len(got) != 2 || !got[0].Equal(cred.Certificates[0]) || !got[1].Equal(ca.cert) {
		t.Fatalf("tls.crt holds %d certificates, want leaf then intermediate", len(got))
	}
}

func TestFileSinkCustomNames(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	s := newSink(t, dir, FileSinkOptions{CertFile: "svid.pem", KeyFile: "svid_key.pem", BundleFile: "bundle.pem"})
	if err := s.Put(context.Background(), ca.issue(t, time.Now(), time.Now().Add(time.Hour))); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"svid.pem", "svid_key.pem", "bundle.pem"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Error(err)
		}
	}
	if _, err := os.Lstat(filepath.Join(dir, "tls.crt")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("default name written too: %v", err)
	}
}

func TestNewFileSinkRejectsBadOptions(t *testing.T) {
	neg := int64(-1)
	tests := []struct {
		name    string
		opts    FileSinkOptions
		wantErr string
	}{
		{"rejects_path_in_name", FileSinkOptions{CertFile: "../x"}, "certFile: must be a plain file name"},
		{"rejects_reserved_prefix", FileSinkOptions{KeyFile: "..data"}, "keyFile: must not start with"},
		{"rejects_duplicate_names", FileSinkOptions{BundleFile: "tls.crt"}, "bundleFile: \"tls.crt\" is already used by certFile"},
		{"rejects_negative_group", FileSinkOptions{FSGroup: &neg}, "fsGroup:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewFileSink(t.TempDir(), tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("NewFileSink() = %v, want an error with %q", err, tt.wantErr)
			}
		})
	}
	t.Run("rejects_file_as_dir", func(t *testing.T) {
		f := filepath.Join(t.TempDir(), "file")
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := NewFileSink(f, FileSinkOptions{}); err == nil {
			t.Fatal("NewFileSink(file) = nil error")
		}
	})
}

func TestFileSinkRejectsMismatchedKeyWithoutLeakingIt(t *testing.T) {
	ca := newTestCA(t)
	a, b := ca.issue(t, time.Now(), time.Now().Add(time.Hour)), ca.issue(t, time.Now(), time.Now().Add(time.Hour))
	a.Key = b.Key
	dir := t.TempDir()
	s := newSink(t, dir, FileSinkOptions{})
	err := s.Put(context.Background(), a)
	if !errors.Is(err, ErrInvalidCredential) {
		t.Fatalf("Put() = %v, want ErrInvalidCredential", err)
	}
	if strings.Contains(err.Error(), "PRIVATE KEY") || len(err.Error()) > 300 {
		t.Errorf("error may carry key material: %q", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("rejected credential left %d entries", len(entries))
	}
}

func TestFileSinkRecreatesDeletedDir(t *testing.T) {
	ca := newTestCA(t)
	dir := filepath.Join(t.TempDir(), "certs")
	s := newSink(t, dir, FileSinkOptions{})
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(context.Background(), ca.issue(t, time.Now(), time.Now().Add(time.Hour))); err != nil {
		t.Fatal(err)
	}
	if _, err := atomicfile.ReadAtomic(dir, "tls.crt", "tls.key"); err != nil {
		t.Fatal(err)
	}
}

// TestFileSinkReadersNeverSeeMismatchedPair swaps 50 credentials while
// readers read the directory in a loop: a reader of one version (ReadAtomic)
// always gets a cert and key that match; a reader opening the user-visible
// symlinks one by one always gets complete files.
func TestFileSinkReadersNeverSeeMismatchedPair(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	s := newSink(t, dir, FileSinkOptions{})
	creds := issueN(t, ca, 50)
	if err := s.Put(context.Background(), creds[0]); err != nil {
		t.Fatal(err)
	}

	var (
		stop      atomic.Bool
		wg        sync.WaitGroup
		pairReads atomic.Int64
		fileReads atomic.Int64
	)
	errs := make(chan error, 2)
	wg.Add(2)
	go func() { // pair reader
		defer wg.Done()
		for !stop.Load() {
			files, err := atomicfile.ReadAtomic(dir, "tls.crt", "tls.key")
			if err != nil {
				errs <- err
				return
			}
			if _, match, err := parsePair(t, files[0], files[1]); err != nil || !match {
				errs <- errors.New("ReadAtomic returned a mismatched or broken pair")
				return
			}
			pairReads.Add(1)
		}
	}()
	go func() { // per-file reader through the user-visible symlinks
		defer wg.Done()
		for !stop.Load() {
			for _, name := range []string{"tls.crt", "tls.key"} {
				b, err := os.ReadFile(filepath.Join(dir, name))
				if errors.Is(err, fs.ErrNotExist) {
					continue // resolved a version just removed: the reader retries
				}
				if err != nil {
					errs <- err
					return
				}
				blk, _ := pem.Decode(b)
				if blk == nil || !bytes.HasSuffix(b, []byte("-----\n")) {
					errs <- errors.New(name + " read incomplete")
					return
				}
				fileReads.Add(1)
			}
		}
	}()
	for _, c := range creds[1:] {
		if err := s.Put(context.Background(), c); err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if pairReads.Load() == 0 || fileReads.Load() == 0 {
		t.Fatalf("readers did not run (%d pair reads, %d file reads)", pairReads.Load(), fileReads.Load())
	}
	files, err := atomicfile.ReadAtomic(dir, "tls.crt", "tls.key")
	if err != nil {
		t.Fatal(err)
	}
	if leaf, match, err := parsePair(t, files[0], files[1]); err != nil || !match || !leaf.Equal(creds[49].Certificates[0]) {
		t.Errorf("last write is not the one on disk (match %v, err %v)", match, err)
	}
}

// TestFileSinkAsRotatorSink wires a FileSink into a Rotator on a fake clock.
func TestFileSinkAsRotatorSink(t *testing.T) {
	dir := t.TempDir()
	s := newSink(t, dir, FileSinkOptions{})
	h := newHarness(t, Options{Sinks: []Sink{s}})
	h.start()
	h.idle()
	for range 3 {
		h.advanceToWake()
		files, err := atomicfile.ReadAtomic(dir, "tls.crt", "tls.key")
		if err != nil {
			t.Fatal(err)
		}
		leaf, match, err := parsePair(t, files[0], files[1])
		if err != nil || !match || !leaf.Equal(h.r.Current().Certificates[0]) {
			t.Fatalf("files do not hold the current credential (match %v, err %v)", match, err)
		}
	}
	if st := h.r.State(); st.PendingSinks != 0 || st.SinkFailures != 0 {
		t.Fatalf("state = %+v", st)
	}
}

func TestFileSinkModesWhateverTheUmask(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	group := int64(os.Getgid())
	if os.Geteuid() == 0 {
		group = 4242 // root may give any group: one the files would not have otherwise
	}
	for _, tt := range []struct {
		name    string
		fsGroup *int64
		keyMode fs.FileMode
		dirMode fs.FileMode
	}{
		{"without fsGroup the key is the owner's", nil, 0o600, 0o700},
		{"with fsGroup the group reads the key", &group, 0o640, 0o750},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "certs")
			s := newSink(t, dir, FileSinkOptions{FSGroup: tt.fsGroup})
			if err := s.Put(context.Background(), newTestCA(t).issue(t, time.Now(), time.Now().Add(time.Hour))); err != nil {
				t.Fatal(err)
			}
			v, _ := version(t, dir)
			for path, want := range map[string]fs.FileMode{
				dir:                           tt.dirMode,
				filepath.Join(dir, v):         tt.dirMode,
				filepath.Join(dir, "tls.crt"): 0o644,
				filepath.Join(dir, "tls.key"): tt.keyMode,
				filepath.Join(dir, "ca.crt"):  0o644,
			} {
				if got := mode(t, path); got != want {
					t.Errorf("%s: mode %v, want %v", path, got, want)
				}
			}
			if tt.fsGroup == nil {
				return
			}
			fi, err := os.Stat(filepath.Join(dir, "tls.key"))
			if err != nil {
				t.Fatal(err)
			}
			if got := int64(fi.Sys().(*syscall.Stat_t).Gid); got != group {
				t.Errorf("tls.key: group %d, want %d", got, group)
			}
		})
	}
}

func TestFileSinkSkipsUnchangedPut(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	s := newSink(t, dir, FileSinkOptions{})
	cred := ca.issue(t, time.Now(), time.Now().Add(time.Hour))
	if err := s.Put(context.Background(), cred); err != nil {
		t.Fatal(err)
	}
	v1, fi1 := version(t, dir)
	if err := s.Put(context.Background(), cred); err != nil { // a Rotator retry
		t.Fatal(err)
	}
	if v2, fi2 := version(t, dir); v2 != v1 || !os.SameFile(fi1, fi2) {
		t.Fatalf("an unchanged Put swapped %s for %s", v1, v2)
	}
	if err := s.Put(context.Background(), ca.issue(t, time.Now(), time.Now().Add(time.Hour))); err != nil {
		t.Fatal(err)
	}
	if v3, _ := version(t, dir); v3 == v1 {
		t.Fatal("a new credential was not written")
	}
}

func TestFileSinkPutBundle(t *testing.T) {
	ctx := context.Background()
	ca, other := newTestCA(t), newTestCA(t)
	dir := t.TempDir()
	s := newSink(t, dir, FileSinkOptions{CertFile: "svid.pem", KeyFile: "svid_key.pem", BundleFile: "bundle.pem"})
	read := func() [][]byte {
		t.Helper()
		files, err := atomicfile.ReadAtomic(dir, "svid.pem", "svid_key.pem", "bundle.pem")
		if err != nil {
			t.Fatal(err)
		}
		return files
	}

	t.Run("refuses before the first credential", func(t *testing.T) {
		if err := s.PutBundle(ctx, []*x509.Certificate{ca.cert}); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("PutBundle() = %v, want ErrNotExist", err)
		}
	})
	cred := ca.issue(t, time.Now(), time.Now().Add(time.Hour))
	if err := s.Put(ctx, cred); err != nil {
		t.Fatal(err)
	}
	before := read()
	v1, _ := version(t, dir)

	t.Run("replaces the bundle and keeps chain and key", func(t *testing.T) {
		bundle := []*x509.Certificate{ca.cert, other.cert}
		if err := s.PutBundle(ctx, bundle); err != nil {
			t.Fatal(err)
		}
		after := read()
		if !bytes.Equal(after[0], before[0]) || !bytes.Equal(after[1], before[1]) {
			t.Fatal("chain or key changed")
		}
		if !bytes.Equal(after[2], pki.EncodeCertificates(bundle...)) {
			t.Fatal("bundle.pem does not hold the new bundle")
		}
		if v, _ := version(t, dir); v == v1 {
			t.Fatal("no new version")
		}
		if mode(t, filepath.Join(dir, "svid_key.pem")) != 0o600 {
			t.Fatal("key lost its mode")
		}
	})
	t.Run("an unchanged bundle writes nothing", func(t *testing.T) {
		v, fi := version(t, dir)
		if err := s.PutBundle(ctx, []*x509.Certificate{ca.cert, other.cert}); err != nil {
			t.Fatal(err)
		}
		if v2, fi2 := version(t, dir); v2 != v || !os.SameFile(fi, fi2) {
			t.Fatalf("version %s swapped for %s", v, v2)
		}
	})
	t.Run("refuses a nil certificate, naming it", func(t *testing.T) {
		err := s.PutBundle(ctx, []*x509.Certificate{ca.cert, nil})
		if !errors.Is(err, ErrInvalidCredential) || !strings.Contains(err.Error(), "bundle[1] is nil") {
			t.Fatalf("PutBundle() = %v, want ErrInvalidCredential naming bundle[1]", err)
		}
	})
	t.Run("refuses once ctx is done", func(t *testing.T) {
		done, cancel := context.WithCancel(ctx)
		cancel()
		if err := s.PutBundle(done, []*x509.Certificate{other.cert}); !errors.Is(err, context.Canceled) {
			t.Fatalf("PutBundle() = %v, want context.Canceled", err)
		}
	})
}

// TestFileSinkPutBundleNeverRevertsAPut runs a PutBundle alongside each
// Put: a bundle update re-writes the chain and key it read, so it must not
// read them before a Put and write them back after it.
func TestFileSinkPutBundleNeverRevertsAPut(t *testing.T) {
	ctx := context.Background()
	ca, other := newTestCA(t), newTestCA(t)
	dir := t.TempDir()
	s := newSink(t, dir, FileSinkOptions{})
	creds := issueN(t, ca, 40)
	if err := s.Put(ctx, creds[0]); err != nil {
		t.Fatal(err)
	}
	bundles := [][]*x509.Certificate{{ca.cert}, {ca.cert, other.cert}}
	for i, c := range creds[1:] {
		bundleErr := make(chan error, 1)
		go func() { bundleErr <- s.PutBundle(ctx, bundles[i%2]) }()
		if err := s.Put(ctx, c); err != nil {
			t.Fatal(err)
		}
		if err := <-bundleErr; err != nil {
			t.Fatal(err)
		}
		files, err := atomicfile.ReadAtomic(dir, "tls.crt", "tls.key")
		if err != nil {
			t.Fatal(err)
		}
		if leaf, match, err := parsePair(t, files[0], files[1]); err != nil || !match || !leaf.Equal(c.Certificates[0]) {
			t.Fatalf("Put %d was reverted by a PutBundle (match %v, err %v)", i+1, match, err)
		}
	}
}
