package charts

import (
	"bufio"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

const repoRoot = ".."

// instructions reads a Dockerfile into (instruction, arguments) pairs, joining continued
// lines and dropping comments.
func instructions(t *testing.T) [][2]string {
	t.Helper()
	f, err := os.Open(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out [][2]string
	var cur string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") || (line == "" && cur == "") {
			continue
		}
		if strings.HasSuffix(line, "\\") {
			cur += strings.TrimSuffix(line, "\\") + " "
			continue
		}
		cur += line
		ins, args, _ := strings.Cut(cur, " ")
		out = append(out, [2]string{strings.ToUpper(ins), strings.TrimSpace(args)})
		cur = ""
	}
	return out
}

// goBuild is a go build command line reduced to what must agree between the Dockerfile and
// the Makefile.
type goBuild struct {
	env     []string
	flags   []string
	ldflags []string
	pkg     string
}

// parseGoBuild reads "VAR=x ... go build [flags] pkg" with shell quoting; the version value
// of -X main.version=... is dropped, since each file computes it its own way.
func parseGoBuild(t *testing.T, cmd string) goBuild {
	t.Helper()
	words := shellWords(cmd)
	var b goBuild
	i := 0
	for ; i < len(words) && strings.Contains(words[i], "="); i++ {
		b.env = append(b.env, words[i])
	}
	if i+1 >= len(words) || !strings.HasSuffix(words[i], "go") && words[i] != "$(GO)" || words[i+1] != "build" {
		t.Fatalf("not a go build command: %q", cmd)
	}
	for i += 2; i < len(words); i++ {
		w := words[i]
		switch {
		case w == "-ldflags":
			i++
			for _, f := range strings.Fields(words[i]) {
				if strings.HasPrefix(f, "main.version=") {
					f = "main.version="
				}
				b.ldflags = append(b.ldflags, f)
			}
		case w == "-o":
			i++ // the output path differs by design
		case strings.HasPrefix(w, "-"):
			b.flags = append(b.flags, w)
		default:
			b.pkg = w
		}
	}
	return b
}

func shellWords(s string) []string {
	var words []string
	var cur strings.Builder
	var quote rune
	inWord := false
	for _, r := range s {
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote != 0:
			cur.WriteRune(r)
		case r == '\'' || r == '"':
			quote, inWord = r, true
		case r == ' ' || r == '\t':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}

// makefileBuild returns the Makefile's build recipe with $(LDFLAGS) expanded.
func makefileBuild(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	ld := regexp.MustCompile(`(?m)^LDFLAGS\s*:?=\s*(.*)$`).FindSubmatch(b)
	recipe := regexp.MustCompile(`(?m)^build:.*\n\t(.*)$`).FindSubmatch(b)
	if ld == nil || recipe == nil {
		t.Fatal("Makefile: no LDFLAGS or build target")
	}
	// The version is computed differently in each file; parseGoBuild ignores its value.
	ldflags := regexp.MustCompile(`main\.version=\$\(shell[^)]*\)`).ReplaceAllString(string(ld[1]), "main.version=x")
	return strings.ReplaceAll(string(recipe[1]), "$(LDFLAGS)", ldflags)
}

func TestDockerfile(t *testing.T) {
	ins := instructions(t)
	var froms, runs []string
	var user, entry, cmd string
	var expose []string
	for _, in := range ins {
		switch in[0] {
		case "FROM":
			froms = append(froms, in[1])
		case "RUN":
			runs = append(runs, in[1])
		case "USER":
			user = in[1]
		case "ENTRYPOINT":
			entry = in[1]
		case "CMD":
			cmd = in[1]
		case "EXPOSE":
			expose = append(expose, strings.Fields(in[1])...)
		}
	}
	if len(froms) != 2 || !strings.HasPrefix(froms[0], "golang:1.26 ") {
		t.Errorf("stages %q, want a golang:1.26 builder and a runtime", froms)
	}
	if rt := froms[len(froms)-1]; !strings.Contains(rt, "distroless/static") && rt != "scratch" {
		t.Errorf("runtime image %q is not distroless static or scratch", rt)
	}
	if user != "65532:65532" && user != "65532" {
		t.Errorf("USER %q, want 65532", user)
	}
	if entry != `["/ghlproxy"]` || cmd != `["serve"]` {
		t.Errorf("ENTRYPOINT %s CMD %s", entry, cmd)
	}
	for _, p := range []string{"8080", "9090"} {
		if !slices.Contains(expose, p) {
			t.Errorf("EXPOSE %v lacks %s", expose, p)
		}
	}

	i := slices.IndexFunc(runs, func(r string) bool { return strings.Contains(r, "go build") })
	if i < 0 {
		t.Fatalf("no go build in %q", runs)
	}
	docker := parseGoBuild(t, runs[i])
	mk := parseGoBuild(t, makefileBuild(t))
	if !slices.Equal(docker.env, mk.env) || !slices.Equal(docker.flags, mk.flags) || !slices.Equal(docker.ldflags, mk.ldflags) || docker.pkg != mk.pkg {
		t.Errorf("Dockerfile builds with %+v, Makefile with %+v", docker, mk)
	}
	if !slices.Contains(docker.env, "CGO_ENABLED=0") || !slices.Contains(docker.flags, "-trimpath") {
		t.Errorf("Dockerfile build %+v is not static and trimmed", docker)
	}
}

// The Dockerfile's build, run here with its own flags, gives a static binary that reports
// the version it was given. No Docker engine runs in CI, so this is the build that is tested.
func TestDockerBuildFlagsGiveStaticBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the whole binary with -trimpath (its own build cache entries)")
	}
	ins := instructions(t)
	var build string
	for _, in := range ins {
		if in[0] == "RUN" && strings.Contains(in[1], "go build") {
			build = in[1]
		}
	}
	out := filepath.Join(t.TempDir(), "ghlproxy")
	words := shellWords(strings.ReplaceAll(build, "${VERSION}", "v9.8.7-test"))
	var env []string
	for len(words) > 0 && strings.Contains(words[0], "=") {
		env = append(env, words[0])
		words = words[1:]
	}
	for i, w := range words {
		if w == "-o" {
			words[i+1] = out
		}
	}
	c := exec.Command(words[0], words[1:]...)
	c.Dir = repoRoot
	c.Env = append(os.Environ(), env...)
	if b, err := c.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", build, err, b)
	}
	f, err := elf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("binary has an ELF interpreter: it is dynamically linked")
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("binary needs %v", libs)
	}
	v, err := exec.Command(out, "version").Output()
	if err != nil || !strings.Contains(string(v), "v9.8.7-test") {
		t.Errorf("ghlproxy version: %q %v", v, err)
	}
}

