package issuer_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
)

// rawCodec sends []byte as they are, under the proto codec's name so that
// the server decodes them as protobuf.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) {
	b, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("rawCodec: %T", v)
	}
	return *b, nil
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	b, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("rawCodec: %T", v)
	}
	*b = bytes.Clone(data)
	return nil
}

func (rawCodec) Name() string { return "proto" }

func TestGarbageRequestIsAnErrorAndServingGoesOn(t *testing.T) {
	h := newHarness(t)
	h.authz.grant("node-a", webID)
	conn := h.dialConn(h.attest("node-a"), h.tca.Bundle())
	agent := issuerv1.NewIssuerClient(conn)

	random := make([]byte, 4096)
	r := rand.New(rand.NewChaCha8([32]byte{1}))
	for i := range random {
		random[i] = byte(r.Uint32())
	}
	// An over-long varint tag makes the random tail undecodable for sure.
	random = append(bytes.Repeat([]byte{0xff}, 11), random...)
	payloads := []struct {
		name string
		data []byte
	}{
		{"random bytes", random},
		{"length-delimited field longer than the message", []byte{0x0a, 0x7f, 0x01}},
		{"reserved wire type", []byte{0x0f}},
		{"truncated varint", []byte{0x28, 0x80}},
		{"group start without its end", []byte{0x0b}},
	}
	methods := []string{
		"/mayfly.issuer.v1.Issuer/SignWorkloads",
		"/mayfly.issuer.v1.Issuer/AttestAgent",
		"/mayfly.issuer.v1.Issuer/RenewAgent",
	}
	for _, p := range payloads {
		for _, m := range []proto.Message{&issuerv1.SignWorkloadsRequest{}, &issuerv1.AttestAgentRequest{}, &issuerv1.RenewAgentRequest{}} {
			if err := proto.Unmarshal(p.data, m); err == nil {
				t.Fatalf("payload %q decodes as %T; it would not test garbage", p.name, m)
			}
		}
		for _, m := range methods {
			t.Run(p.name+" to "+m+" is an error status", func(t *testing.T) {
				in, out := p.data, []byte(nil)
				err := conn.Invoke(ctx(t), m, &in, &out, grpc.ForceCodec(rawCodec{}))
				wantCode(t, err, codes.Internal, codes.InvalidArgument)
			})
		}
	}
	t.Run("the server serves a normal request afterwards", func(t *testing.T) {
		resp, err := agent.SignWorkloads(ctx(t), batch(t, 1, webID))
		if err != nil {
			t.Fatalf("SignWorkloads: %v", err)
		}
		if resp.GetResults()[0].GetIssued() == nil {
			t.Fatalf("denied: %v", resp.GetResults()[0].GetDenial())
		}
	})
}

func TestOversizedRequestIsResourceExhausted(t *testing.T) {
	h := newHarness(t)
	agent := h.webAgent()
	tests := []struct {
		name     string
		csrSize  int
		wantCode codes.Code
	}{
		{"request above the server's receive limit is resource exhausted", maxRecvMsgSize + 1, codes.ResourceExhausted},
		{"request below the limit reaches the handler", maxRecvMsgSize - 1024, codes.OK},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := agent.SignWorkloads(ctx(t), &issuerv1.SignWorkloadsRequest{Requests: []*issuerv1.WorkloadRequest{
				{RequestId: "big", Csr: make([]byte, tc.csrSize), SpiffeId: webID},
			}})
			wantCode(t, err, tc.wantCode)
			if err == nil && resp.GetResults()[0].GetDenial().GetCode() != issuerv1.Denial_INVALID_ARGUMENT {
				t.Fatalf("a huge CSR got %v, want an INVALID_ARGUMENT denial", resp.GetResults()[0])
			}
		})
	}
	t.Run("the connection serves a normal request afterwards", func(t *testing.T) {
		if _, err := agent.SignWorkloads(ctx(t), batch(t, 1, webID)); err != nil {
			t.Fatalf("SignWorkloads: %v", err)
		}
	})
}
