//go:build !unix

package checkpoint

import (
	"errors"
	"fmt"
	"io/fs"
)

func fileETag(fi fs.FileInfo) string {
	return fmt.Sprintf("%x-%x", fi.ModTime().UnixNano(), fi.Size())
}

func lockFile(string) (func(), error) {
	return nil, errors.New("conditional replacement needs file locks, which this platform's file store does not have")
}
