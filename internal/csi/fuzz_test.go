package csi

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// FuzzParsePublish feeds volume attributes and kubelet tokens, which pod
// authors control, to the request parser: it must never panic, reject with
// errInvalid only, and never put the token into an error.
func FuzzParsePublish(f *testing.F) {
	f.Add("dnsNames", "a.b,c.d", `{"mayfly-ca":{"token":"t"}}`)
	f.Add("certFile", "../x", `{`)
	f.Add("ttl", "1h", `{"mayfly-ca":{"token":""}}`)
	f.Add("mode", "socket", `[]`)
	f.Add("fsGroup", "-1", `{"mayfly-ca":null}`)
	f.Add("keyType", "ed25519", `{"mayfly-ca":{"token":"a.eyJleHAiOjE3OTk5OTk5OTl9.TOKEN"}}`)
	f.Add("ttl", "30m", `{"mayfly-ca":{"token":"TOKEN","expirationTimestamp":"2030-01-01T00:00:00Z"}}`)
	f.Add("jwtAudience", "vault, https://sts.example.com", `{}`)
	f.Add("jwtAudience", "a,,b", `{}`)
	lim := limits{minTTL: 5 * time.Minute, maxTTL: 24 * time.Hour, tokenAudience: DefaultTokenAudience, kubeletDir: DefaultKubeletDir}
	f.Fuzz(func(t *testing.T, key, value, tokens string) {
		const secret = "SECRET-TOKEN-VALUE"
		tokens = strings.ReplaceAll(tokens, "TOKEN", secret)
		req := publishRequest(volID, "/var/lib/kubelet/pods/"+testPodUID+"/volumes/kubernetes.io~csi/v/mount", podContext(map[string]string{key: value, ctxTokens: tokens}))
		p, err := parsePublish(req, lim)
		if err != nil {
			if !errors.Is(err, errInvalid) {
				t.Fatalf("error without errInvalid: %v", err)
			}
			if strings.Contains(err.Error(), secret) {
				t.Fatalf("error leaks the token: %v", err)
			}
			return
		}
		if p.rec.Mode == ModeFiles {
			for _, n := range []string{p.rec.Files.CertFile, p.rec.Files.KeyFile, p.rec.Files.BundleFile} {
				if n == "" || strings.Contains(n, "/") || strings.HasPrefix(n, "..") {
					t.Fatalf("accepted file name %q", n)
				}
			}
			if aud := p.rec.Files.JWTAudience; aud != nil && checkJWTAudience(aud) != nil {
				t.Fatalf("accepted audiences %q that a record would refuse", aud)
			}
		}
	})
}
