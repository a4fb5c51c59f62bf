// Package upstream holds what the sidecar keeps of a GHL answer — a buffered Response that
// the cache stores, the fold shares and replays, and the batcher hands back — and the
// transport that reaches GHL.
package upstream

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/http"
	"sync/atomic"
	"time"
)

// Response is a complete upstream answer held in memory. It is immutable once built: the
// cache and the fold hand the same value to many callers, so nobody may modify Header or
// Body after it is shared.
type Response struct {
	Status int
	Header http.Header // end-to-end headers only; hop-by-hop headers are dropped
	Body   []byte
	// Date is when the upstream answer arrived; Age and staleness are measured from it.
	Date time.Time
	// Sent is when the request left for upstream: GHL read what it answered at some time
	// after it, so the cache judges whether an answer may predate a write from Sent, not
	// Date. Only the replica that made the call knows it; it is not encoded.
	Sent time.Time

	// links remembers where the body's link fields are (Links): a cached answer is served
	// many times, and finding them takes a pass over the body.
	links atomic.Pointer[[]Span]
}

// Span is a range of bytes of a body, [Start, End).
type Span struct{ Start, End int }

// Links returns find(r.Body), computed on the first call and remembered: the Response is
// immutable, so its link fields never move. Safe for concurrent use.
func (r *Response) Links(find func(body []byte) []Span) []Span {
	if p := r.links.Load(); p != nil {
		return *p
	}
	s := find(r.Body)
	r.links.Store(&s)
	return s
}

// encodingVersion is bumped whenever the binary layout changes, so that replicas of
// different versions sharing one Redis treat each other's entries as misses, not garbage.
const encodingVersion = 1

// ErrCorrupt is returned by UnmarshalBinary for data it did not write.
var ErrCorrupt = errors.New("upstream: corrupt encoded response")

// MarshalBinary encodes the response compactly for Redis: version, status, date, header
// count, then length-prefixed header keys/values and body.
func (r *Response) MarshalBinary() ([]byte, error) {
	n := 1 + 2 + 8 + 4 + 4 + len(r.Body)
	for k, vs := range r.Header {
		for _, v := range vs {
			n += 8 + len(k) + len(v)
		}
	}
	b := make([]byte, 0, n)
	b = append(b, encodingVersion)
	b = binary.BigEndian.AppendUint16(b, uint16(r.Status))
	b = binary.BigEndian.AppendUint64(b, uint64(r.Date.UnixNano()))
	var pairs uint32
	for _, vs := range r.Header {
		pairs += uint32(len(vs))
	}
	b = binary.BigEndian.AppendUint32(b, pairs)
	for k, vs := range r.Header {
		for _, v := range vs {
			b = appendString(b, k)
			b = appendString(b, v)
		}
	}
	b = binary.BigEndian.AppendUint32(b, uint32(len(r.Body)))
	b = append(b, r.Body...)
	return b, nil
}

func appendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

// UnmarshalBinary decodes what MarshalBinary wrote. The body aliases no part of data.
func (r *Response) UnmarshalBinary(data []byte) error {
	d := decoder{b: data}
	if d.byte() != encodingVersion {
		return ErrCorrupt
	}
	r.Status = int(d.uint16())
	r.Date = time.Unix(0, int64(d.uint64()))
	pairs := d.uint32()
	if d.err || int(pairs) > len(data) {
		return ErrCorrupt
	}
	r.Header = make(http.Header, pairs)
	for i := uint32(0); i < pairs && !d.err; i++ {
		k := d.string()
		v := d.string()
		r.Header[k] = append(r.Header[k], v)
	}
	n := d.uint32()
	body := d.bytes(int(n))
	if d.err || len(d.b) != 0 {
		return ErrCorrupt
	}
	r.Body = bytes.Clone(body)
	return nil
}

type decoder struct {
	b   []byte
	err bool
}

func (d *decoder) take(n int) []byte {
	if d.err || n < 0 || len(d.b) < n {
		d.err = true
		return nil
	}
	p := d.b[:n]
	d.b = d.b[n:]
	return p
}

func (d *decoder) byte() byte {
	if p := d.take(1); p != nil {
		return p[0]
	}
	return 0
}

func (d *decoder) uint16() uint16 {
	if p := d.take(2); p != nil {
		return binary.BigEndian.Uint16(p)
	}
	return 0
}

func (d *decoder) uint32() uint32 {
	if p := d.take(4); p != nil {
		return binary.BigEndian.Uint32(p)
	}
	return 0
}

func (d *decoder) uint64() uint64 {
	if p := d.take(8); p != nil {
		return binary.BigEndian.Uint64(p)
	}
	return 0
}

func (d *decoder) bytes(n int) []byte { return d.take(n) }

func (d *decoder) string() string { return string(d.take(int(d.uint32()))) }
