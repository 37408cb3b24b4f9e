package issuer

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"time"
)

// auditIssue writes the one audit line of an issuance: who asked, for whom,
// serial and notAfter. Never keys, tokens or whole certificates.
func (s *Server) auditIssue(ctx context.Context, kind, op, caller string, leaf *x509.Certificate, extra ...any) {
	s.metrics.issued.WithLabelValues(kind, "issued").Inc()
	id := ""
	if len(leaf.URIs) == 1 {
		id = leaf.URIs[0].String()
	}
	args := append([]any{
		"event", "issue", "decision", "allow", "kind", kind, "op", op, "caller", caller,
		"spiffe_id", id, "serial", serialHex(leaf), "not_after", leaf.NotAfter.UTC().Format(time.RFC3339),
	}, extra...)
	s.cfg.Logger.InfoContext(ctx, "audit", args...)
}

// auditDeny writes the audit line of a refusal with its reason.
func (s *Server) auditDeny(ctx context.Context, kind, op, caller, subject string, err error) {
	result := "denied"
	var d *Denial
	if !errors.As(err, &d) && !isStatus(err) {
		result = "error"
	}
	s.metrics.issued.WithLabelValues(kind, result).Inc()
	s.cfg.Logger.LogAttrs(ctx, slog.LevelWarn, "audit",
		slog.String("event", "deny"), slog.String("decision", "deny"), slog.String("kind", kind), slog.String("op", op),
		slog.String("caller", caller), slog.String("subject", subject), slog.String("reason", err.Error()))
}
