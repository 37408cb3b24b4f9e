// Command agent is mayfly's node agent: it attests to the CA, serves the
// SPIFFE Workload API on a unix socket and keeps every workload identity
// on its node rotated.
package main

import (
	"fmt"
	"os"

	"github.com/mayfly-pki/mayfly/internal/app/agentapp"
	"github.com/mayfly-pki/mayfly/internal/memlimit"
)

func main() {
	if _, err := memlimit.Apply(os.Getenv); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	os.Exit(agentapp.Main(os.Args[1:], os.Stdout, os.Stderr))
}
