package config

import (
	"flag"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/configuration.md")

// TestConfigurationTable keeps testdata/configuration.md, the README's configuration table,
// in step with the field comments and defaults. Regenerate with
// go test ./config -run TestConfigurationTable -update.
func TestConfigurationTable(t *testing.T) {
	got := configurationTable()
	const path = "testdata/configuration.md"
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(want) != got {
		t.Errorf("%s is stale; run go test ./config -run TestConfigurationTable -update", path)
	}
}

func configurationTable() string {
	var b strings.Builder
	b.WriteString("| key | default | meaning |\n| --- | --- | --- |\n")
	d := fieldDocs()
	def := reflect.ValueOf(Default()).Elem()
	cell := func(s string) string { return strings.ReplaceAll(s, "|", `\|`) }
	for _, k := range keys() {
		v := render(def.FieldByIndex(k.index))
		switch {
		case k.name == "ratelimit.burst":
			v = "derived (50 at the default rate)"
		case v == "" || v == "[]":
			v = "empty"
		default:
			v = "`" + v + "`"
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s |\n", k.name, v, cell(d.doc(k)))
		// Fields of list elements, as key[].field.
		var elems func(t reflect.Type, prefix string)
		elems = func(t reflect.Type, prefix string) {
			if t.Kind() != reflect.Slice || t.Elem().Kind() != reflect.Struct {
				return
			}
			et := t.Elem()
			for i := range et.NumField() {
				f := et.Field(i)
				name := prefix + "[]." + tagName(f)
				fmt.Fprintf(&b, "| `%s` | | %s |\n", name, cell(d[et.Name()+"."+f.Name]))
				elems(f.Type, name)
			}
		}
		elems(k.field.Type, k.name)
	}
	return b.String()
}
