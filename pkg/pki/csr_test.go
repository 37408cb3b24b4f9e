package pki_test

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"testing"

	"github.com/mayfly-pki/mayfly/pkg/pki"
)

func TestCreateCSR_parsesForEveryKeyType(t *testing.T) {
	for _, kt := range pki.KeyTypes() {
		t.Run(string(kt), func(t *testing.T) {
			key := mustKey(t, kt)
			der, err := pki.CreateCSR(key, rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			csr, err := pki.ParseCSR(der)
			if err != nil {
				t.Fatal(err)
			}
			if !key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(csr.PublicKey) {
				t.Fatal("CSR public key differs")
			}
			if len(csr.URIs)+len(csr.DNSNames) != 0 || csr.Subject.String() != "" {
				t.Fatalf("CSR carries names: %v %v %q", csr.URIs, csr.DNSNames, csr.Subject)
			}
		})
	}
}

func TestCreateCSR_rejectsWeakKey(t *testing.T) {
	if _, err := pki.CreateCSR(mustRSA1024(t), rand.Reader); !errors.Is(err, pki.ErrWeakKey) {
		t.Fatalf("err = %v, want ErrWeakKey", err)
	}
}

func TestParseCSR(t *testing.T) {
	valid := rawCSR(t, mustKey(t, pki.KeyTypeECDSAP256), nil)
	tests := []struct {
		name    string
		in      []byte
		wantErr error
	}{
		{"accepts_valid_csr", valid, nil},
		{"accepts_csr_with_two_uris_but_sign_ignores_them", twoURICSR(t), nil},
		{"rejects_flipped_signature_byte", badSignatureCSR(t), pki.ErrCSRSignature},
		{"rejects_rsa1024_as_weak", rawCSR(t, mustRSA1024(t), nil), pki.ErrWeakKey},
		{"rejects_p521_as_unsupported", rawCSR(t, mustP521(t), nil), pki.ErrUnsupportedKey},
		{"rejects_empty", nil, pki.ErrCSRMalformed},
		{"rejects_truncated_der", valid[:len(valid)/2], pki.ErrCSRMalformed},
		{"rejects_trailing_bytes", append(append([]byte(nil), valid...), 0), pki.ErrCSRMalformed},
		{"rejects_garbage", []byte("not a CSR at all"), pki.ErrCSRMalformed},
		{"rejects_over_max_size", make([]byte, pki.MaxCSRSize+1), pki.ErrCSRTooLarge},
		{"rejects_10MB_blob_by_size", bytes.Repeat([]byte{0x30}, 10<<20), pki.ErrCSRTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			csr, err := pki.ParseCSR(tt.in)
			if tt.wantErr == nil {
				if err != nil || csr == nil {
					t.Fatalf("ParseCSR = %v, want success", err)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("ParseCSR err = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestParseCSRPEM(t *testing.T) {
	der := rawCSR(t, mustKey(t, pki.KeyTypeECDSAP256), nil)
	good := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	tests := []struct {
		name     string
		in       []byte
		wantErrs []error
	}{
		{"accepts_pem", good, nil},
		{"accepts_surrounding_whitespace", append(append([]byte("\n\t "), good...), "\r\n\n"...), nil},
		{"accepts_legacy_new_certificate_request", pem.EncodeToMemory(&pem.Block{Type: "NEW CERTIFICATE REQUEST", Bytes: der}), nil},
		{"rejects_truncated_pem", good[:len(good)-30], []error{pki.ErrCSRMalformed, pki.ErrPEMTruncated}},
		{"rejects_wrong_type", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), []error{pki.ErrCSRMalformed, pki.ErrPEMWrongType}},
		{"rejects_trailing_garbage", append(append([]byte(nil), good...), "garbage"...), []error{pki.ErrCSRMalformed, pki.ErrPEMTrailingData}},
		{"rejects_two_blocks", append(append([]byte(nil), good...), good...), []error{pki.ErrCSRMalformed, pki.ErrPEMTooManyBlocks}},
		{"rejects_empty", nil, []error{pki.ErrCSRMalformed, pki.ErrPEMEmpty}},
		{"rejects_10MB_blob", bytes.Repeat([]byte("A"), 10<<20), []error{pki.ErrCSRTooLarge}},
		{"rejects_bad_signature_inside_pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: badSignatureCSR(t)}), []error{pki.ErrCSRSignature}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := pki.ParseCSRPEM(tt.in)
			if len(tt.wantErrs) == 0 && err != nil {
				t.Fatalf("ParseCSRPEM = %v, want success", err)
			}
			for _, want := range tt.wantErrs {
				if !errors.Is(err, want) {
					t.Fatalf("ParseCSRPEM err = %v, want it to wrap %v", err, want)
				}
			}
		})
	}
}
