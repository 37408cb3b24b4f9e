package pki

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
)

// Default PEM limits, used for zero fields of PEMLimits.
const (
	DefaultPEMMaxBlocks = 16
	DefaultPEMMaxBytes  = 1 << 20
)

// Errors of DecodeCertificates; each returned error wraps exactly one of them.
var (
	// ErrPEMEmpty: the input holds no PEM block (only whitespace, or nothing).
	ErrPEMEmpty = errors.New("no PEM data")
	// ErrPEMTruncated: a block has a BEGIN line but no END line before the
	// end of the input or the next BEGIN line.
	ErrPEMTruncated = errors.New("truncated PEM block")
	// ErrPEMMalformed: a block is complete but cannot be decoded (bad base64,
	// END type not matching BEGIN, headers where none are allowed).
	ErrPEMMalformed = errors.New("malformed PEM block")
	// ErrPEMWrongType: a block is not of the expected type; the error names
	// the type found.
	ErrPEMWrongType = errors.New("wrong PEM block type")
	// ErrPEMTrailingData: non-whitespace data outside of PEM blocks.
	ErrPEMTrailingData = errors.New("non-PEM data")
	// ErrPEMTooLarge: the input exceeds PEMLimits.MaxBytes.
	ErrPEMTooLarge = errors.New("PEM data too large")
	// ErrPEMTooManyBlocks: the input holds more than PEMLimits.MaxBlocks blocks.
	ErrPEMTooManyBlocks = errors.New("too many PEM blocks")
	// ErrCertificateMalformed: a CERTIFICATE block holds no valid X.509
	// certificate.
	ErrCertificateMalformed = errors.New("malformed certificate")
)

const (
	pemBegin        = "-----BEGIN "
	pemEnd          = "-----END "
	pemTypeCert     = "CERTIFICATE"
	maxTypeInErrors = 64
)

// PEMLimits bounds what DecodeCertificates accepts. Zero fields take the
// defaults DefaultPEMMaxBlocks and DefaultPEMMaxBytes.
type PEMLimits struct {
	// MaxBlocks is the maximum number of PEM blocks.
	MaxBlocks int
	// MaxBytes is the maximum input size in bytes.
	MaxBytes int
}

func (l PEMLimits) withDefaults() PEMLimits {
	if l.MaxBlocks <= 0 {
		l.MaxBlocks = DefaultPEMMaxBlocks
	}
	if l.MaxBytes <= 0 {
		l.MaxBytes = DefaultPEMMaxBytes
	}
	return l
}

// DecodeCertificates decodes a sequence of "CERTIFICATE" PEM blocks, in
// order. Whitespace before, between and after blocks is allowed; anything
// else is an error. Errors wrap one of ErrPEMEmpty, ErrPEMTruncated,
// ErrPEMMalformed, ErrPEMWrongType, ErrPEMTrailingData, ErrPEMTooLarge,
// ErrPEMTooManyBlocks or ErrCertificateMalformed, and name the block index
// or byte offset.
func DecodeCertificates(data []byte, lim PEMLimits) ([]*x509.Certificate, error) {
	blocks, err := decodePEMBlocks(data, lim.withDefaults(), pemTypeCert)
	if err != nil {
		return nil, err
	}
	certs := make([]*x509.Certificate, 0, len(blocks))
	for i, b := range blocks {
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("PEM block %d: %w: %w", i, ErrCertificateMalformed, err)
		}
		certs = append(certs, c)
	}
	return certs, nil
}

// decodePEMBlocks splits data into PEM blocks whose type is one of types,
// strictly; types[0] is named in errors.
func decodePEMBlocks(data []byte, lim PEMLimits, types ...string) ([]*pem.Block, error) {
	if len(data) > lim.MaxBytes {
		return nil, fmt.Errorf("%w: %d bytes exceed the limit of %d", ErrPEMTooLarge, len(data), lim.MaxBytes)
	}
	var blocks []*pem.Block
	pos := 0
	for {
		pos += len(data[pos:]) - len(trimLeftSpace(data[pos:]))
		if pos == len(data) {
			break
		}
		rest := data[pos:]
		if !bytes.HasPrefix(rest, []byte(pemBegin)) {
			return nil, fmt.Errorf("%w: at byte %d (after %d PEM blocks)", ErrPEMTrailingData, pos, len(blocks))
		}
		if len(blocks) == lim.MaxBlocks {
			return nil, fmt.Errorf("%w: more than %d", ErrPEMTooManyBlocks, lim.MaxBlocks)
		}
		// Find the END line of this block, and refuse a second BEGIN line
		// before it: pem.Decode would otherwise skip a broken block silently.
		end := bytes.Index(rest[len(pemBegin):], []byte(pemEnd))
		if end < 0 {
			return nil, fmt.Errorf("%w: block %d at byte %d has no END line", ErrPEMTruncated, len(blocks), pos)
		}
		end += len(pemBegin)
		if bytes.Contains(rest[len(pemBegin):end], []byte(pemBegin)) {
			return nil, fmt.Errorf("%w: block %d at byte %d has no END line before the next BEGIN line", ErrPEMTruncated, len(blocks), pos)
		}
		lineEnd := bytes.IndexByte(rest[end:], '\n')
		if lineEnd < 0 {
			lineEnd = len(rest)
		} else {
			lineEnd += end + 1
		}
		block, tail := pem.Decode(rest[:lineEnd])
		if block == nil || len(trimSpace(tail)) != 0 {
			return nil, fmt.Errorf("%w: block %d at byte %d", ErrPEMMalformed, len(blocks), pos)
		}
		if !slices.Contains(types, block.Type) {
			return nil, fmt.Errorf("%w: block %d at byte %d is %q, want %q", ErrPEMWrongType, len(blocks), pos, truncateForError(block.Type), types[0])
		}
		if len(block.Headers) != 0 {
			return nil, fmt.Errorf("%w: block %d at byte %d has headers", ErrPEMMalformed, len(blocks), pos)
		}
		blocks = append(blocks, block)
		pos += lineEnd
	}
	if len(blocks) == 0 {
		return nil, ErrPEMEmpty
	}
	return blocks, nil
}

// EncodeCertificates encodes certs as consecutive "CERTIFICATE" PEM blocks.
// Nil entries are skipped.
func EncodeCertificates(certs ...*x509.Certificate) []byte {
	n := 0
	for _, c := range certs {
		if c != nil {
			n += len(c.Raw)*4/3 + len(c.Raw)/48 + 64
		}
	}
	buf := bytes.NewBuffer(make([]byte, 0, n))
	for _, c := range certs {
		if c == nil {
			continue
		}
		// Writing to a bytes.Buffer cannot fail.
		_ = pem.Encode(buf, &pem.Block{Type: pemTypeCert, Bytes: c.Raw})
	}
	return buf.Bytes()
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

func trimLeftSpace(b []byte) []byte {
	for len(b) > 0 && isSpace(b[0]) {
		b = b[1:]
	}
	return b
}

func trimSpace(b []byte) []byte {
	b = trimLeftSpace(b)
	for len(b) > 0 && isSpace(b[len(b)-1]) {
		b = b[:len(b)-1]
	}
	return b
}

// truncateForError shortens an attacker-controlled string for an error message.
func truncateForError(s string) string {
	if len(s) > maxTypeInErrors {
		return s[:maxTypeInErrors] + "..."
	}
	return s
}
