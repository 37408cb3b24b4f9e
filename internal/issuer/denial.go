package issuer

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
)

// Denial is an error that says why a request was refused, with the code the
// client sees. Authorizers and attestors return it; anything else is treated
// as an internal error and its text is not sent to the client.
type Denial struct {
	Code    issuerv1.Denial_Code
	Message string
}

func (d *Denial) Error() string { return d.Message }

// Deny returns a *Denial with a formatted message.
func Deny(code issuerv1.Denial_Code, format string, args ...any) error {
	return &Denial{Code: code, Message: fmt.Sprintf(format, args...)}
}

// asDenial converts err to the message sent back: a Denial keeps its code
// and message; other errors become INTERNAL with a generic message (the
// detail goes to the audit log only).
func asDenial(err error) *issuerv1.Denial {
	var d *Denial
	if errors.As(err, &d) {
		return &issuerv1.Denial{Code: d.Code, Message: d.Message}
	}
	return &issuerv1.Denial{Code: issuerv1.Denial_INTERNAL, Message: "internal error; see the CA's log"}
}

func grpcCode(c issuerv1.Denial_Code) codes.Code {
	switch c {
	case issuerv1.Denial_INVALID_ARGUMENT:
		return codes.InvalidArgument
	case issuerv1.Denial_PERMISSION_DENIED:
		return codes.PermissionDenied
	case issuerv1.Denial_NOT_FOUND:
		return codes.NotFound
	case issuerv1.Denial_RESOURCE_EXHAUSTED:
		return codes.ResourceExhausted
	case issuerv1.Denial_UNAVAILABLE:
		return codes.Unavailable
	default:
		return codes.Internal
	}
}
