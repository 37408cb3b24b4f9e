// Package pki holds mayfly's certificate logic: SPIFFE IDs, keys, CSRs, PEM
// handling, the X.509-SVID and CA certificate profiles, the signing policy and
// chain verification.
//
// The package is pure: it performs no I/O, keeps no global state, and takes
// its clock and randomness as parameters. Every parser of untrusted input
// (ParseID, ParseCSR, ParseCSRPEM, DecodeCertificates, ParsePrivateKeyPEM)
// bounds its input size and returns errors that wrap the package's sentinel
// errors, so callers can branch with errors.Is.
package pki
