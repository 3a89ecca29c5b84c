//go:build unix

package checkpoint

import (
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// fileETag is a file's version: a file replaced by rename has another
// inode, one rewritten in place another modification time or size.
func fileETag(fi fs.FileInfo) string {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return fmt.Sprintf("%x-%x-%x", st.Ino, fi.ModTime().UnixNano(), fi.Size())
	}
	return fmt.Sprintf("%x-%x", fi.ModTime().UnixNano(), fi.Size())
}

// lockFile takes an exclusive advisory lock on p, creating it if needed,
// and returns the function that releases it.
func lockFile(p string) (func(), error) {
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", p, err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}
