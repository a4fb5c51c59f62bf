package fakeghl_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestAnswersMatchSpecs fails when answers_gen.go is not what the specs produce. Without
// the specs it skips, except in CI (which keeps shared/ beside the repository).
func TestAnswersMatchSpecs(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the generator")
	}
	if !specsPresent() && os.Getenv("GHL_OPENAPI_DIR") == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("GHL OpenAPI specs not found beside the repository")
		}
		t.Skip("GHL OpenAPI specs not found (CI unset)")
	}
	out := filepath.Join(t.TempDir(), "answers_gen.go")
	cmd := exec.Command("go", "run", "./internal/answergen", "-out", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("answergen: %v\n%s", err, b)
	}
	want, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("answers_gen.go")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("answers_gen.go is out of date with the specs: run go generate ./fakeghl")
	}
}

func specsPresent() bool {
	dir, _ := os.Getwd()
	for {
		if _, err := os.Stat(filepath.Join(dir, "shared", "ghl-openapi", "apps")); err == nil {
			return true
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return false
		}
		dir = parent
	}
}
