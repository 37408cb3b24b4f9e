// Package loopback gives tests a loopback TCP address to start a server on
// that binds its own listener from an address (a process under test, a
// server that cannot report the port it bound to ":0").
package loopback

import (
	"net"
	"testing"
)

// FreeAddr returns a 127.0.0.1 address with a port nothing listens on right
// now. Another process may take the port before the caller binds it; where
// the code under test can take a listener, pass it one instead.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}
