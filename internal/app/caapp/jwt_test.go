package caapp_test

import (
	"strings"
	"testing"
	"time"

	"github.com/mayfly-pki/mayfly/internal/app/caapp"
)

func TestJWTConfig(t *testing.T) {
	base := "trustDomain: example.org\ndirectory: /tmp/ca\n"
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{name: "defaults", yaml: ""},
		{name: "ES384 with a 48h key and OIDC", yaml: "jwt: {keyType: ES384, keyTTL: 48h, issuer: https://oidc.example.org, oidc: {certFile: /c, keyFile: /k}}"},
		{name: "unknown key type", yaml: "jwt: {keyType: HS256}", want: "rotation.jwtKeyType"},
		{name: "key TTL below four tokens", yaml: "jwt: {keyTTL: 1h}", want: "rotation.jwtKeyTTL"},
		{name: "plain http issuer", yaml: "jwt: {issuer: http://oidc.example.org}", want: "jwt.issuer"},
		{name: "issuer with a trailing slash", yaml: "jwt: {issuer: https://oidc.example.org/}", want: "jwt.issuer"},
		{name: "oidc without issuer", yaml: "jwt: {oidc: {certFile: /c, keyFile: /k}}", want: "needs jwt.issuer"},
		{name: "oidc without TLS files", yaml: "jwt: {issuer: https://o.example, oidc: {}}", want: "certFile and keyFile"},
		{name: "oidc max-age above an hour", yaml: "jwt: {issuer: https://o.example, oidc: {certFile: /c, keyFile: /k, maxAge: 2h}}", want: "jwt.oidc.maxAge"},
		{name: "configMap standalone", yaml: "jwt: {configMap: jwks}", want: "only for Kubernetes mode"},
		{name: "unknown field", yaml: "jwt: {issuerURL: https://o.example}", want: "issuerURL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := caapp.Parse([]byte(base + tc.yaml))
			if tc.want != "" {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("err %v, want one naming %q", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.Policy.JWTKeyType == "" || c.Policy.JWTKeyTTL < 4*time.Hour {
				t.Fatalf("JWT policy not defaulted: %+v", c.Policy)
			}
		})
	}
}
