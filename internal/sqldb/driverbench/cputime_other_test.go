//go:build !unix

package driverbench

import "time"

// processCPU is not implemented on this platform; cpu-ns/op is not reported.
func processCPU() time.Duration { return -1 }
