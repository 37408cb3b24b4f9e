package workloadattest

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"
)

// ErrNotAttested is wrapped by every error of an [Attestor]: the caller
// refuses the request (gRPC PermissionDenied) and writes an audit line. No
// default identity is ever given instead.
var ErrNotAttested = errors.New("workload not attested")

// Attestor identifies the process behind a [Peer].
type Attestor interface {
	Attest(ctx context.Context, p *Peer) (Selectors, error)
}

// Selectors describe an attested workload. Which fields are set depends on
// the attestor; unset fields are zero (nil for UID and GID, which 0 = root
// would otherwise be confused with).
//
// [KubernetesAttestor] sets PodUID, PodName, Namespace, ServiceAccount,
// NodeName, ContainerID and ContainerName. [UnixAttestor] sets UID, GID and
// Path.
type Selectors struct {
	// Kubernetes
	PodUID         string
	PodName        string
	Namespace      string
	ServiceAccount string
	NodeName       string
	ContainerID    string // 64 hex digits, without runtime prefix
	ContainerName  string

	// Unix (standalone mode)
	UID  *int   // effective uid of the peer when it connected
	GID  *int   // effective gid of the peer when it connected
	Path string // executable, as /proc/<pid>/exe names it
}

// DefaultNotYetKnownWait is how long [KubernetesAttestor] waits for the pod
// status to list a container that just started.
const DefaultNotYetKnownWait = 5 * time.Second

// KubernetesAttestor attests pod containers: cgroup of the peer -> pod UID
// and container ID -> pod in the node's pod cache.
type KubernetesAttestor struct {
	Proc     Proc
	Resolver *PodResolver
	// NotYetKnownWait bounds the wait for a container missing from its pod's
	// status (it just started); DefaultNotYetKnownWait when zero, no wait
	// when negative. The request's own deadline applies too.
	NotYetKnownWait time.Duration
	// CgroupRoot is the kubelet's --cgroup-root ("" or "/": the default);
	// see [ContainerFromCgroupsUnder].
	CgroupRoot string
}

// Attest returns the pod selectors of p.
func (a KubernetesAttestor) Attest(ctx context.Context, p *Peer) (Selectors, error) {
	lines, err := a.Proc.Cgroups(p.PID)
	if err != nil {
		return Selectors{}, notAttested(p, err)
	}
	// What was read belongs to p only if the pidfd's process still holds
	// the PID now.
	if err := p.Alive(); err != nil {
		return Selectors{}, notAttested(p, err)
	}
	podUID, containerID, err := ContainerFromCgroupsUnder(lines, a.CgroupRoot)
	if err != nil {
		return Selectors{}, notAttested(p, err)
	}
	wait := cmp.Or(a.NotYetKnownWait, DefaultNotYetKnownWait)
	wctx, cancel := context.WithTimeout(ctx, max(wait, 0))
	defer cancel()
	pod, containerName, err := a.Resolver.ResolveWait(wctx, podUID, containerID)
	if err != nil {
		return Selectors{}, notAttested(p, err)
	}
	if err := p.Alive(); err != nil {
		return Selectors{}, notAttested(p, err)
	}
	return Selectors{
		PodUID:         string(pod.UID),
		PodName:        pod.Name,
		Namespace:      pod.Namespace,
		ServiceAccount: pod.Spec.ServiceAccountName,
		NodeName:       pod.Spec.NodeName,
		ContainerID:    containerID,
		ContainerName:  containerName,
	}, nil
}

// UnixAttestor attests processes by the uid and gid of the socket peer and
// the executable that /proc names for it (standalone mode, no Kubernetes).
//
// The executable path is only as strong as the process tree around it: a
// process that connects, forks, and execs a registered binary in the parent
// while the child keeps the connection is attested as that binary. Prefer
// uid selectors for anything that matters.
type UnixAttestor struct {
	Proc Proc
	// PathSelectors reports whether any registration in force selects by
	// executable path. When it returns false the executable is not read
	// and Path stays empty: a path decides nothing then, and an empty Path
	// matches only registrations without a path selector, so a
	// registration added between this check and the match is refused,
	// never granted. Nil reads the path on every attestation.
	PathSelectors func() bool
}

// Attest returns the unix selectors of p.
func (a UnixAttestor) Attest(_ context.Context, p *Peer) (Selectors, error) {
	var exe string
	if a.PathSelectors == nil || a.PathSelectors() {
		var err error
		if exe, err = a.Proc.Exe(p.PID); err != nil {
			return Selectors{}, notAttested(p, err)
		}
	}
	if err := p.Alive(); err != nil {
		return Selectors{}, notAttested(p, err)
	}
	uid, gid := p.UID, p.GID
	return Selectors{UID: &uid, GID: &gid, Path: exe}, nil
}

func notAttested(p *Peer, err error) error {
	return fmt.Errorf("%w: %s: %w", ErrNotAttested, p, err)
}
