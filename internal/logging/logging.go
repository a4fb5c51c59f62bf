// Package logging builds the process logger: tint's readable, coloured lines on a terminal
// ("text", the default) and one JSON object per line for production ("json").
package logging

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/lmittmann/tint"
)

// New returns a logger writing to w at level ("debug", "info", "warn", "error") in format
// ("text" or "json").
func New(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log.level: %q is not one of debug, info, warn, error", level)
	}
	switch strings.ToLower(format) {
	case "json":
		return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: lv})), nil
	case "text", "":
		return slog.New(tint.NewHandler(w, &tint.Options{
			Level:      lv,
			TimeFormat: time.TimeOnly,
			NoColor:    !isTerminal(w),
		})), nil
	}
	return nil, fmt.Errorf("log.format: %q is not one of text, json", format)
}

// isTerminal reports whether w is a character device: colour codes are for people, not for
// files and log collectors.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
