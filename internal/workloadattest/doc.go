// Package workloadattest is the agent side of attestation: it identifies the process at the other end of the node agent's
// Workload API socket and turns it into selectors that registrations and the
// SVID issuance policy match against.
//
// The pipeline is:
//
//  1. [PeerFromConn] reads SO_PEERCRED from the accepted unix connection and
//     pins the peer process with a pidfd, so that a PID recycled by another
//     process is never attested ([Peer.Alive]). [NewCredentials] does this in
//     a gRPC server handshake; handlers get the peer with [PeerFromContext].
//  2. [Proc] reads /proc/<pid>/cgroup and /proc/<pid>/exe under an injectable
//     root, and [ContainerFromCgroups] maps the cgroup paths written by
//     containerd, CRI-O and docker (cgroupfs and systemd drivers, cgroup v1
//     and v2) to a pod UID and a container ID.
//  3. [PodResolver] looks the pod up in a node-scoped pod informer and checks
//     that the container ID is one of the pod's current containers.
//  4. An [Attestor] puts it together: [KubernetesAttestor] in a cluster,
//     [UnixAttestor] in standalone mode, where [Registration]s read from a file
//     ([ParseRegistrations], [RegistrationWatcher]) map uid, gid and
//     executable path to SPIFFE IDs ([Match]).
//
// Every failure to attest wraps [ErrNotAttested]; there is no default
// identity.
package workloadattest
