// Package demo holds what the demo workloads (cmd/demo-server, demo-client and
// demo-files) share: their two SPIFFE IDs, an X.509 source from
// the Workload API that serves the workload's own SVID, and their output:
// the names of roots, the lines printed on a change, the handshake summary.
package demo

import (
	"context"
	"flag"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/mayfly-pki/mayfly/internal/cli"
)

// IDs are a demo workload's own SPIFFE ID and the only peer ID it accepts.
type IDs struct {
	Self, Peer spiffeid.ID
}

// IDFlags adds this workload's --id and its peer's --<peer>-id to the
// command line, defaulting to spiffe://example.org/demo/<self> and
// /demo/<peer>; the function it returns parses them after flag.Parse.
func IDFlags(self, peer string) func() (IDs, error) {
	selfID := flag.String("id", "spiffe://example.org/demo/"+self, "this "+self+"'s SPIFFE ID")
	peerID := flag.String(peer+"-id", "spiffe://example.org/demo/"+peer, "the only "+peer+" SPIFFE ID accepted")
	return func() (IDs, error) { return ParseIDs(*selfID, *peerID, peer+"-id") }
}

// ParseIDs parses the --id flag and the peer's flag (named peerFlag in
// errors).
func ParseIDs(self, peer, peerFlag string) (IDs, error) {
	var ids IDs
	var err error
	if ids.Self, err = spiffeid.FromString(self); err != nil {
		return IDs{}, fmt.Errorf("--id: %w", err)
	}
	if ids.Peer, err = spiffeid.FromString(peer); err != nil {
		return IDs{}, fmt.Errorf("--%s: %w", peerFlag, err)
	}
	return ids, nil
}

// Run is the main of a demo workload of the Workload API: it parses the
// command line, with the ID flags of IDFlags(self, peer), and calls run
// with a context that ends on SIGINT or SIGTERM, the IDs and the
// workload's X.509 source (NewSource), closed when run returns.
func Run(self, peer string, run func(ctx context.Context, ids IDs, src *workloadapi.X509Source) error) error {
	parseIDs := IDFlags(self, peer)
	flag.Parse()
	ids, err := parseIDs()
	if err != nil {
		return err
	}
	ctx, stop := cli.SignalContext()
	defer stop()
	src, err := NewSource(ctx, ids.Self)
	if err != nil {
		return err
	}
	defer src.Close()
	return run(ctx, ids, src)
}

// NewSource connects to the Workload API at SPIFFE_ENDPOINT_SOCKET. The
// agent may hand the process several SVIDs; the source serves the one of
// self, or the first when none has that ID.
func NewSource(ctx context.Context, self spiffeid.ID) (*workloadapi.X509Source, error) {
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithDefaultX509SVIDPicker(func(svids []*x509svid.SVID) *x509svid.SVID {
		for _, s := range svids {
			if s.ID == self {
				return s
			}
		}
		return svids[0]
	}))
	if err != nil {
		return nil, fmt.Errorf("workload API: %w", err)
	}
	return src, nil
}
