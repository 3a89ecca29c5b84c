package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// instruction is one line of a Dockerfile, continuations joined.
type instruction struct {
	Cmd  string // upper case
	Args string
}

// parseDockerfile reads the instructions after the last FROM: the final
// image's. Enough for the repository's Dockerfile, not a full parser.
func parseDockerfile(text string) []instruction {
	var out []instruction
	var cur strings.Builder
	flush := func() {
		line := strings.TrimSpace(cur.String())
		cur.Reset()
		if line == "" {
			return
		}
		cmd, args, _ := strings.Cut(line, " ")
		cmd = strings.ToUpper(cmd)
		if cmd == "FROM" {
			out = out[:0]
		}
		out = append(out, instruction{cmd, strings.TrimSpace(args)})
	}
	for _, l := range strings.Split(text, "\n") {
		t := strings.TrimSpace(l)
		if strings.HasPrefix(t, "#") {
			continue
		}
		if s, ok := strings.CutSuffix(t, "\\"); ok {
			cur.WriteString(s + " ")
			continue
		}
		cur.WriteString(t)
		flush()
	}
	flush()
	return out
}

// TestDockerfileMatches holds the root Dockerfile to this program's
// image: the same file system (the build stage runs --rootfs and the
// final stage copies it whole onto an empty base) and the same config.
func TestDockerfileMatches(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(testConfig.Repo, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "go run . --rootfs /rootfs") {
		t.Error("the Dockerfile's build stage does not write the file system with `go run . --rootfs /rootfs`")
	}
	final := parseDockerfile(string(b))
	var env, labels []string
	got := map[string]string{}
	for _, in := range final {
		switch in.Cmd {
		case "ENV":
			env = append(env, in.Args)
		case "LABEL":
			for _, kv := range strings.Fields(in.Args) {
				k, _, _ := strings.Cut(kv, "=")
				labels = append(labels, k)
			}
		default:
			if _, dup := got[in.Cmd]; dup && in.Cmd != "ARG" {
				t.Errorf("the final stage has %s twice", in.Cmd)
			}
			got[in.Cmd] = in.Args
		}
	}
	want := imageConfig(meta{Revision: "r"})
	if got["FROM"] != "scratch" {
		t.Errorf("FROM %s, want scratch", got["FROM"])
	}
	if got["COPY"] != "--from=build /rootfs/ /" {
		t.Errorf("COPY %s, want the --rootfs tree copied whole: --from=build /rootfs/ /", got["COPY"])
	}
	if got["USER"] != want.User {
		t.Errorf("USER %s, want %s", got["USER"], want.User)
	}
	if got["WORKDIR"] != want.WorkingDir {
		t.Errorf("WORKDIR %s, want %s", got["WORKDIR"], want.WorkingDir)
	}
	var ep []string
	if err := json.Unmarshal([]byte(got["ENTRYPOINT"]), &ep); err != nil || !slices.Equal(ep, want.Entrypoint) {
		t.Errorf("ENTRYPOINT %s, want %q", got["ENTRYPOINT"], want.Entrypoint)
	}
	if !slices.Equal(env, want.Env) {
		t.Errorf("ENV %q, want %q", env, want.Env)
	}
	var wantLabels []string
	for k := range want.Labels {
		wantLabels = append(wantLabels, k)
	}
	slices.Sort(labels)
	slices.Sort(wantLabels)
	if !slices.Equal(labels, wantLabels) {
		t.Errorf("LABEL keys %q, want %q", labels, wantLabels)
	}
	for _, c := range []string{"CMD", "VOLUME", "EXPOSE", "RUN", "SHELL"} {
		if _, ok := got[c]; ok {
			t.Errorf("the final stage has %s, which the image built here has not", c)
		}
	}
}
