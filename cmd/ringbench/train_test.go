package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
)

func runTrain(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := newTrainCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(context.Background())
	return out.String(), err
}

// The command trains the real model and prints the line the docs quote;
// tokens_per_s is samples_per_s times the context for a language model.
func TestTrainPrintsThroughput(t *testing.T) {
	out, err := runTrain(t, "--model", "gpt", "--layers", "1", "--dim", "8", "--heads", "2", "--ctx", "4", "--vocab", "11",
		"--batch", "3", "--steps", "3", "--warmup", "1", "--threads", "1")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	m := regexp.MustCompile(`^train model=gpt batch=3 steps=3 threads=1 layers=1 dim=8 heads=2 ctx=4 vocab=11 hidden=32 sec_per_step=([0-9.]+) samples_per_s=([0-9.]+) tokens_per_s=([0-9.]+)\n$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("output %q", out)
	}
	sec, _ := strconv.ParseFloat(m[1], 64)
	samples, _ := strconv.ParseFloat(m[2], 64)
	tokens, _ := strconv.ParseFloat(m[3], 64)
	if sec <= 0 || samples <= 0 || tokens/samples < 3.99 || tokens/samples > 4.01 {
		t.Errorf("sec_per_step %g, samples_per_s %g, tokens_per_s %g: want positive, tokens = 4 × samples", sec, samples, tokens)
	}

	out, err = runTrain(t, "--model", "cnn", "--batch", "2", "--steps", "1", "--warmup", "0", "--threads", "1")
	if err != nil || !regexp.MustCompile(`^train model=cnn batch=2 steps=1 threads=1 sec_per_step=[0-9.]+ samples_per_s=[0-9.]+\n$`).MatchString(out) {
		t.Errorf("cnn: %v, output %q", err, out)
	}
	if _, err := runTrain(t, "--model", "cnn", "--layers", "2"); err == nil {
		t.Error("--layers for the CNN was accepted")
	}
}

// --peer reads the peer's figure for the configuration it trains and prints
// the ratio; a configuration the peer does not train, or a missing python,
// is said and skipped. The peer here is a shell script that prints what
// torch_train.py prints.
func TestTrainPeer(t *testing.T) {
	sh := "/bin/sh"
	if _, err := os.Stat(sh); err != nil {
		t.Skip("needs /bin/sh")
	}
	script := filepath.Join(t.TempDir(), "peer.sh")
	body := "echo torch threads=$1 cnn_batch=64 samples_per_s=1.0e3\necho torch threads=$1 gpt_L4_d128_T64_batch=16 tokens_per_s=700.0\n"
	if err := os.WriteFile(script, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := runTrain(t, "--model", "cnn", "--steps", "1", "--warmup", "0", "--rounds", "2", "--peer", "--python", sh, "--peer-script", script)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	rounds := regexp.MustCompile(`samples_per_s=([0-9.]+)\npeer torch samples_per_s=1000.0 ratio=([0-9.]+)x\n`).FindAllStringSubmatch(out, -1)
	if len(rounds) != 2 || !regexp.MustCompile(`median over 2 rounds: ours samples_per_s=[0-9.]+ torch 1000.0 ratio_of_medians=[0-9.]+x\n$`).MatchString(out) {
		t.Fatalf("output:\n%s", out)
	}
	for _, r := range rounds {
		ours, _ := strconv.ParseFloat(r[1], 64)
		ratio, _ := strconv.ParseFloat(r[2], 64)
		if want := ours / 1000; ratio < want*0.99-0.01 || ratio > want*1.01+0.01 {
			t.Errorf("ratio %g for %g samples/s against 1000", ratio, ours)
		}
	}

	out, err = runTrain(t, "--model", "gpt", "--layers", "1", "--dim", "8", "--heads", "2", "--steps", "1", "--warmup", "0", "--peer", "--python", sh, "--peer-script", script)
	if err != nil || !regexp.MustCompile(`peer: skipped: torch_train.py trains only`).MatchString(out) {
		t.Errorf("a GPT of other sizes with --peer: %v\n%s", err, out)
	}
	out, err = runTrain(t, "--model", "cnn", "--batch", "1", "--steps", "1", "--warmup", "0", "--peer", "--python", filepath.Join(t.TempDir(), "no-python"))
	if err != nil || !regexp.MustCompile(`peer: skipped: no python at`).MatchString(out) {
		t.Errorf("--peer without python: %v\n%s", err, out)
	}
}

// Without --peer-script, the peer is ../shared/bench/torch_train.py beside
// the nearest directory at or above the working directory whose go.mod is
// this module's; when there is none, --peer fails and says to pass
// --peer-script, but only for a configuration the peer trains.
func TestTrainPeerScriptDefault(t *testing.T) {
	sh := "/bin/sh"
	if _, err := os.Stat(sh); err != nil {
		t.Skip("needs /bin/sh")
	}
	top := t.TempDir()
	write := func(path, body string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	repo := filepath.Join(top, "main")
	write(filepath.Join(repo, "go.mod"), "// a comment\nmodule "+modulePath+"\n\ngo 1.26.0\n")
	// A go.mod of another module on the way up is passed over.
	write(filepath.Join(repo, "examples", "go.mod"), "module example.com/other\n")
	write(filepath.Join(top, "shared", "bench", "torch_train.py"), "echo torch threads=$1 cnn_batch=64 samples_per_s=1.0e3\n")
	wd := filepath.Join(repo, "examples", "deep")
	if err := os.MkdirAll(wd, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Chdir(wd)
	out, err := runTrain(t, "--model", "cnn", "--steps", "1", "--warmup", "0", "--peer", "--python", sh)
	if err != nil || !regexp.MustCompile(`\npeer torch samples_per_s=1000.0 ratio=`).MatchString(out) {
		t.Fatalf("default peer script from %s: %v\n%s", wd, err, out)
	}

	if err := os.Remove(filepath.Join(top, "shared", "bench", "torch_train.py")); err != nil {
		t.Fatal(err)
	}
	out, err = runTrain(t, "--model", "cnn", "--steps", "1", "--warmup", "0", "--peer", "--python", sh)
	if err == nil || !regexp.MustCompile(`pass --peer-script PATH`).MatchString(err.Error()) {
		t.Errorf("no torch_train.py beside the repository: %v\n%s", err, out)
	}
	t.Chdir(t.TempDir())
	out, err = runTrain(t, "--model", "cnn", "--steps", "1", "--warmup", "0", "--peer", "--python", sh)
	if err == nil || !regexp.MustCompile(`no go.mod of `+modulePath+` at or above .*; pass --peer-script PATH`).MatchString(err.Error()) {
		t.Errorf("outside the repository: %v\n%s", err, out)
	}
	// The peer is not needed for a configuration it does not train.
	out, err = runTrain(t, "--model", "cnn", "--batch", "2", "--steps", "1", "--warmup", "0", "--peer", "--python", sh)
	if err != nil || !regexp.MustCompile(`peer: skipped: torch_train.py trains only`).MatchString(out) {
		t.Errorf("a configuration the peer does not train, without the script: %v\n%s", err, out)
	}
	out, err = runTrain(t, "--model", "cnn", "--steps", "1", "--warmup", "0", "--peer", "--python", sh, "--peer-script", filepath.Join(top, "nowhere.py"))
	if err == nil || !regexp.MustCompile(`--peer-script: .*nowhere.py`).MatchString(err.Error()) {
		t.Errorf("a missing --peer-script: %v\n%s", err, out)
	}
}
