package fakeghl

import (
	"encoding/json"
	"io"
	"net/http"
)

// control serves the stand-in's own API under /_fake/ (not counted, not limited):
//
//	GET  /_fake/stats   Stats as JSON
//	GET  /_fake/faults  the faults in force
//	POST /_fake/faults  change faults; fields left out keep their value, e.g.
//	                    {"errorRate":0.1,"errorStatus":502,"resetRate":0,"extraDelay":"2s",
//	                     "outage":"30s","outageMode":"503"|"reset","latency":"150ms",
//	                     "webhookDelay":"2s","webhookDuplicateRate":0.5,"webhookDropRate":0}
//	POST /_fake/reset   forget all state, counters and faults
//	POST /_fake/edit    change an entity as a person does in GHL's UI, reported by webhook:
//	                    {"resource":"contacts","id":"…","fields":{"firstName":"Ann"}}, or
//	                    {"resource":"contacts","id":"…","delete":true}
//	GET  /_fake/webhooks          the receiver URL, the key deliveries are signed with (PEM)
//	                              and what became of the events
//	POST /_fake/webhooks          {"url":"http://sidecar:8080/_ghlproxy/webhooks/ghl"}
//	POST /_fake/webhooks/send     deliver the body (an event) signed, as GHL would
func (s *Server) control(w http.ResponseWriter, r *http.Request) {
	switch r.Method + " " + r.URL.Path {
	case "GET /_fake/stats":
		writeJSON(w, http.StatusOK, s.Stats())
	case "GET /_fake/faults":
		writeJSON(w, http.StatusOK, s.Faults())
	case "POST /_fake/faults":
		var p faultPatch
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody)).Decode(&p); err != nil {
			writeError(w, http.StatusBadRequest, "faults: "+err.Error())
			return
		}
		var err error
		now := s.cfg.Now()
		s.faultMu.Lock()
		f := *s.faults.Load()
		if err = p.apply(&f, now); err == nil {
			s.faults.Store(&f)
		}
		s.faultMu.Unlock()
		if err != nil {
			writeError(w, http.StatusBadRequest, "faults: "+err.Error())
			return
		}
		writeJSON(w, http.StatusOK, f)
	case "POST /_fake/edit":
		var e struct {
			Resource string         `json:"resource"`
			ID       string         `json:"id"`
			Fields   map[string]any `json:"fields"`
			Delete   bool           `json:"delete"`
		}
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody)).Decode(&e); err != nil {
			writeError(w, http.StatusBadRequest, "edit: "+err.Error())
			return
		}
		fields, err := s.Edit(e.Resource, e.ID, e.Fields, e.Delete)
		if err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		writeJSON(w, http.StatusOK, fields)
	case "GET /_fake/webhooks":
		writeJSON(w, http.StatusOK, map[string]any{"url": s.WebhookURL(), "publicKey": WebhookPublicKey(), "stats": s.Stats().Webhooks})
	case "POST /_fake/webhooks":
		var v struct {
			URL string `json:"url"`
		}
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody)).Decode(&v); err != nil {
			writeError(w, http.StatusBadRequest, "webhooks: "+err.Error())
			return
		}
		s.SetWebhookURL(v.URL)
		writeJSON(w, http.StatusOK, map[string]any{"url": v.URL})
	case "POST /_fake/webhooks/send":
		b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
		if err == nil {
			err = s.SendWebhook(b)
		}
		if err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		w.WriteHeader(http.StatusAccepted)
	case "POST /_fake/reset":
		s.Reset()
		w.WriteHeader(http.StatusNoContent)
	default:
		writeError(w, http.StatusNotFound, "Cannot "+r.Method+" "+r.URL.Path)
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
