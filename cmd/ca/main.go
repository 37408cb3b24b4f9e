// Command ca is mayfly's CA control plane: it keeps the root and
// intermediate keys, rotates them, and serves the issuer API to node agents.
package main

import (
	"fmt"
	"os"

	"github.com/mayfly-pki/mayfly/internal/app/caapp"
	"github.com/mayfly-pki/mayfly/internal/memlimit"
)

func main() {
	if _, err := memlimit.Apply(os.Getenv); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	os.Exit(caapp.Main(os.Args[1:], os.Stdout, os.Stderr))
}
