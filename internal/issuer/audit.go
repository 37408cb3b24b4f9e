package issuer

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"time"
	"unicode/utf8"

	"github.com/mayfly-pki/mayfly/internal/policy"
)

// auditIssue writes the one audit line of an issuance: who asked, for whom,
// serial and notAfter. Never keys, tokens or whole certificates.
// The attributes go to LogAttrs as typed slog.Attrs (no boxing of each
// key and value, no record built when the level is off): the line is
// written for every certificate.
func (s *Server) auditIssue(ctx context.Context, kind, op, caller string, leaf *x509.Certificate, extra ...slog.Attr) {
	s.metrics.issuedOf(kind).Inc()
	if !s.cfg.Logger.Enabled(ctx, slog.LevelInfo) {
		return
	}
	id := ""
	if len(leaf.URIs) == 1 {
		id = leaf.URIs[0].String()
	}
	// An array on the stack holds the attributes of every caller (at most
	// one extra): no slice allocated per line.
	var buf [9]slog.Attr
	attrs := append(buf[:0],
		slog.String("event", "issue"), slog.String("decision", "allow"), slog.String("kind", kind), slog.String("op", op),
		slog.String("caller", clip(caller, maxAuditField)), slog.String("spiffe_id", id), slog.String("serial", serialHex(leaf)),
		slog.String("not_after", leaf.NotAfter.UTC().Format(time.RFC3339)))
	s.cfg.Logger.LogAttrs(ctx, slog.LevelInfo, "audit", append(attrs, extra...)...)
}

// auditDeny writes the audit line of a refusal with its reason and, for a
// policy refusal, the rule. A refusal of the request (a Denial, a status, a
// forbidden or bad request) counts as denied, a failure of the CA as error.
func (s *Server) auditDeny(ctx context.Context, kind, op, caller, subject string, err error) {
	result := "denied"
	var d *Denial
	if !errors.As(err, &d) && !isStatus(err) {
		if c := policy.ClassOf(err); c != policy.ClassForbidden && c != policy.ClassBadRequest {
			result = "error"
		}
	}
	s.metrics.issued.WithLabelValues(kind, result).Inc()
	s.auditRefusal(ctx, kind, op, caller, subject, err)
}

// auditRefusal writes the audit line of a refusal without counting it as a
// certificate request (a refused bundle stream).
func (s *Server) auditRefusal(ctx context.Context, kind, op, caller, subject string, err error) {
	attrs := []slog.Attr{
		slog.String("event", "deny"), slog.String("decision", "deny"), slog.String("kind", kind), slog.String("op", op),
		slog.String("caller", clip(caller, maxAuditField)), slog.String("subject", clip(subject, maxAuditField)),
		slog.String("reason", clip(err.Error(), maxMessage)),
	}
	if rule := policy.RuleOf(err); rule != "" {
		attrs = append(attrs, slog.String("rule", rule))
	}
	s.cfg.Logger.LogAttrs(ctx, slog.LevelWarn, "audit", attrs...)
}

// Bounds of client-controlled text in audit lines and in the messages sent
// back: a request may carry megabytes in a SPIFFE ID or pod UID, and the
// log and the client get at most these many bytes of it.
const (
	maxAuditField = 256
	maxMessage    = 1024
)

// clip returns s when it has at most n bytes, else its first n bytes (cut
// at a character boundary) with an ellipsis and the full length.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%s...(%d bytes)", s[:cut], len(s))
}
