package pki_test

import (
	"bytes"
	"encoding/pem"
	"errors"
	"strings"
	"testing"

	"github.com/mayfly-pki/mayfly/pkg/pki"
)

func TestDecodeCertificates(t *testing.T) {
	ca := newTestCA(t)
	one := pki.EncodeCertificates(ca.Root)
	two := pki.EncodeCertificates(ca.Intermediate, ca.Root)
	keyBlock := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1, 2, 3}})
	tests := []struct {
		name      string
		in        []byte
		lim       pki.PEMLimits
		wantN     int
		wantErr   error
		errSubstr string
	}{
		{name: "decodes_one_block", in: one, wantN: 1},
		{name: "decodes_chain_in_order", in: two, wantN: 2},
		{name: "allows_whitespace_between_and_after_blocks", in: []byte("\n " + string(one) + "\r\n\t\n" + string(one) + "\n\n  "), wantN: 2},
		{name: "allows_crlf_line_endings", in: bytes.ReplaceAll(one, []byte("\n"), []byte("\r\n")), wantN: 1},
		{name: "rejects_empty_input", in: nil, wantErr: pki.ErrPEMEmpty},
		{name: "rejects_whitespace_only", in: []byte(" \n\t"), wantErr: pki.ErrPEMEmpty},
		{name: "rejects_truncated_block", in: two[:len(two)-40], wantErr: pki.ErrPEMTruncated},
		{name: "rejects_begin_line_only", in: []byte("-----BEGIN CERTIFICATE-----\n"), wantErr: pki.ErrPEMTruncated},
		{name: "rejects_truncated_block_followed_by_valid_one", in: append(append([]byte(nil), one[:len(one)/2]...), one...), wantErr: pki.ErrPEMTruncated},
		{name: "rejects_wrong_type_and_names_it", in: append(append([]byte(nil), one...), keyBlock...), wantErr: pki.ErrPEMWrongType, errSubstr: `"PRIVATE KEY"`},
		{name: "rejects_trailing_garbage", in: append(append([]byte(nil), one...), "trailing"...), wantErr: pki.ErrPEMTrailingData},
		{name: "rejects_leading_garbage", in: append([]byte("leading\n"), one...), wantErr: pki.ErrPEMTrailingData},
		{name: "rejects_garbage_between_blocks", in: []byte(string(one) + "x\n" + string(one)), wantErr: pki.ErrPEMTrailingData},
		{name: "rejects_mismatched_end_type", in: bytes.Replace(one, []byte("END CERTIFICATE"), []byte("END CERTIFICATX"), 1), wantErr: pki.ErrPEMMalformed},
		{name: "rejects_bad_base64", in: []byte("-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n"), wantErr: pki.ErrPEMMalformed},
		{name: "rejects_headers", in: []byte("-----BEGIN CERTIFICATE-----\nProc-Type: 4,ENCRYPTED\n\nAAAA\n-----END CERTIFICATE-----\n"), wantErr: pki.ErrPEMMalformed},
		{name: "rejects_block_that_is_not_a_certificate", in: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("junk")}), wantErr: pki.ErrCertificateMalformed},
		{name: "rejects_10MB_blob_by_size", in: bytes.Repeat([]byte("A"), 10<<20), wantErr: pki.ErrPEMTooLarge},
		{name: "rejects_input_over_custom_limit", in: two, lim: pki.PEMLimits{MaxBytes: len(two) - 1}, wantErr: pki.ErrPEMTooLarge},
		{name: "rejects_more_blocks_than_limit", in: two, lim: pki.PEMLimits{MaxBlocks: 1}, wantErr: pki.ErrPEMTooManyBlocks},
		{name: "rejects_17_blocks_by_default", in: bytes.Repeat(one, 17), wantErr: pki.ErrPEMTooManyBlocks},
		{name: "accepts_16_blocks_by_default", in: bytes.Repeat(one, 16), wantN: 16},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			certs, err := pki.DecodeCertificates(tt.in, tt.lim)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.errSubstr) {
					t.Fatalf("err = %v, want it to contain %s", err, tt.errSubstr)
				}
				return
			}
			if err != nil || len(certs) != tt.wantN {
				t.Fatalf("got %d certs, %v; want %d", len(certs), err, tt.wantN)
			}
		})
	}
}

func TestEncodeCertificates_roundTrips(t *testing.T) {
	ca := newTestCA(t)
	in := pki.EncodeCertificates(ca.Intermediate, nil, ca.Root)
	certs, err := pki.DecodeCertificates(in, pki.PEMLimits{})
	if err != nil {
		t.Fatal(err)
	}
	if len(certs) != 2 || !certs[0].Equal(ca.Intermediate) || !certs[1].Equal(ca.Root) {
		t.Fatalf("round trip changed the chain: %d certs", len(certs))
	}
	if len(pki.EncodeCertificates()) != 0 {
		t.Fatal("encoding nothing produced output")
	}
}
