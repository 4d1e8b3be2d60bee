//go:build unix

package driverbench

import (
	"syscall"
	"time"
)

// processCPU returns the user+system CPU time consumed so far by this
// process (all threads), or -1 if unavailable. The benchmarks report its
// delta per op as cpu-ns/op, which is much less sensitive than ns/op to other
// load on the machine and excludes time spent waiting for the disk.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return -1
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
