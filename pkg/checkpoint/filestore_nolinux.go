//go:build !linux

package checkpoint

import "os"

func startWriteback(*os.File, int64, int64) {}
