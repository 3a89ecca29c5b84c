package main

import (
	"os/exec"
	"syscall"
)

// setDeathSignal kills a rank process if the benchmark dies.
func setDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
