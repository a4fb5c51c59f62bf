// Command gen writes routes/table_gen.go from HighLevel's OpenAPI specs. Run it with
// "go generate ./routes"; the specs are found as in routes/specs_test.go (GHL_OPENAPI_DIR,
// else shared/ghl-openapi beside the repository or one of its parents).
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/ghlproxy/ghlproxy/routes/internal/openapi"
)

func main() {
	specs := flag.String("specs", "", "specs directory (holds apps/); default: found from the working directory")
	out := flag.String("out", "table_gen.go", "output file")
	flag.Parse()
	dir := *specs
	if dir == "" {
		var err error
		if dir, err = openapi.FindSpecs("."); err != nil {
			fmt.Fprintln(os.Stderr, "gen:", err)
			os.Exit(1)
		}
	}
	src, err := openapi.Generate(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
	if err := os.WriteFile(*out, src, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}
