package config

import (
	"os"
	"strings"
	"testing"
)

// TestREADMEConfigurationTable keeps the README's copy of the configuration table equal to
// the generated one, so the user documentation cannot drift from the code.
func TestREADMEConfigurationTable(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	table, err := os.ReadFile("testdata/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	const begin, end = "<!-- config-table:begin -->\n", "<!-- config-table:end -->"
	s := string(readme)
	i, j := strings.Index(s, begin), strings.Index(s, end)
	if i < 0 || j < i {
		t.Fatalf("README.md lacks the %q … %q markers around the configuration table", begin, end)
	}
	if got := s[i+len(begin) : j]; got != string(table) {
		t.Fatalf("README.md's configuration table differs from config/testdata/configuration.md; copy it over")
	}
}
