// Command agent is mayfly's node agent. It arrives with issue #5 (node agent);
// until then it says so and exits non-zero.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "mayfly agent: not built yet — the node agent is tracked in issue #5")
	os.Exit(2)
}
