package agent

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/mayfly-pki/mayfly/pkg/atomicfile"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// Files of the agent's data directory.
const (
	svidFile   = "agent-svid.pem"
	keyFile    = "agent-key.pem"
	bundleFile = "bundle.pem"
)

// SVIDStore holds the agent's own SVID and key, and keeps them, with the
// trust bundle, in a directory (files 0600 in a 0700 directory; the bundle,
// which is public, 0644) so that a restarted agent renews instead of
// attesting anew: a standalone agent's join token is single-use.
type SVIDStore struct {
	dir string // "": memory only
	log *slog.Logger

	mu       sync.Mutex
	cur      *tls.Certificate
	onChange func(*x509.Certificate)
}

// NewSVIDStore returns a store over dir; an empty dir keeps nothing on disk.
func NewSVIDStore(dir string, log *slog.Logger) *SVIDStore {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &SVIDStore{dir: dir, log: log}
}

// AgentSVID returns the agent's SVID in force, or nil before the first.
func (s *SVIDStore) AgentSVID() *tls.Certificate {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur
}

// OnChange registers f to be called with every new agent SVID, at once
// with the one held if any.
func (s *SVIDStore) OnChange(f func(*x509.Certificate)) {
	s.update(func() { s.onChange = f })
}

// Put makes chain (leaf first) and key the agent's SVID, writes them to the
// directory and returns them as the certificate to present. A write that
// fails is logged: the SVID is in force anyway, and the next rotation
// writes again.
func (s *SVIDStore) Put(chain []*x509.Certificate, key crypto.Signer) *tls.Certificate {
	cert := tlsCertificate(chain, key)
	s.hold(cert)
	if err := s.save(chain, key); err != nil {
		s.log.Warn("cannot persist the agent SVID", "error", err)
	}
	return cert
}

func (s *SVIDStore) hold(cert *tls.Certificate) {
	s.update(func() { s.cur = cert })
}

// update applies change under the lock, then calls the OnChange callback,
// outside the lock, with the SVID in force when there are both.
func (s *SVIDStore) update(change func()) {
	s.mu.Lock()
	change()
	f, cur := s.onChange, s.cur
	s.mu.Unlock()
	if f != nil && cur != nil {
		f(cur.Leaf)
	}
}

// save writes the key before the SVID; Load refuses a key that does not
// match its SVID, which is what a crash between the two writes leaves.
func (s *SVIDStore) save(chain []*x509.Certificate, key crypto.Signer) error {
	if s.dir == "" {
		return nil
	}
	keyPEM, err := pki.MarshalPrivateKeyPEM(key)
	if err != nil {
		return err
	}
	if err := s.makeDir(); err != nil {
		return err
	}
	if err := atomicfile.WriteFile(filepath.Join(s.dir, keyFile), keyPEM, 0o600); err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(s.dir, svidFile), pki.EncodeCertificates(chain...), 0o600)
}

// SaveBundle writes the trust bundle in force, for the next start.
func (s *SVIDStore) SaveBundle(roots []*x509.Certificate) error {
	if s.dir == "" {
		return nil
	}
	if err := s.makeDir(); err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(s.dir, bundleFile), pki.EncodeCertificates(roots...), 0o644)
}

// makeDir creates the directory 0700, and tightens an existing one.
func (s *SVIDStore) makeDir() error {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return err
	}
	return os.Chmod(s.dir, 0o700) //nolint:gosec // a directory needs x; owner only
}

// Load takes up the agent SVID an earlier run saved, if it is still valid
// at now and its key matches, and returns it with the trust bundle saved
// beside it (nil when there is none). Missing or expired files are no
// error; corrupt or mismatched ones are logged and ignored, so that the
// agent attests anew and overwrites them.
func (s *SVIDStore) Load(now time.Time) (*tls.Certificate, []*x509.Certificate) {
	if s.dir == "" {
		return nil, nil
	}
	cert := s.read(now)
	if cert == nil {
		return nil, nil
	}
	var roots []*x509.Certificate
	if raw, err := os.ReadFile(filepath.Join(s.dir, bundleFile)); err == nil {
		if roots, err = pki.DecodeCertificates(raw, pki.PEMLimits{}); err != nil {
			s.log.Warn("ignoring a corrupt persisted trust bundle", "error", err)
			roots = nil
		}
	}
	s.hold(cert)
	return cert, roots
}

func (s *SVIDStore) read(now time.Time) *tls.Certificate {
	rawCert, err1 := os.ReadFile(filepath.Join(s.dir, svidFile))
	rawKey, err2 := os.ReadFile(filepath.Join(s.dir, keyFile))
	if err1 != nil || err2 != nil {
		if err := errors.Join(err1, err2); !errors.Is(err, fs.ErrNotExist) {
			s.log.Warn("cannot read the persisted agent SVID", "error", err)
		}
		return nil
	}
	chain, err := pki.DecodeCertificates(rawCert, pki.PEMLimits{})
	if err == nil && len(chain) == 0 {
		err = errors.New("no certificate")
	}
	if err != nil {
		s.log.Warn("ignoring a corrupt persisted agent SVID", "error", err)
		return nil
	}
	key, err := pki.ParsePrivateKeyPEM(rawKey)
	if err != nil {
		s.log.Warn("ignoring a corrupt persisted agent key", "error", err)
		return nil
	}
	if !pki.KeyMatches(chain[0], key) {
		s.log.Warn("ignoring a persisted agent key that does not match the persisted SVID", "serial", chain[0].SerialNumber.Text(16))
		return nil
	}
	if !now.Before(chain[0].NotAfter) {
		return nil
	}
	return tlsCertificate(chain, key)
}

// tlsCertificate is chain (leaf first) and key as a certificate to present.
func tlsCertificate(chain []*x509.Certificate, key crypto.Signer) *tls.Certificate {
	der := make([][]byte, len(chain))
	for i, c := range chain {
		der[i] = c.Raw
	}
	return &tls.Certificate{Certificate: der, PrivateKey: key, Leaf: chain[0]}
}
