package upstream

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"sync"
	"time"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/pkg/pki"
	"github.com/mayfly-pki/mayfly/pkg/readlimit"
)

// File is the file upstream: a CA certificate and key on disk. It re-reads
// the files when their content changed, with the same checks as at start
// (authority.LoadFileUpstream); changed files that fail them are refused,
// and signing fails (the intermediate in service stays) until they are
// fixed. A file replaced in place is noticed at the next signing: no
// restart.
type File struct {
	cfg FileConfig
	now func() time.Time

	mu     sync.Mutex
	sum    [sha256.Size]byte // of the files the upstream was loaded from
	loaded *authority.FileUpstream
}

// NewFile loads the files once, so that a wrong file stops the start.
func NewFile(cfg FileConfig, now func() time.Time) (*File, error) {
	f := &File{cfg: cfg, now: now}
	if _, err := f.current(); err != nil {
		return nil, err
	}
	return f, nil
}

// Name names the upstream.
func (f *File) Name() string { return "file " + f.cfg.CertFile }

// SignIntermediate signs with the files' CA as they are now.
func (f *File) SignIntermediate(ctx context.Context, req authority.IntermediateRequest) (chain, roots []*x509.Certificate, err error) {
	u, err := f.current()
	if err != nil {
		return nil, nil, err
	}
	return u.SignIntermediate(ctx, req)
}

// current returns the upstream of the files' present content, reloading
// it when that changed.
func (f *File) current() (*authority.FileUpstream, error) {
	sum, err := f.fingerprint()
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.loaded != nil && sum == f.sum {
		return f.loaded, nil
	}
	u, err := authority.LoadFileUpstream(f.cfg.CertFile, f.cfg.KeyFile, f.cfg.BundleFile, f.now)
	if err != nil {
		if f.loaded != nil {
			return nil, fmt.Errorf("the files changed and are refused (fix them; nothing is signed until then): %w", err)
		}
		return nil, err
	}
	f.loaded, f.sum = u, sum
	return u, nil
}

// fingerprint hashes the files' content (a changed mtime alone is no
// change; a same-size rewrite is).
func (f *File) fingerprint() ([sha256.Size]byte, error) {
	h := sha256.New()
	for _, p := range []struct{ field, path string }{
		{"upstream.file.certFile", f.cfg.CertFile},
		{"upstream.file.keyFile", f.cfg.KeyFile},
		{"upstream.file.bundleFile", f.cfg.BundleFile},
	} {
		if p.path == "" {
			h.Write([]byte{0})
			continue
		}
		b, err := readlimit.File(p.path, pki.DefaultPEMMaxBytes)
		if err != nil {
			return [sha256.Size]byte{}, fmt.Errorf("%s: %w", p.field, err)
		}
		h.Write(b)
		clear(b)
		h.Write([]byte{0})
	}
	var out [sha256.Size]byte
	copy(out[:], h.Sum(nil))
	return out, nil
}
