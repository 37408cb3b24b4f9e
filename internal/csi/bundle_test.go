package csi

import (
	"context"
	"crypto/x509"
	"errors"
	"io/fs"
	"os"
	"testing"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/mayfly-pki/mayfly/internal/test/testca"
	"github.com/mayfly-pki/mayfly/pkg/atomicfile"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// TestVolumeTakesABundleAlone: the sink a volume hands to the agent
// replaces ca.crt without a new certificate (a trust bundle change), and
// does nothing once the volume is unpublished.
func TestVolumeTakesABundleAlone(t *testing.T) {
	e := newIssuedEnv(t)
	target := e.target("pod-a")
	mustPublish(t, e.d, publishRequest(volID, target, podContext(nil)))
	e.ids.mu.Lock()
	sink, ok := e.ids.tracks[0].sink.(interface {
		PutBundle(context.Context, []*x509.Certificate) error
	})
	e.ids.mu.Unlock()
	if !ok {
		t.Fatal("the volume's sink has no PutBundle")
	}
	before, err := atomicfile.ReadAtomic(target, "tls.crt", "tls.key")
	if err != nil {
		t.Fatal(err)
	}
	next := testca.New(t)
	if err := sink.PutBundle(context.Background(), []*x509.Certificate{next.Root}); err != nil {
		t.Fatalf("PutBundle: %v", err)
	}
	after, err := atomicfile.ReadAtomic(target, "tls.crt", "tls.key", "ca.crt")
	if err != nil {
		t.Fatal(err)
	}
	if string(after[0]) != string(before[0]) || string(after[1]) != string(before[1]) {
		t.Error("PutBundle changed the certificate or key")
	}
	if roots, err := pki.DecodeCertificates(after[2], pki.PEMLimits{}); err != nil || len(roots) != 1 || !roots[0].Equal(next.Root) {
		t.Fatalf("ca.crt holds %d roots (%v), want the new bundle", len(roots), err)
	}

	if _, err := e.d.NodeUnpublishVolume(context.Background(), &csipb.NodeUnpublishVolumeRequest{VolumeId: volID, TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	if err := sink.PutBundle(context.Background(), []*x509.Certificate{next.Root}); err != nil {
		t.Fatalf("PutBundle after unpublish = %v, want nil", err)
	}
	if _, err := os.Lstat(target); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a late bundle recreated the target: %v", err)
	}
}
