// Package fileconsumer is a TLS program that knows nothing of SPIFFE or
// mayfly, as nginx, a JVM or a database is: it reads tls.crt, tls.key and
// ca.crt from a directory for every handshake (as a reload would) and
// verifies its peer with crypto/x509 against ca.crt alone. Tests and the
// demo use it to see certificate directories the way such programs do; it
// imports nothing from mayfly.
package fileconsumer

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"
)

// File names in a certificate directory, as in a kubernetes.io/tls Secret.
const (
	CertFile   = "tls.crt"
	KeyFile    = "tls.key"
	BundleFile = "ca.crt"
)

// Files is what a directory held at one read.
type Files struct {
	Pair  tls.Certificate
	Chain []*x509.Certificate // leaf first
	Roots []*x509.Certificate
}

// Read reads dir's three files. A directory whose files are symlinks into
// a version directory (kubelet's atomic writer layout, which mayfly writes
// too) is read from the version tls.crt resolves to, so that the three
// files belong together even while a new version is swapped in.
func Read(dir string) (*Files, error) {
	if real, err := filepath.EvalSymlinks(filepath.Join(dir, CertFile)); err == nil {
		dir = filepath.Dir(real)
	}
	certPEM, err := os.ReadFile(filepath.Join(dir, CertFile))
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, KeyFile))
	if err != nil {
		return nil, err
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, BundleFile))
	if err != nil {
		return nil, err
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	f := &Files{Pair: pair}
	for _, der := range pair.Certificate {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Join(dir, CertFile), err)
		}
		f.Chain = append(f.Chain, c)
	}
	for rest := caPEM; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Join(dir, BundleFile), err)
		}
		f.Roots = append(f.Roots, c)
	}
	if len(f.Roots) == 0 {
		return nil, fmt.Errorf("%s: no certificate", filepath.Join(dir, BundleFile))
	}
	return f, nil
}

// verify checks a peer's chain against roots only.
func verify(roots, peer []*x509.Certificate) error {
	if len(peer) == 0 {
		return errors.New("the peer sent no certificate")
	}
	pool, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	for _, c := range peer[1:] {
		inter.AddCert(c)
	}
	_, err := peer[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err
}

func config(dir string) (*tls.Config, error) {
	f, err := Read(dir)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates: []tls.Certificate{f.Pair},
		MinVersion:   tls.VersionTLS12,
		// The peer is verified against ca.crt below; a SPIFFE certificate
		// has no host name to check.
		InsecureSkipVerify: true, //nolint:gosec // VerifyPeerCertificate verifies the chain
		ClientAuth:         tls.RequireAnyClientCert,
		// Every handshake is a full one, as after a reload.
		SessionTicketsDisabled: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verify(f.Roots, cs.PeerCertificates)
		},
	}, nil
}

// Pair is a server and a client doing mutual TLS on the loopback, each
// from its own directory.
type Pair struct {
	serverDir, clientDir string
	lis                  net.Listener
	results              chan error // the server's outcome of each connection
}

// Listen starts the server half on 127.0.0.1 with the files of serverDir;
// Handshake connects the client half with those of clientDir.
func Listen(serverDir, clientDir string) (*Pair, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Pair{serverDir: serverDir, clientDir: clientDir, lis: lis, results: make(chan error, 1)}
	go p.serve()
	return p, nil
}

// Close stops the server.
func (p *Pair) Close() error { return p.lis.Close() }

func (p *Pair) serve() {
	for {
		conn, err := p.lis.Accept()
		if err != nil {
			return
		}
		err = p.accept(conn)
		select {
		case p.results <- err:
		default:
		}
	}
}

func (p *Pair) accept(conn net.Conn) error { return accept(conn, p.serverDir) }

// accept does the server half of one connection with dir's files.
func accept(conn net.Conn, dir string) error {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	tc := tls.Server(conn, &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return config(dir) // anew for each handshake
		},
	})
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("server: %w", err)
	}
	_, err := tc.Write([]byte("ok"))
	return err
}

// Serve is a server alone (the two halves in two programs): it accepts
// connections on lis until lis is closed, each handshake with dir's files
// read anew, and hands report the outcome of each.
func Serve(lis net.Listener, dir string, report func(error)) {
	for {
		conn, err := lis.Accept()
		if err != nil {
			return
		}
		report(accept(conn, dir))
	}
}

// Dial is a client alone: one connection to addr with dir's files read
// anew, which fails when either side refused the other.
func Dial(addr, dir string) error {
	cfg, err := config(dir)
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	tc := tls.Client(conn, cfg)
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("client: %w", err)
	}
	buf := make([]byte, 2)
	if _, err := io.ReadFull(tc, buf); err != nil { // the server's verdict on our certificate (TLS 1.3)
		return fmt.Errorf("client: the server refused or closed: %w", err)
	}
	return nil
}

// Handshake opens one connection, with both sides reading their files
// anew, and returns the failures of either side.
func (p *Pair) Handshake() error {
	select {
	case stale := <-p.results:
		_ = stale // of a connection that was not ours
	default:
	}
	cfg, err := config(p.clientDir)
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	conn, err := net.DialTimeout("tcp", p.lis.Addr().String(), 5*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	tc := tls.Client(conn, cfg)
	clientErr := tc.Handshake()
	if clientErr == nil {
		buf := make([]byte, 2)
		_, clientErr = tc.Read(buf) // the server's verdict on our certificate (TLS 1.3)
	}
	var serverErr error
	select {
	case serverErr = <-p.results:
	case <-time.After(5 * time.Second):
		serverErr = errors.New("server: no outcome in 5s")
	}
	if clientErr != nil {
		clientErr = fmt.Errorf("client: %w", clientErr)
	}
	// Both sides, as the one that refused says why and the other only
	// that it was refused.
	return errors.Join(clientErr, serverErr)
}
