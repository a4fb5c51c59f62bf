// Package openapi turns HighLevel's OpenAPI specs into the route table that package routes
// compiles in (table_gen.go). It is used by the generator (routes/internal/gen) and by the
// drift test, so the committed table always equals what the specs plus the reviewed rules
// in rules.go produce.
package openapi

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// Op is one operation of the specs after merging v2 and v3.
type Op struct {
	Method      string
	Template    string
	OperationID string
	Summary     string
	Spec        string // first spec file that declared it, relative to the specs dir
}

var methods = map[string]bool{"get": true, "post": true, "put": true, "patch": true, "delete": true}

// Load reads dir/apps/*.json then dir/apps/v3/*.json (each in name order) and merges
// their operations: one Op per method and path shape. v3 paths carry no /v3 prefix, so
// most coincide with v2; where two specs spell the same shape with different parameter
// names (/ad-publishing/facebook/adsets/{adsetId} vs {adSetId}) the first one wins.
func Load(dir string) ([]Op, error) { return LoadGlob(dir, "apps/*.json", "apps/v3/*.json") }

// LoadGlob is Load over the spec files matching the patterns (relative to dir), in order.
func LoadGlob(dir string, patterns ...string) ([]Op, error) {
	var files []string
	for _, pat := range patterns {
		m, err := filepath.Glob(filepath.Join(dir, pat))
		if err != nil {
			return nil, err
		}
		sort.Strings(m)
		files = append(files, m...)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("openapi: no specs under %s/apps", dir)
	}
	seen := map[string]bool{}
	var ops []Op
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		var doc struct {
			Paths map[string]map[string]json.RawMessage `json:"paths"`
		}
		if err := json.Unmarshal(b, &doc); err != nil {
			return nil, fmt.Errorf("openapi: %s: %w", f, err)
		}
		rel, _ := filepath.Rel(dir, f)
		paths := make([]string, 0, len(doc.Paths))
		for p := range doc.Paths {
			paths = append(paths, p)
		}
		sort.Strings(paths)
		for _, p := range paths {
			if !strings.HasPrefix(p, "/") {
				return nil, fmt.Errorf("openapi: %s: path %q does not start with /", rel, p)
			}
			for m, raw := range doc.Paths[p] {
				if !methods[m] {
					continue
				}
				var op struct {
					OperationID string `json:"operationId"`
					Summary     string `json:"summary"`
				}
				if err := json.Unmarshal(raw, &op); err != nil {
					return nil, fmt.Errorf("openapi: %s %s %s: %w", rel, m, p, err)
				}
				key := strings.ToUpper(m) + " " + Shape(p)
				if seen[key] {
					continue
				}
				seen[key] = true
				ops = append(ops, Op{Method: strings.ToUpper(m), Template: p,
					OperationID: op.OperationID, Summary: op.Summary, Spec: filepath.ToSlash(rel)})
			}
		}
	}
	sort.Slice(ops, func(i, j int) bool {
		if ops[i].Template != ops[j].Template {
			return ops[i].Template < ops[j].Template
		}
		return ops[i].Method < ops[j].Method
	})
	return ops, nil
}

var paramRe = regexp.MustCompile(`\{[^}/]*\}`)

// Shape is a template with parameter names and a trailing slash dropped: two templates
// with the same shape match the same requests.
func Shape(template string) string {
	s := paramRe.ReplaceAllString(template, "{}")
	if len(s) > 1 {
		s = strings.TrimSuffix(s, "/")
	}
	return s
}
