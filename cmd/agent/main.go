// Command agent is mayfly's node agent: it attests to the CA, serves the
// SPIFFE Workload API on a unix socket and keeps every workload identity
// on its node rotated.
package main

import (
	"os"

	"github.com/mayfly-pki/mayfly/internal/app/agentapp"
)

func main() {
	os.Exit(agentapp.Main(os.Args[1:], os.Stdout, os.Stderr))
}
