// Package rotate keeps one short-lived X.509 identity fresh.
//
// It has three parts, usable separately:
//
//   - [Policy.Next] is the renewal decision: a pure function of a certificate's
//     validity, the current time, the number of failed attempts and a jitter
//     value, returning when to act next and why.
//   - [Rotator] runs the loop for one identity: it sleeps on an injected
//     [Clock], calls an [ObtainFunc] when the policy says so, keeps serving the
//     last good [Credential] while obtaining fails, and pushes every new
//     credential to its [Sink]s, retrying failed sinks with backoff.
//   - [FileSink] writes a credential to a directory as PEM files that are
//     swapped atomically through a directory symlink (an atomicfile.Dir),
//     like the kubelet's atomic writer, so readers never see a certificate
//     without its key; [FileSink.PutBundle] updates the trust bundle alone.
//
// The package imports no Kubernetes package, holds no global state, and takes
// its clock and randomness from the caller. [FakeClock] drives time in tests.
package rotate
