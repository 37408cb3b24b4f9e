// Package pki holds mayfly's certificate logic: SPIFFE IDs, keys, CSRs, PEM
// handling, the X.509-SVID and CA certificate profiles (including the
// component policy OID of agent leaves), the Signer with its pluggable
// SignOptions, and chain verification. It states what a certificate must be;
// which ones the CA issues to whom is the CA's policy (internal/policy),
// applied through SignOptions.
//
// The package is pure: it performs no I/O, keeps no global state, and takes
// its clock and randomness as parameters. Every parser of untrusted input
// (ParseID, ParseCSR, ParseCSRPEM, DecodeCertificates, ParsePrivateKeyPEM)
// bounds its input size and returns errors that wrap the package's sentinel
// errors, so callers can branch with errors.Is.
package pki
