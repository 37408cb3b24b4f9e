package agentapp

import (
	"fmt"
	"log/slog"

	"golang.org/x/sys/unix"

	"github.com/mayfly-pki/mayfly/internal/workloadapi"
)

// The descriptor budget of the Workload API. Every accepted connection
// holds two descriptors (the socket and the pidfd that pins the caller for
// attestation); reservedDescriptors stay for everything else the agent
// opens: its configuration, data directory and the files it swaps in
// writeDir and CSI volumes, the connections to the CA, the health listener
// and its clients, the CSI socket and the kubelet's connections, the /proc
// files read while attesting, and the Go runtime's own (epoll, pipes).
// A flood of connections therefore meets the connection limit before the
// agent runs out of descriptors for its own work.
const (
	descriptorsPerConnection = 2
	reservedDescriptors      = 512
)

// raiseOpenFilesLimit raises the soft RLIMIT_NOFILE to the hard one and
// returns the soft limit then in force. Go's runtime already does this at
// start on Linux; doing it here makes the budget below not depend on it.
func raiseOpenFilesLimit() (uint64, error) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("reading RLIMIT_NOFILE: %w", err)
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
			return 0, fmt.Errorf("raising RLIMIT_NOFILE to %d: %w", lim.Max, err)
		}
	}
	return lim.Cur, nil
}

// fitDescriptors lowers the connection limits of l to what openFiles
// descriptors allow with the agent's reserve, or fails when the reserve
// alone does not fit.
func fitDescriptors(l workloadapi.Limits, openFiles uint64) (workloadapi.Limits, error) {
	if openFiles < reservedDescriptors+descriptorsPerConnection {
		return l, fmt.Errorf("RLIMIT_NOFILE is %d: the agent needs at least %d open files (%d for itself, %d per Workload API connection); raise it (LimitNOFILE= in systemd, ulimit -n)",
			openFiles, reservedDescriptors+descriptorsPerConnection, reservedDescriptors, descriptorsPerConnection)
	}
	most := int(min((openFiles-reservedDescriptors)/descriptorsPerConnection, 1<<30))
	l.MaxConnections = min(l.MaxConnections, most)
	l.MaxConnectionsPerUID = min(l.MaxConnectionsPerUID, l.MaxConnections)
	return l, nil
}

// workloadAPILimits returns the configured limits fitted to the agent's
// descriptors, after raising its RLIMIT_NOFILE.
func workloadAPILimits(cfg *Config, log *slog.Logger) (workloadapi.Limits, error) {
	openFiles, err := raiseOpenFilesLimit()
	if err != nil {
		return cfg.WorkloadAPI, err
	}
	l, err := fitDescriptors(cfg.WorkloadAPI, openFiles)
	if err != nil {
		return l, err
	}
	if l.MaxConnections < cfg.WorkloadAPI.MaxConnections {
		log.Warn("workloadAPI.maxConnections lowered to what the open files limit allows",
			"configured", cfg.WorkloadAPI.MaxConnections, "max_connections", l.MaxConnections,
			"max_connections_per_uid", l.MaxConnectionsPerUID, "rlimit_nofile", openFiles)
	}
	return l, nil
}
