package upstream_test

import (
	"context"
	"testing"
	"time"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/test/testca"
	"github.com/mayfly-pki/mayfly/internal/upstream"
	"github.com/mayfly-pki/mayfly/internal/upstream/upstreamtest"
)

// BenchmarkRenewIntermediate is the time to renew the intermediate from
// each upstream, in-process over loopback TLS: key generation, the
// upstream's signing and mayfly's checks of the answer. The file upstream
// (no network) is the baseline of the same run.
func BenchmarkRenewIntermediate(b *testing.B) {
	dir := b.TempDir()
	root := upstreamtest.NewCA(b, "Corp root", nil, -1)
	file := &upstream.Config{File: &upstream.FileConfig{
		CertFile: upstreamtest.WriteCert(b, dir, "ca.crt", root.Cert),
		KeyFile:  upstreamtest.WriteKey(b, dir, "ca.key", root.Key),
	}}
	step := upstreamtest.NewStepCA(b, upstreamtest.StepCAOptions{})
	cf := upstreamtest.NewCFSSL(b, upstreamtest.CFSSLOptions{})
	for _, bc := range []struct {
		name string
		cfg  *upstream.Config
	}{
		{"file", file},
		{"step-ca", &upstream.Config{StepCA: &step.Config}},
		{"cfssl", &upstream.Config{CFSSL: &cf.Config}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			u := newUpstream(b, bc.cfg, nil)
			ctx := context.Background()
			for b.Loop() {
				key := testca.Key(b)
				chain, roots, err := u.SignIntermediate(ctx, authority.IntermediateRequest{TrustDomain: td, Key: key, TTL: 48 * time.Hour})
				if err != nil {
					b.Fatal(err)
				}
				if err := authority.CheckUpstreamResult(authority.UpstreamResult{Slot: &authority.Slot{Chain: chain, Key: key}, Roots: roots, TrustDomain: td, Now: time.Now()}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
