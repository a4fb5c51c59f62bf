package config

import (
	_ "embed"
	"go/ast"
	"go/parser"
	"go/token"
	"strings"
)

// The field comments in config.go are the documentation of every key. Embedding the file
// lets --help and the README table be derived from those comments, so they cannot drift.
//
//go:embed config.go
var configSource string

// docs maps "Type.Field" to the field's doc comment.
type docs map[string]string

func fieldDocs() docs {
	out := make(docs)
	f, err := parser.ParseFile(token.NewFileSet(), "config.go", configSource, parser.ParseComments)
	if err != nil {
		return out // flags then have no help text; TestEveryKeyDocumented catches it
	}
	ast.Inspect(f, func(n ast.Node) bool {
		ts, ok := n.(*ast.TypeSpec)
		if !ok {
			return true
		}
		st, ok := ts.Type.(*ast.StructType)
		if !ok {
			return false
		}
		for _, fld := range st.Fields.List {
			for _, name := range fld.Names {
				out[ts.Name.Name+"."+name.Name] = strings.Join(strings.Fields(fld.Doc.Text()), " ")
			}
		}
		return false
	})
	return out
}

// doc is the whole comment of a key.
func (d docs) doc(k key) string { return d[k.owner.Name()+"."+k.field.Name] }

// usage is the first sentence of a key's comment.
func (d docs) usage(k key) string { return firstSentence(d.doc(k)) }

func firstSentence(s string) string {
	from := 0
	for {
		i := strings.Index(s[from:], ". ")
		if i < 0 {
			return s
		}
		end := from + i
		if strings.HasSuffix(s[:end], "e.g") || strings.HasSuffix(s[:end], "i.e") {
			from = end + 2
			continue
		}
		return s[:end+1]
	}
}
