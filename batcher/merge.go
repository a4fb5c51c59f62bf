package batcher

import (
	"bytes"
	"encoding/json"
)

// Merging consecutive partial updates of one entity into one JSON body.

// jsonObject returns body's top-level fields when body is one JSON object, else nil.
func jsonObject(body []byte) map[string]json.RawMessage {
	t := bytes.TrimLeft(body, " \t\r\n")
	if len(t) == 0 || t[0] != '{' {
		return nil
	}
	var f map[string]json.RawMessage
	if json.Unmarshal(body, &f) != nil || f == nil {
		return nil
	}
	return f
}

// merge applies the writes' fields in order, later wins, values replaced whole: what GHL's
// partial update (PUT) does with them one after another.
func merge(ws []*pending) []byte {
	out := make(map[string]json.RawMessage, len(ws[0].fields))
	for _, p := range ws {
		for k, v := range p.fields {
			out[k] = v
		}
	}
	body, err := json.Marshal(out)
	if err != nil { // cannot happen: every value is valid JSON from Unmarshal
		panic("batcher: re-encoding merged fields: " + err.Error())
	}
	return body
}
