package openapi

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// ErrNoSpecs means FindSpecs found no specs directory.
var ErrNoSpecs = errors.New("openapi: specs not found")

// FindSpecs locates the GHL OpenAPI specs: $GHL_OPENAPI_DIR if set, else
// shared/ghl-openapi in the parent of the module root or of one of its ancestors (CI keeps
// shared/ beside the repository; a git worktree may sit deeper, e.g. /work/wt/<name>).
func FindSpecs(from string) (string, error) {
	if d := os.Getenv("GHL_OPENAPI_DIR"); d != "" {
		if _, err := os.Stat(filepath.Join(d, "apps")); err != nil {
			return "", fmt.Errorf("GHL_OPENAPI_DIR=%s: %w", d, err)
		}
		return d, nil
	}
	dir, err := filepath.Abs(from)
	if err != nil {
		return "", err
	}
	// Find the module root first, then search its ancestors.
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("%w: no go.mod above %s", ErrNoSpecs, from)
		}
		dir = parent
	}
	for {
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("%w: no shared/ghl-openapi beside the module or its parents (set GHL_OPENAPI_DIR)", ErrNoSpecs)
		}
		dir = parent
		cand := filepath.Join(dir, "shared", "ghl-openapi")
		if _, err := os.Stat(filepath.Join(cand, "apps")); err == nil {
			return cand, nil
		}
	}
}
