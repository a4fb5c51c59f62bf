package cache

import (
	"encoding/binary"
	"errors"
	"time"

	sealer "github.com/ghlproxy/ghlproxy/internal/seal"
	"github.com/ghlproxy/ghlproxy/internal/upstream"
)

// aadPrefix separates this use of the credential's key from any other one.
const aadPrefix = "ghlproxy cache entry v1\x00"

var errOpen = errors.New("cache: entry does not open with this credential and key")

// record is an entry with what the store needs to index and expire it.
type record struct {
	entry Entry
	end   time.Time // end of the last stale window: after it the entry is gone
	ids   []string  // index ids (see tagID) the entry is listed under
}

// seal encrypts rec for the key with encKey:
//
//	version(1) | nonce(12) | AES-256-GCM(encKey, nonce, plaintext, aad = aadPrefix + key)
//	plaintext = stored, freshUntil, staleWhileRevalidate, staleIfError (int64 Unix ns each)
//	            | id count (uint16) | ids (32 hex characters each) | upstream.Response.MarshalBinary()
func seal(encKey *[32]byte, key string, rec *record) ([]byte, error) {
	body, err := rec.entry.Resp.MarshalBinary()
	if err != nil {
		return nil, err
	}
	pt := make([]byte, 0, 4*8+2+len(rec.ids)*idLen+len(body))
	for _, t := range []time.Time{rec.entry.Stored, rec.entry.FreshUntil, rec.entry.StaleWhileRevalidate, rec.entry.StaleIfError} {
		pt = binary.BigEndian.AppendUint64(pt, uint64(t.UnixNano()))
	}
	pt = binary.BigEndian.AppendUint16(pt, uint16(len(rec.ids)))
	for _, id := range rec.ids {
		pt = append(pt, id...)
	}
	pt = append(pt, body...)

	return sealer.Seal(encKey, aad(key), pt)
}

// open reverses seal. Any failure — another credential's key, a value moved to another
// key, tampering, another layout — is errOpen: the caller treats it as a miss.
func open(encKey *[32]byte, key string, v []byte) (*record, error) {
	pt, err := sealer.Open(encKey, aad(key), v)
	if err != nil {
		return nil, errOpen
	}
	if len(pt) < 4*8+2 {
		return nil, errOpen
	}
	var ts [4]time.Time
	for i := range ts {
		ts[i] = time.Unix(0, int64(binary.BigEndian.Uint64(pt[i*8:])))
	}
	pt = pt[4*8:]
	n := int(binary.BigEndian.Uint16(pt))
	pt = pt[2:]
	if len(pt) < n*idLen {
		return nil, errOpen
	}
	rec := &record{ids: make([]string, n)}
	for i := range rec.ids {
		rec.ids[i] = string(pt[i*idLen : (i+1)*idLen])
	}
	resp := &upstream.Response{}
	if err := resp.UnmarshalBinary(pt[n*idLen:]); err != nil {
		return nil, errOpen
	}
	rec.entry = Entry{Resp: resp, Stored: ts[0], FreshUntil: ts[1], StaleWhileRevalidate: ts[2], StaleIfError: ts[3]}
	rec.end = lastWindow(&rec.entry)
	return rec, nil
}

func aad(key string) []byte { return append([]byte(aadPrefix), key...) }

// lastWindow is when the entry stops being returned at all.
func lastWindow(e *Entry) time.Time {
	end := e.FreshUntil
	if e.StaleWhileRevalidate.After(end) {
		end = e.StaleWhileRevalidate
	}
	if e.StaleIfError.After(end) {
		end = e.StaleIfError
	}
	return end
}
