// Command demo-files is the file half of `make demo`: a server and a client
// that know nothing of SPIFFE, as nginx or a JVM, doing mutual TLS every
// interval from the agent's writeDir files (tls.crt, tls.key and ca.crt,
// read anew for each handshake, the peer verified against ca.crt alone).
// It prints each handshake that fails, and each time a directory's ca.crt
// or the root above its leaf changes (with a t=<unix seconds> stamp for
// the demo's timings). It exits non-zero if any handshake failed.
//
// With --serve or --connect it is one half alone, in a program (a pod) of
// its own: the server on an address, or the client connecting to it every
// interval, each from the certificate directory --dir (a CSI volume, a
// mounted Secret). make e2e-node runs the two halves in two pods.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log"
	"net"
	"path/filepath"
	"time"

	"github.com/mayfly-pki/mayfly/internal/cli"
	"github.com/mayfly-pki/mayfly/internal/demo"
	"github.com/mayfly-pki/mayfly/internal/fileconsumer"
)

func main() {
	writeDir := flag.String("write-dir", "", "the agent's writeDir")
	serverID := flag.String("server-id", "spiffe://example.org/demo/files-server", "SPIFFE ID whose directory the server uses")
	clientID := flag.String("client-id", "spiffe://example.org/demo/files-client", "SPIFFE ID whose directory the client uses")
	every := flag.Duration("interval", 500*time.Millisecond, "time between handshakes")
	serve := flag.String("serve", "", "serve mutual TLS on this address from --dir (the server half alone)")
	connect := flag.String("connect", "", "connect to this address every interval from --dir (the client half alone)")
	dir := flag.String("dir", "", "the certificate directory of --serve or --connect")
	flag.Parse()
	if *serve != "" || *connect != "" {
		if *dir == "" || (*serve != "" && *connect != "") {
			log.Fatal("demo-files: --serve or --connect takes --dir, and not both")
		}
		ok, failed, err := half(*serve, *connect, *dir, *every)
		demo.Finish("demo-files", ok, failed, err)
		return
	}
	if *writeDir == "" {
		log.Fatal("demo-files: --write-dir is required")
	}
	ok, failed, err := run(*writeDir, *serverID, *clientID, *every)
	demo.Finish("demo-files", ok, failed, err)
}

func run(writeDir, serverID, clientID string, every time.Duration) (ok, failed int, err error) {
	ctx, stop := cli.SignalContext()
	defer stop()
	dirs, err := findDirs(ctx, writeDir, serverID, clientID)
	if err != nil {
		return 0, 0, err
	}
	pair, err := fileconsumer.Listen(dirs[serverID], dirs[clientID])
	if err != nil {
		return 0, 0, err
	}
	defer pair.Close()
	fmt.Printf("demo-files: server reads %s, client reads %s\n", dirs[serverID], dirs[clientID])
	changes := demo.Changes{}
	dirOf := map[string]string{"files/server": dirs[serverID], "files/client": dirs[clientID]}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		now := time.Now()
		if err := pair.Handshake(); err != nil {
			failed++
			fmt.Printf("%s [files] handshake FAILED: %v\n", now.Format("15:04:05.000"), err)
		} else {
			ok++
		}
		for _, name := range []string{"files/server", "files/client"} {
			report(changes, name, dirOf[name], now)
		}
		select {
		case <-ctx.Done():
			return ok, failed, nil
		case <-tick.C:
		}
	}
}

// half runs the server (serve) or the client (connect) alone until a
// signal, printing each handshake and what changed in dir.
func half(serve, connect, dir string, every time.Duration) (ok, failed int, err error) {
	ctx, stop := cli.SignalContext()
	defer stop()
	name := "files/client"
	outcomes := make(chan error, 16)
	if serve != "" {
		name = "files/server"
		lis, err := net.Listen("tcp", serve)
		if err != nil {
			return 0, 0, err
		}
		defer lis.Close()
		go fileconsumer.Serve(lis, dir, func(err error) { outcomes <- err })
		fmt.Printf("demo-files: serving mutual TLS on %s from %s\n", serve, dir)
	}
	changes := demo.Changes{}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		var err error
		select {
		case <-ctx.Done():
			return ok, failed, nil
		case err = <-outcomes:
		case <-tick.C:
			if serve != "" {
				report(changes, name, dir, time.Now())
				continue
			}
			err = fileconsumer.Dial(connect, dir)
		}
		now := time.Now()
		if err != nil {
			failed++
			fmt.Printf("%s [%s] handshake FAILED: %v\n", now.Format("15:04:05.000"), name, err)
		} else {
			ok++
			fmt.Printf("%s [%s] handshake ok\n", now.Format("15:04:05.000"), name)
		}
		report(changes, name, dir, now)
	}
}

// report prints what changed in the directory dir (the place name) since
// the last look: its ca.crt, and the root above its leaf.
func report(changes demo.Changes, name, dir string, now time.Time) {
	f, err := fileconsumer.Read(dir)
	if err != nil {
		return // mid-swap or gone: the next look tells
	}
	changes.Print(now, name, "ca.crt now holds", fmt.Sprintf("%d roots: %s", len(f.Roots), demo.Fingerprints(f.Roots)))
	changes.Print(now, name, "leaf now under root", demo.RootOf(f.Chain, f.Roots))
}

// findDirs waits for a certificate directory under writeDir for each ID,
// recognised by the SPIFFE ID of the leaf it holds.
func findDirs(ctx context.Context, writeDir string, ids ...string) (map[string]string, error) {
	out := map[string]string{}
	for {
		_ = filepath.WalkDir(writeDir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.Name() != fileconsumer.CertFile || filepath.Base(filepath.Dir(path))[0] == '.' {
				return nil
			}
			if f, err := fileconsumer.Read(filepath.Dir(path)); err == nil && len(f.Chain[0].URIs) == 1 {
				out[f.Chain[0].URIs[0].String()] = filepath.Dir(path)
			}
			return nil
		})
		missing := ""
		for _, id := range ids {
			if out[id] == "" {
				missing = id
			}
		}
		if missing == "" {
			return out, nil
		}
		select {
		case <-ctx.Done():
			return nil, errors.New("no directory for " + missing + " under " + writeDir)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
