// Package oidc serves the CA's JWT keys the way OIDC relying parties fetch
// them: the discovery document at <issuer>/.well-known/openid-configuration
// and the JWKS it names (<issuer>/keys), so that a cloud provider's workload
// identity federation or Vault's JWT auth can verify JWT-SVIDs. The answers
// are cacheable: Cache-Control max-age (short, so that a newly published
// key is seen long before it signs), an ETag of the content, and 304 for a
// matching If-None-Match. Only GET and HEAD are served.
package oidc

import (
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/mayfly-pki/mayfly/pkg/jwtsvid"
)

// Paths below the issuer URL's path.
const (
	DiscoveryPath = "/.well-known/openid-configuration"
	KeysPath      = "/keys"
)

// KeySource gives the published JWT keys by kid (authority.Loaded.JWTKeys).
type KeySource func() (map[string]crypto.PublicKey, error)

// Config configures a Handler.
type Config struct {
	// Issuer is the public issuer URL (https, no query or fragment); the
	// JWT-SVIDs carry it as iss.
	Issuer string
	Keys   KeySource
	// MaxAge is the Cache-Control max-age (default 5m). A verifier that
	// caches this long still sees a new key well before it signs: the next
	// key is published for a sixth of the key's life before it activates.
	MaxAge time.Duration
}

// CheckIssuer checks an issuer URL: https, a host, no query, fragment or
// user info, no trailing slash.
func CheckIssuer(issuer string) error {
	u, err := url.Parse(issuer)
	switch {
	case err != nil:
		return fmt.Errorf("not a URL: %w", err)
	case u.Scheme != "https":
		return errors.New("must be an https URL")
	case u.Host == "":
		return errors.New("has no host")
	case u.RawQuery != "" || u.Fragment != "" || u.User != nil:
		return errors.New("must have no query, fragment or user info")
	case strings.HasSuffix(u.Path, "/"):
		return errors.New("must not end with /")
	}
	return nil
}

// Handler serves discovery and keys.
type Handler struct {
	cfg  Config
	path string // the issuer URL's path
	disc []byte
	tag  string
	keys atomic.Pointer[encoded]
}

type encoded struct {
	body []byte
	etag string
}

// New returns a Handler for cfg.
func New(cfg Config) (*Handler, error) {
	if err := CheckIssuer(cfg.Issuer); err != nil {
		return nil, fmt.Errorf("oidc: issuer %q: %w", cfg.Issuer, err)
	}
	if cfg.Keys == nil {
		return nil, errors.New("oidc: no key source")
	}
	if cfg.MaxAge == 0 {
		cfg.MaxAge = 5 * time.Minute
	}
	u, _ := url.Parse(cfg.Issuer)
	algs := make([]string, len(jwtsvid.Algorithms))
	for i, a := range jwtsvid.Algorithms {
		algs[i] = string(a)
	}
	disc, err := json.Marshal(map[string]any{
		"issuer":                                cfg.Issuer,
		"jwks_uri":                              cfg.Issuer + KeysPath,
		"response_types_supported":              []string{"id_token"},
		"subject_types_supported":               []string{"public"},
		"id_token_signing_alg_values_supported": algs,
		"claims_supported":                      []string{"sub", "aud", "exp", "iat", "iss"},
	})
	if err != nil {
		return nil, err
	}
	return &Handler{cfg: cfg, path: u.Path, disc: disc, tag: etag(disc)}, nil
}

func etag(b []byte) string {
	h := sha256.Sum256(b)
	return `"` + hex.EncodeToString(h[:12]) + `"`
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	switch r.URL.Path {
	case h.path + DiscoveryPath:
		h.write(w, r, h.disc, h.tag)
	case h.path + KeysPath:
		e, err := h.jwks()
		if err != nil {
			w.Header().Set("Cache-Control", "no-store")
			http.Error(w, "keys are not available", http.StatusServiceUnavailable)
			return
		}
		h.write(w, r, e.body, e.etag)
	default:
		http.NotFound(w, r)
	}
}

// jwks encodes the keys in force, reusing the last encoding while they are
// the same.
func (h *Handler) jwks() (*encoded, error) {
	keys, err := h.cfg.Keys()
	if err != nil {
		return nil, err
	}
	body, err := json.Marshal(jwtsvid.JWKS(keys, "sig"))
	if err != nil {
		return nil, err
	}
	if cur := h.keys.Load(); cur != nil && string(cur.body) == string(body) {
		return cur, nil
	}
	e := &encoded{body: body, etag: etag(body)}
	h.keys.Store(e)
	return e, nil
}

func (h *Handler) write(w http.ResponseWriter, r *http.Request, body []byte, tag string) {
	hd := w.Header()
	hd.Set("Content-Type", "application/json")
	hd.Set("Cache-Control", fmt.Sprintf("public, max-age=%d", int(h.cfg.MaxAge/time.Second)))
	hd.Set("ETag", tag)
	hd.Set("X-Content-Type-Options", "nosniff")
	if match := r.Header.Get("If-None-Match"); match != "" && match == tag {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	hd.Set("Content-Length", fmt.Sprint(len(body)))
	if r.Method == http.MethodHead {
		return
	}
	_, _ = w.Write(body)
}

// JWKS returns the JWKS document of keys, as the keys endpoint serves it
// (for publishing it elsewhere, a ConfigMap say).
func JWKS(keys map[string]crypto.PublicKey) ([]byte, error) {
	return json.Marshal(jwtsvid.JWKS(keys, "sig"))
}
