package adoption

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/mayfly-pki/mayfly/pkg/readlimit"
)

// Limits of a decoded acknowledgement record: a ConfigMap holds at most
// 1 MiB, and a record must not expand into more than maxDecoded bytes.
const (
	maxDecoded = 16 << 20
	maxNodes   = 200_000
)

// ErrInvalidRecord is wrapped by every error about a record that cannot be
// decoded.
var ErrInvalidRecord = errors.New("invalid adoption record")

// record is what one replica publishes: gzip of JSON, versions mapped to
// sorted node names (a node appears once).
type record struct {
	Acks Acks `json:"acks"`
}

// Encode returns acks as a compact record (gzip of JSON).
func Encode(acks Acks) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	if err != nil {
		return nil, err
	}
	if err := json.NewEncoder(zw).Encode(record{Acks: acks}); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Decode parses a record written by Encode into sets per version. It
// refuses a record that is not gzip, expands beyond the limit, or names an
// empty version or node.
func Decode(data []byte) (map[string]map[string]struct{}, error) {
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("%w: not gzip: %w", ErrInvalidRecord, err)
	}
	raw, err := readlimit.All(zr, maxDecoded)
	if errors.Is(err, readlimit.ErrTooLarge) {
		return nil, fmt.Errorf("%w: expands beyond %d bytes", ErrInvalidRecord, maxDecoded)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidRecord, err)
	}
	var r record
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidRecord, err)
	}
	out := make(map[string]map[string]struct{}, len(r.Acks))
	total := 0
	for _, v := range slices.Sorted(maps.Keys(r.Acks)) {
		if v == "" {
			return nil, fmt.Errorf("%w: acks: empty bundle version", ErrInvalidRecord)
		}
		nodes := r.Acks[v]
		if total += len(nodes); total > maxNodes {
			return nil, fmt.Errorf("%w: acks: more than %d nodes", ErrInvalidRecord, maxNodes)
		}
		set := make(map[string]struct{}, len(nodes))
		for i, n := range nodes {
			if n == "" {
				return nil, fmt.Errorf("%w: acks[%q][%d]: empty node name", ErrInvalidRecord, v, i)
			}
			set[n] = struct{}{}
		}
		out[v] = set
	}
	return out, nil
}
