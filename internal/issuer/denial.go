package issuer

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/policy"
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

// DenialOf converts err to the denial sent back: a Denial keeps its code
// and message; other errors get the code of their policy class
// (policy.ClassOf): forbidden is PERMISSION_DENIED, a bad request
// INVALID_ARGUMENT, an authority that cannot sign now UNAVAILABLE, each with
// the error's text (at most maxMessage bytes of it); anything else is INTERNAL with a generic message (the
// detail goes to the audit log only).
func DenialOf(err error) *issuerv1.Denial {
	var d *Denial
	if errors.As(err, &d) {
		return &issuerv1.Denial{Code: d.Code, Message: clip(d.Message, maxMessage)}
	}
	switch policy.ClassOf(err) {
	case policy.ClassForbidden:
		return &issuerv1.Denial{Code: issuerv1.Denial_PERMISSION_DENIED, Message: clip(err.Error(), maxMessage)}
	case policy.ClassBadRequest:
		return &issuerv1.Denial{Code: issuerv1.Denial_INVALID_ARGUMENT, Message: clip(err.Error(), maxMessage)}
	case policy.ClassUnavailable:
		return &issuerv1.Denial{Code: issuerv1.Denial_UNAVAILABLE, Message: clip("the CA cannot sign right now; retry with backoff: "+err.Error(), maxMessage)}
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
