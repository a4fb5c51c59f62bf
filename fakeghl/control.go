package fakeghl

import (
	"encoding/json"
	"net/http"
)

// control serves the stand-in's own API under /_fake/ (not counted, not limited):
//
//	GET  /_fake/stats   Stats as JSON
//	GET  /_fake/faults  the faults in force
//	POST /_fake/faults  change faults; fields left out keep their value, e.g.
//	                    {"errorRate":0.1,"errorStatus":502,"resetRate":0,"extraDelay":"2s",
//	                     "outage":"30s","outageMode":"503"|"reset","latency":"150ms"}
//	POST /_fake/reset   forget all state, counters and faults
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
