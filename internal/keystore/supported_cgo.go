//go:build cgo && !nopkcs11

package keystore

// Supported reports whether this binary can load a PKCS#11 module: it was
// built with cgo (and without the nopkcs11 tag).
const Supported = true
