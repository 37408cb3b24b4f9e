package upstream

import (
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/config"
)

// DefaultTimeout bounds one request to a remote upstream.
const DefaultTimeout = 30 * time.Second

// Config selects the upstream authority (the CA config's upstream): set
// exactly one of its fields.
type Config struct {
	// File is a CA certificate and key on disk; mayfly re-reads them when
	// they change.
	File *FileConfig `json:"file,omitempty"`
	// StepCA is a step-ca that signs the intermediate for a provisioner.
	StepCA *StepCAConfig `json:"stepCA,omitempty"`
	// CFSSL is a cfssl server's authenticated sign API.
	CFSSL *CFSSLConfig `json:"cfssl,omitempty"`
}

// FileConfig names the PEM files of an upstream CA.
type FileConfig struct {
	CertFile string `json:"certFile"`
	KeyFile  string `json:"keyFile"`
	// BundleFile holds the roots above CertFile; default: CertFile is the root.
	BundleFile string `json:"bundleFile,omitempty"`
}

// StepCAConfig reaches a step-ca.
type StepCAConfig struct {
	// URL of the step-ca, https://host:port.
	URL string `json:"url"`
	// RootFile holds the step-ca's root certificate(s): the TLS connection
	// is verified against them. The roots in mayfly's bundle are what the
	// step-ca lists at /roots, fetched over that connection.
	RootFile string `json:"rootFile"`
	// Provisioner is the name of the step-ca provisioner.
	Provisioner string `json:"provisioner"`
	// JWK signs the request tokens with a JWK provisioner's private key.
	JWK *StepCAJWK `json:"jwk,omitempty"`
	// X5C signs them with a certificate (and key) that chains to one of
	// the roots of an X5C provisioner.
	X5C *StepCAX5C `json:"x5c,omitempty"`
	// Timeout of one request (default 30s).
	Timeout config.Duration `json:"timeout,omitempty"`
}

// StepCAJWK is a JWK provisioner's private key.
type StepCAJWK struct {
	// KeyFile is the private JWK (JSON), or the encrypted JWE step writes
	// (then PasswordFile is required).
	KeyFile      string `json:"keyFile"`
	PasswordFile string `json:"passwordFile,omitempty"`
}

// StepCAX5C is a certificate for an X5C provisioner.
type StepCAX5C struct {
	// CertFile is the certificate and the intermediates above it (PEM).
	CertFile string `json:"certFile"`
	KeyFile  string `json:"keyFile"`
}

// CFSSLConfig reaches a cfssl server's /api/v1/cfssl/authsign.
type CFSSLConfig struct {
	// URL of the cfssl server, https://host:port (plain http is refused:
	// cfssl's token authenticates a request but does not hide it).
	URL string `json:"url"`
	// CAFile verifies the cfssl server's TLS certificate.
	CAFile string `json:"caFile"`
	// AuthKeyFile holds the hex key of the profile's auth_key (cfssl's
	// "standard" HMAC provider).
	AuthKeyFile string `json:"authKeyFile"`
	// Profile is the cfssl signing profile that makes intermediates
	// (default "intermediate"). cfssl signs with its default profile when
	// the name is unknown: mayfly then refuses the leaf that comes back.
	Profile string `json:"profile,omitempty"`
	// BundleFile holds the certificates above cfssl's signing CA: its
	// intermediates, if any, and the root(s). Re-read at every request, so
	// a new root reaches the bundle without a restart.
	BundleFile string `json:"bundleFile"`
	// Timeout of one request (default 30s).
	Timeout config.Duration `json:"timeout,omitempty"`
}

// Validate names the first field that is missing or wrong.
func (c *Config) Validate() error {
	n := 0
	for _, set := range []bool{c.File != nil, c.StepCA != nil, c.CFSSL != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		return errors.New("upstream: set exactly one of file, stepCA, cfssl")
	}
	switch {
	case c.File != nil:
		if c.File.CertFile == "" || c.File.KeyFile == "" {
			return errors.New("upstream.file: certFile and keyFile are required")
		}
	case c.StepCA != nil:
		s := c.StepCA
		if err := checkHTTPS("upstream.stepCA.url", s.URL); err != nil {
			return err
		}
		switch {
		case s.RootFile == "":
			return errors.New("upstream.stepCA.rootFile: required (the step-ca's root, to verify its TLS certificate)")
		case s.Provisioner == "":
			return errors.New("upstream.stepCA.provisioner: required")
		case (s.JWK == nil) == (s.X5C == nil):
			return errors.New("upstream.stepCA: set exactly one of jwk, x5c")
		case s.JWK != nil && s.JWK.KeyFile == "":
			return errors.New("upstream.stepCA.jwk.keyFile: required")
		case s.X5C != nil && (s.X5C.CertFile == "" || s.X5C.KeyFile == ""):
			return errors.New("upstream.stepCA.x5c: certFile and keyFile are required")
		case s.Timeout.Duration < 0:
			return fmt.Errorf("upstream.stepCA.timeout: must not be negative, got %s", s.Timeout.Duration)
		}
	case c.CFSSL != nil:
		s := c.CFSSL
		if err := checkHTTPS("upstream.cfssl.url", s.URL); err != nil {
			return err
		}
		switch {
		case s.CAFile == "":
			return errors.New("upstream.cfssl.caFile: required (to verify the cfssl server's TLS certificate)")
		case s.AuthKeyFile == "":
			return errors.New("upstream.cfssl.authKeyFile: required (the hex key of the profile's auth_key)")
		case s.BundleFile == "":
			return errors.New("upstream.cfssl.bundleFile: required (the root(s) above cfssl's signing CA)")
		case s.Timeout.Duration < 0:
			return fmt.Errorf("upstream.cfssl.timeout: must not be negative, got %s", s.Timeout.Duration)
		}
	}
	return nil
}

func checkHTTPS(field, raw string) error {
	u, err := url.Parse(raw)
	switch {
	case raw == "":
		return fmt.Errorf("%s: required", field)
	case err != nil:
		return fmt.Errorf("%s: %w", field, err)
	case u.Scheme != "https" || u.Host == "":
		return fmt.Errorf("%s: %q must be https://host[:port]", field, raw)
	}
	return nil
}

// New returns the configured upstream (c must be valid). now is the CA's
// clock: certificates are checked against it and intermediates dated by it.
func New(c *Config, now func() time.Time) (authority.Upstream, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if now == nil {
		now = time.Now
	}
	switch {
	case c.StepCA != nil:
		return NewStepCA(*c.StepCA, now)
	case c.CFSSL != nil:
		return NewCFSSL(*c.CFSSL, now)
	default:
		return NewFile(*c.File, now)
	}
}

func timeoutOr(d config.Duration) time.Duration {
	if d.Duration == 0 {
		return DefaultTimeout
	}
	return d.Duration
}
