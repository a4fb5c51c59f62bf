package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runCmd(t *testing.T, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	for k, v := range env {
		t.Setenv(k, v)
	}
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestCommands(t *testing.T) {
	if code, out, _ := runCmd(t, nil, "version"); code != 0 || !strings.HasPrefix(out, "ghlproxy ") {
		t.Fatalf("version: %d %q", code, out)
	}
	if code, _, errs := runCmd(t, nil, "nope"); code != 2 || !strings.Contains(errs, `unknown command "nope"`) {
		t.Fatalf("unknown command: %d %q", code, errs)
	}
	// A bad value stops start-up with one line naming the key.
	code, _, errs := runCmd(t, map[string]string{"GHLPROXY_REDIS_URL": "http://redis:6379"}, "serve")
	if code != 1 || strings.Count(strings.TrimSpace(errs), "\n") != 0 || !strings.Contains(errs, "redis.url:") {
		t.Fatalf("bad redis.url: %d %q", code, errs)
	}
	// config prints the effective configuration with secrets redacted.
	code, out, _ := runCmd(t, map[string]string{"GHLPROXY_ADMIN_TOKEN": "s3cret-admin", "GHLPROXY_REDIS_URL": "redis://:hunter2@redis:6379/0"}, "config")
	if code != 0 || strings.Contains(out, "s3cret-admin") || strings.Contains(out, "hunter2") || !strings.Contains(out, "<redacted>") {
		t.Fatalf("config printed secrets or nothing: %d\n%s", code, out)
	}
	// config --validate checks a file.
	dir := t.TempDir()
	good, bad := filepath.Join(dir, "good.yaml"), filepath.Join(dir, "bad.yaml")
	os.WriteFile(good, []byte("ratelimit:\n  rate: 100\n"), 0o600)
	os.WriteFile(bad, []byte("ratelimt:\n  rate: 100\n"), 0o600)
	if code, out, _ := runCmd(t, nil, "config", "--validate", good); code != 0 || !strings.Contains(out, "valid") {
		t.Fatalf("validate good: %d %q", code, out)
	}
	if code, _, errs := runCmd(t, nil, "config", "--validate", bad); code != 1 || !strings.Contains(errs, "ratelimt") {
		t.Fatalf("validate bad: %d %q", code, errs)
	}
	// A route the table does not have is found by --validate, not only at serve.
	noRoute := filepath.Join(dir, "noroute.yaml")
	os.WriteFile(noRoute, []byte("dedupe:\n  routes:\n    - {route: \"GET /contacts/{id}\", window: 1s}\n"), 0o600)
	if code, _, errs := runCmd(t, nil, "config", "--validate", noRoute); code != 1 || !strings.Contains(errs, "dedupe.routes[0]: no route GET /contacts/{id} in the table") {
		t.Fatalf("validate unknown route: %d %q", code, errs)
	}
}
