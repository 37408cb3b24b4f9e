// Package keystore keeps the CA's root and intermediate keys in a PKCS#11
// token (an HSM, or SoftHSM2) through smallstep's KMS layer
// (go.step.sm/crypto/kms/pkcs11): keys are generated inside the token with
// CKA_SENSITIVE set and CKA_EXTRACTABLE unset, used there for every
// signature, and referred to by a PKCS#11 URI that holds no PIN. It
// implements authority.KeyStore.
//
// PKCS#11 needs cgo (the module is a C library loaded with dlopen): a CA
// built with CGO_ENABLED=0, as the shipped static images are, has no
// PKCS#11 support and New says so (Supported is false). The agent never
// imports this package.
package keystore
