package upstream

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	cferr "github.com/cloudflare/cfssl/errors"
	"github.com/smallstep/certificates/errs"

	"github.com/mayfly-pki/mayfly/internal/config"
)

// FuzzConfig: the upstream section as users write it (YAML or JSON),
// decoded strictly and validated. Whatever the input, no panic; a config
// that validates names exactly one upstream, remote ones over https with
// their required files.
func FuzzConfig(f *testing.F) {
	f.Add([]byte("file: {certFile: /u/ca.crt, keyFile: /u/ca.key}\n"))
	f.Add([]byte("stepCA: {url: https://step:9000, rootFile: /s/root.crt, provisioner: mayfly, jwk: {keyFile: /s/p.jwk}, timeout: 30s}\n"))
	f.Add([]byte("stepCA: {url: https://step:9000, rootFile: /r, provisioner: p, x5c: {certFile: /c, keyFile: /k}}\n"))
	f.Add([]byte(`{"cfssl":{"url":"https://cfssl:8888","caFile":"/c","authKeyFile":"/k","bundleFile":"/b","profile":"intermediate"}}`))
	f.Add([]byte("cfssl: {url: http://cfssl:8888, caFile: /c, authKeyFile: /k, bundleFile: /b}\n"))
	f.Add([]byte("file: {}\nstepCA: {}\n"))
	f.Add([]byte("stepCA: {url: 'https://[::1', timeout: -1s}\n"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		c, err := config.Parse(raw, "upstream", func(c *Config) (*Config, error) { return c, c.Validate() })
		if err != nil {
			if err.Error() == "" {
				t.Fatal("an empty error")
			}
			return
		}
		n := 0
		for _, set := range []bool{c.File != nil, c.StepCA != nil, c.CFSSL != nil} {
			if set {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("accepted %d upstreams", n)
		}
		switch {
		case c.StepCA != nil:
			s := c.StepCA
			if !strings.HasPrefix(s.URL, "https://") || s.RootFile == "" || s.Provisioner == "" || (s.JWK == nil) == (s.X5C == nil) || s.Timeout.Duration < 0 {
				t.Fatalf("accepted stepCA %+v", s)
			}
		case c.CFSSL != nil:
			s := c.CFSSL
			if !strings.HasPrefix(s.URL, "https://") || s.CAFile == "" || s.AuthKeyFile == "" || s.BundleFile == "" || s.Timeout.Duration < 0 {
				t.Fatalf("accepted cfssl %+v", s)
			}
		case c.File != nil:
			if c.File.CertFile == "" || c.File.KeyFile == "" {
				t.Fatalf("accepted file %+v", c.File)
			}
		}
	})
}

// FuzzCFSSLExplain: whatever a cfssl server (or a proxy before it) answers,
// the error mayfly makes of it says something and never panics; an answer
// in cfssl's JSON form is explained with its code.
func FuzzCFSSLExplain(f *testing.F) {
	for _, seed := range []struct {
		code int
		msg  string
	}{
		{7400, `{"success":false,"result":null,"errors":[{"code":400,"message":"invalid token"}],"messages":[]}`},
		{7400, `{"success":false,"errors":[{"code":5300,"message":"Policy violation request"}]}`},
		{7400, `{"success":false,"errors":[{"code":5200,"message":"Unknown profile"}]}`},
		{7400, `{"success":false,"errors":[{"code":9002,"message":"decode failed"}]}`},
		{7400, `{"success":false,"errors":[{"code":400,"message":"no authentication provider"}]}`},
		{7400, `{"errors":[]}`},
		{7400, `<html>502 Bad Gateway</html>`},
		{7000, `failed POST to https://cfssl/api/v1/cfssl/authsign: dial tcp: connection refused`},
		{7000, `Client.Timeout exceeded while awaiting headers`},
		{7400, `{"errors":[{"code":-2147483648,"message":""}]}`},
	} {
		f.Add(seed.code, seed.msg)
	}
	c := &CFSSL{cfg: CFSSLConfig{Profile: "intermediate"}, timeout: 30 * time.Second}
	f.Fuzz(func(t *testing.T, code int, msg string) {
		err := c.explain(&cferr.Error{ErrorCode: code, Message: msg})
		if err == nil || err.Error() == "" {
			t.Fatal("no explanation")
		}
		var resp cfsslResponse
		if json.Unmarshal([]byte(msg), &resp) == nil && len(resp.Errors) > 0 && !strings.Contains(err.Error(), "cfssl code") {
			t.Fatalf("a cfssl JSON answer explained without its code: %v", err)
		}
		if err := c.explain(errors.New(msg)); err == nil || !strings.HasPrefix(err.Error(), "cfssl: ") {
			t.Fatalf("a transport error explained as %v", err)
		}
	})
}

// FuzzStepCAExplain: the same for step-ca's answers.
func FuzzStepCAExplain(f *testing.F) {
	f.Add(http.StatusUnauthorized, "The request lacked necessary authorization to be completed")
	f.Add(http.StatusForbidden, "requested duration of 720h0m0s is more than the authorized maximum certificate duration of 24h0m0s")
	f.Add(http.StatusBadRequest, "")
	f.Add(0, "\x00")
	s := &StepCA{cfg: StepCAConfig{Provisioner: "mayfly"}, timeout: 30 * time.Second}
	f.Fuzz(func(t *testing.T, status int, msg string) {
		err := s.explain(&errs.Error{Status: status, Msg: msg})
		if err == nil || err.Error() == "" {
			t.Fatal("no explanation")
		}
	})
}
