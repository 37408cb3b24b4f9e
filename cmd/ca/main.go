// Command ca is mayfly's CA control plane. It arrives with issue #4 (CA control
// plane); until then it says so and exits non-zero.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "mayfly ca: not built yet — the CA control plane is tracked in issue #4")
	os.Exit(2)
}
