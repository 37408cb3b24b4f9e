package issuer

// SetEncodeEachPush makes s encode the bundle message for each stream, as
// it did before sendBundle shared one encoding: BenchmarkConnCost's A/B.
func SetEncodeEachPush(s *Server, on bool) { s.encodeEachPush = on }

// PushEncodedOnce reports whether the bundle message of the authority
// state pushed last was encoded once for the streams (sendBundle).
func PushEncodedOnce(s *Server) bool {
	p := s.pushed.Load()
	return p != nil && p.encoded != nil
}
