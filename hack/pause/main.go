// Command pause is the sandbox ("pause") container of the e2e node's pods:
// it holds the pod's namespaces, reaps orphaned children as PID 1 and exits
// on SIGINT or SIGTERM. No registry is reachable here, so the node cannot
// pull registry.k8s.io/pause; `make images` builds this one instead.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range sigs {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