// Everything the binary's build reads is in the Docker build context: .dockerignore keeps
// out no package directory or embedded file the build needs.
func TestDockerignoreKeepsBuildInputs(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	var patterns []string
	for l := range strings.SplitSeq(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			patterns = append(patterns, l)
		}
	}
	out, err := exec.Command("go", "list", "-C", repoRoot, "-deps", "-f",
		`{{if .Module}}{{if .Module.Main}}{{.Dir}}|{{join .GoFiles ","}}|{{join .EmbedFiles ","}}{{end}}{{end}}`, "./cmd/ghlproxy").Output()
	if err != nil {
		t.Fatal(err)
	}
	root, _ := filepath.Abs(repoRoot)
	for _, line := range strings.Fields(string(out)) {
		parts := strings.Split(line, "|")
		dir, _ := filepath.Rel(root, parts[0])
		for _, list := range parts[1:] {
			for f := range strings.SplitSeq(list, ",") {
				if f == "" {
					continue
				}
				p := filepath.ToSlash(filepath.Join(dir, f))
				if pat := ignored(patterns, p); pat != "" {
					t.Errorf(".dockerignore pattern %q drops %s, which the build needs", pat, p)
				}
			}
		}
	}
	for _, p := range []string{"go.mod", "go.sum"} {
		if pat := ignored(patterns, p); pat != "" {
			t.Errorf(".dockerignore pattern %q drops %s", pat, p)
		}
	}
}

// ignored reports the .dockerignore pattern that excludes path (the subset of the syntax
// the file uses: path prefixes, * globs, and a leading **/).
func ignored(patterns []string, path string) string {
	for _, pat := range patterns {
		if strings.HasPrefix(pat, "!") {
			continue
		}
		p := strings.TrimPrefix(pat, "**/")
		segs := strings.Split(path, "/")
		for i := range segs {
			if pat != p || i == 0 { // "**/x" may match at any depth, "x" only at the root
				for j := i + 1; j <= len(segs); j++ {
					if ok, _ := filepath.Match(p, strings.Join(segs[i:j], "/")); ok {
						return pat
					}
				}
			}
		}
	}
	return ""
}

func TestDockerfileLint(t *testing.T) {
	lint := tool(t, "dockerfile-utils")
	run(t, lint, "lint", filepath.Join(repoRoot, "Dockerfile"))
}
