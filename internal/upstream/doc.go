// Package upstream holds the authorities above mayfly that sign its
// intermediate (authority.Upstream): a CA given as files (re-read when they
// change), a step-ca reached with a JWK or X5C provisioner, and a cfssl
// reached through its authenticated sign API. Each returns what the
// upstream answered; the authority package checks the answer
// (authority.UpstreamChecks) before it may replace anything in service.
//
// The step-ca client pulls in step-ca's whole server (~30 MB): only the CA
// binary imports this package, never the agent.
package upstream
