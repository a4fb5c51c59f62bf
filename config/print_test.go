package config

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestRedaction(t *testing.T) {
	c := effectiveDefault()
	root := reflect.ValueOf(c).Elem()
	var markers []string
	// Every field tagged secret, so a secret added later is covered without editing this.
	for _, k := range keys() {
		if k.field.Tag.Get("secret") == "true" {
			m := "secret-of-" + k.name
			root.FieldByIndex(k.index).SetString(m)
			markers = append(markers, m)
		}
	}
	if len(markers) != 3 {
		t.Errorf("secret fields: %q, want redis.password, admin.token, identity.secret", markers)
	}
	c.Redis.URL = "rediss://app:urlpassword@redis.internal:6380/1"
	markers = append(markers, "urlpassword")

	out, err := c.YAML()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range markers {
		if bytes.Contains(out, []byte(m)) {
			t.Errorf("YAML output contains secret %q:\n%s", m, out)
		}
	}
	for _, want := range []string{
		"url: rediss://app:<redacted>@redis.internal:6380/1",
		"password: <redacted>",
		"token: <redacted>",
		"secret: <redacted>",
	} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("YAML output lacks %q:\n%s", want, out)
		}
	}
	// Redacting twice changes nothing (callers may print c.Redacted().YAML()).
	if twice, err := c.Redacted().YAML(); err != nil || !bytes.Equal(twice, out) {
		t.Errorf("redacting twice differs:\n%s\nvs\n%s", twice, out)
	}
	// Redacted is a copy: the original keeps its secrets.
	if c.Admin.Token != "secret-of-admin.token" || !strings.Contains(c.Redis.URL, "urlpassword") {
		t.Error("Redacted changed the original")
	}
}

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"":                            "",
		"redis://localhost:6379":      "redis://localhost:6379",
		"redis://:pw@h:1/0":           "redis://:<redacted>@h:1/0",
		"redis://user@h:1":            "redis://user@h:1",
		"redis://u:p%40ss@h:1":        "redis://u:<redacted>@h:1",
		"redis://u:pw@h:1/0\x7fbroke": "<redacted>",
	} {
		if got := redactURL(in); got != want {
			t.Errorf("redactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestYAMLRoundTrip(t *testing.T) {
	c := source{file: `
listen: 127.0.0.1:18080
upstream: http://127.0.0.1:1234/x
redis: {addrs: [a:1, b:2], master_name: m, timeout: 1s}
limits: {max_body_bytes: 1536, max_response_bytes: 3GiB}
ratelimit: {rate: 90, per: 1h30m, burst: 17}
dedupe: {window: 0s, methods: [DELETE], routes: [{route: "/a/{b}", window: 1m}]}
batch: {min: 1, max: 7, linger: 1.5s, merge: false, bulk: true}
cache:
  negative_ttl: 2h
  memory_bytes: 0
  coherence: none
  routes: [{route: "GET /x/{Y}", ttl: 1s, stale_if_error: 0s, policy: pass}]
warm:
  interval: 1m
  max_pages: 3
  targets:
    - name: "t: 1"
      token_file: /run/t
      requests: [{path: "/p?q=1#x"}, {method: POST, path: /s, body: '{"a": "b\n"}'}]
log: {level: warn, format: json}
`}.mustLoad(t)
	out, err := c.YAML()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "printed.yaml")
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
	again, err := Load(nil, []string{"GHLPROXY_CONFIG=" + path})
	if err != nil {
		t.Fatalf("printed configuration does not load: %v\n%s", err, out)
	}
	if !reflect.DeepEqual(again, c) {
		t.Errorf("round trip changed the configuration:\n got %+v\nwant %+v\n%s", again, c, out)
	}
}

func FuzzLoadYAML(f *testing.F) {
	f.Add([]byte("ratelimit:\n  rate: 100\n"))
	f.Add([]byte("dedupe: {window: 30}\n"))
	f.Add([]byte("warm: {interval: 1m, targets: [{name: a, token_env: T, requests: [{path: /x}]}]}\n"))
	f.Add([]byte("cache: {routes: [{route: /a, ttl: 1s}]}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := load("config.yaml", data, nil, nil)
		if err != nil {
			msg := err.Error()
			if msg == "" || strings.ContainsAny(msg, "\n\r") {
				t.Fatalf("error is not one non-empty line: %q", msg)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Load returned a configuration that does not validate: %v", err)
		}
		out, err := c.YAML()
		if err != nil {
			t.Fatalf("YAML: %v", err)
		}
		if !reflect.DeepEqual(c.Redacted(), c) {
			return // printed secrets are redacted, so it cannot load back the same
		}
		again, err := load("printed.yaml", out, nil, nil)
		if err != nil {
			t.Fatalf("printed configuration does not load: %v\n%s", err, out)
		}
		if !reflect.DeepEqual(again, c) {
			t.Fatalf("round trip changed the configuration:\n%s", out)
		}
	})
}
