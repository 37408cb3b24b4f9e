package caapp

import (
	"context"
	"crypto"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/cli"
	"github.com/mayfly-pki/mayfly/internal/config"
	"github.com/mayfly-pki/mayfly/internal/oidc"
)

// JWTConfig configures JWT-SVIDs and their OIDC discovery.
type JWTConfig struct {
	// KeyType of the JWT signing keys: ES256 (default), ES384 or RS256.
	KeyType string `json:"keyType,omitempty"`
	// KeyTTL is how long a JWT key signs before it rotates (default 24h;
	// at least 4h: four times the longest token).
	KeyTTL config.Duration `json:"keyTTL,omitempty"`
	// Issuer is the public https URL of the OIDC issuer; JWT-SVIDs carry
	// it as iss. Required with oidc.
	Issuer string `json:"issuer,omitempty"`
	// OIDC serves the discovery document and the JWKS at Issuer.
	OIDC *OIDCConfig `json:"oidc,omitempty"`
	// ConfigMap (Kubernetes mode) is the name of a ConfigMap in the CA's
	// namespace that the leader keeps the JWKS in (key jwks.json).
	ConfigMap string `json:"configMap,omitempty"`
}

// OIDCConfig serves /.well-known/openid-configuration and the JWKS over
// TLS.
type OIDCConfig struct {
	// ListenAddress of the HTTPS server (default 0.0.0.0:8444).
	ListenAddress string `json:"listenAddress,omitempty"`
	// CertFile and KeyFile are the server's certificate (for the issuer's
	// host name, from a public or the relying parties' CA) and key; they
	// are re-read when they change.
	CertFile string `json:"certFile"`
	KeyFile  string `json:"keyFile"`
	// MaxAge is the Cache-Control max-age of the answers (default 5m).
	MaxAge config.Duration `json:"maxAge,omitempty"`
}

// jwtRuntime is the validated JWT configuration.
type jwtRuntime struct {
	Issuer    string
	ConfigMap string
	OIDC      *OIDCConfig
	MaxAge    time.Duration
}

// validate checks fc's JWT section into c (c.Policy is set).
func (j JWTConfig) validate(c *Config) error {
	def := authority.DefaultPolicy()
	c.Policy.JWTKeyType = config.OrDefault(j.KeyType, def.JWTKeyType)
	c.Policy.JWTKeyTTL = j.KeyTTL.Or(def.JWTKeyTTL)
	c.Policy.JWTMaxTokenTTL = def.JWTMaxTokenTTL
	if err := c.Policy.Validate(); err != nil {
		return fmt.Errorf("jwt: %w", err)
	}
	c.JWT.Issuer = j.Issuer
	if c.JWT.ConfigMap = j.ConfigMap; c.JWT.ConfigMap != "" {
		if c.Kubernetes == nil {
			return errors.New("jwt.configMap: only for Kubernetes mode")
		}
		if errs := validation.IsDNS1123Subdomain(c.JWT.ConfigMap); len(errs) > 0 {
			return fmt.Errorf("jwt.configMap: %q is not a ConfigMap name: %s", c.JWT.ConfigMap, errs[0])
		}
	}
	if j.Issuer != "" {
		if err := oidc.CheckIssuer(j.Issuer); err != nil {
			return fmt.Errorf("jwt.issuer: %q %w", j.Issuer, err)
		}
	}
	o := j.OIDC
	if o == nil {
		return nil
	}
	switch {
	case j.Issuer == "":
		return errors.New("jwt.oidc: needs jwt.issuer, the public URL relying parties fetch it at")
	case o.CertFile == "" || o.KeyFile == "":
		return errors.New("jwt.oidc: certFile and keyFile are required (the discovery document is served over TLS only)")
	}
	o.ListenAddress = config.OrDefault(o.ListenAddress, "0.0.0.0:8444")
	if _, _, err := net.SplitHostPort(o.ListenAddress); err != nil {
		return fmt.Errorf("jwt.oidc.listenAddress: %w", err)
	}
	c.JWT.MaxAge = o.MaxAge.Or(5 * time.Minute)
	if c.JWT.MaxAge < 0 || c.JWT.MaxAge > time.Hour {
		return fmt.Errorf("jwt.oidc.maxAge: must be in [0, 1h], got %s", c.JWT.MaxAge)
	}
	c.JWT.OIDC = o
	return nil
}

// jwtKeys are the published JWT keys of the authority in force.
func (c *core) jwtKeys() (map[string]crypto.PublicKey, error) {
	l, err := c.authority.Current()
	if err != nil {
		return nil, err
	}
	return l.JWTKeys, nil
}

// serveOIDC serves discovery and the JWKS over TLS when configured.
func (c *core) serveOIDC(ctx context.Context, g *errgroup.Group) error {
	o := c.cfg.JWT.OIDC
	if o == nil {
		return nil
	}
	h, err := oidc.New(oidc.Config{Issuer: c.cfg.JWT.Issuer, Keys: c.jwtKeys, MaxAge: c.cfg.JWT.MaxAge})
	if err != nil {
		return err
	}
	certs := &fileCert{certFile: o.CertFile, keyFile: o.KeyFile}
	if _, err := certs.get(nil); err != nil {
		return fmt.Errorf("jwt.oidc: %w", err)
	}
	hs := &http.Server{
		Addr: o.ListenAddress, Handler: h, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 10 * time.Second, MaxHeaderBytes: 8 << 10,
		TLSConfig: &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: certs.get},
	}
	cli.ServeHTTP(ctx, g, hs, "jwt.oidc.listenAddress", shutdownGrace, func() {
		c.opts.Logger.Info("OIDC discovery listening", "address", o.ListenAddress, "issuer", c.cfg.JWT.Issuer)
	})
	return nil
}

// fileCert serves a certificate from files, re-read when either file's
// modification time changed (checked at most every 10s).
type fileCert struct {
	certFile, keyFile string

	mu      sync.Mutex
	cert    *tls.Certificate
	mod     [2]time.Time
	checked time.Time
}

func (f *fileCert) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	if f.cert != nil && now.Sub(f.checked) < 10*time.Second {
		return f.cert, nil
	}
	f.checked = now
	var mod [2]time.Time
	for i, p := range []string{f.certFile, f.keyFile} {
		st, err := os.Stat(p)
		if err != nil {
			if f.cert != nil {
				return f.cert, nil // keep serving the last good one
			}
			return nil, err
		}
		mod[i] = st.ModTime()
	}
	if f.cert != nil && mod == f.mod {
		return f.cert, nil
	}
	cert, err := tls.LoadX509KeyPair(f.certFile, f.keyFile)
	if err != nil {
		if f.cert != nil {
			return f.cert, nil
		}
		return nil, fmt.Errorf("loading %s and %s: %w", f.certFile, f.keyFile, err)
	}
	f.cert, f.mod = &cert, mod
	return f.cert, nil
}
