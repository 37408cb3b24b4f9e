// Command ca is mayfly's CA control plane: it keeps the root and
// intermediate keys, rotates them, and serves the issuer API to node agents.
package main

import (
	"os"

	"github.com/mayfly-pki/mayfly/internal/app/caapp"
)

func main() {
	os.Exit(caapp.Main(os.Args[1:], os.Stdout, os.Stderr))
}
