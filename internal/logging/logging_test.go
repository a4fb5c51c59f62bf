package logging

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestFormats(t *testing.T) {
	var b bytes.Buffer
	l, err := New(&b, "info", "json")
	if err != nil {
		t.Fatal(err)
	}
	l.Debug("hidden")
	l.Info("shown", "route", "/contacts/{contactId}")
	var rec map[string]any
	if err := json.Unmarshal(b.Bytes(), &rec); err != nil {
		t.Fatalf("json line: %v: %q", err, b.String())
	}
	if rec["msg"] != "shown" || rec["route"] != "/contacts/{contactId}" {
		t.Fatalf("record = %v", rec)
	}

	b.Reset()
	l, err = New(&b, "debug", "text")
	if err != nil {
		t.Fatal(err)
	}
	l.Debug("dbg", "k", 1)
	if !strings.Contains(b.String(), "dbg") || strings.Contains(b.String(), "\x1b[") {
		t.Fatalf("text line = %q (want no colour when not a terminal)", b.String())
	}
}

func TestBadValues(t *testing.T) {
	if _, err := New(&bytes.Buffer{}, "loud", "text"); err == nil || !strings.HasPrefix(err.Error(), "log.level:") {
		t.Fatalf("bad level: %v", err)
	}
	if _, err := New(&bytes.Buffer{}, "info", "xml"); err == nil || !strings.HasPrefix(err.Error(), "log.format:") {
		t.Fatalf("bad format: %v", err)
	}
}
